"""Load benchmark of `medtransfer serve`: N concurrent clients for T seconds against 127.0.0.1.

    python benchmarks/serve_load.py --kind heart --clients 8 --seconds 30
    python benchmarks/serve_load.py --kind pneumonia --clients 8 --seconds 30 --data-root ../shared/data/medmnist
    python benchmarks/serve_load.py --run RUN --kind heart|pneumonia      (an existing run of that kind)

The server is `medtransfer serve RUN --port 0` in a child process, as a user starts it (token from
MEDTRANSFER_TOKEN), stopped with Ctrl-C's signal at the end; the clients are asyncio tasks, each with its own
keep-alive connection, sending one request after another for T seconds. A request holds `--inputs` real inputs:
Hungarian patients from the built-in heart data (JSON rows) or PneumoniaMNIST test images (PNG uploads). An error
is any answer but 200, or a failed connection. Prints one table row: clients, seconds, requests, requests/s,
p50 ms, p99 ms, errors.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def build_run(kind: str, out: Path, data_root: str) -> Path:
    """A small real run: Cleveland -> Hungary (full fine-tuning, 20 labels), or PneumoniaMNIST from scratch."""
    import medtransfer as mt

    if kind == "heart":
        mt.transfer("heart:hungary", "full", source="heart:cleveland", budget=20, out=out, progress=False, n_boot=10)
    else:
        mt.transfer("medmnist:pneumoniamnist", "scratch", budget=200, epochs=3, data_root=data_root, out=out,
                    progress=False, n_boot=10)
    return out


def payloads(kind: str, inputs: int, data_root: str) -> list[dict]:
    """httpx keyword arguments of distinct requests, each with `inputs` real inputs."""
    if kind == "heart":
        import pandas as pd

        import medtransfer as mt

        csv = Path(mt.__file__).parent / "data" / "resources" / "heart_disease_uci.csv"
        frame = pd.read_csv(csv)
        rows = json.loads(frame[frame["dataset"] == "Hungary"].drop(columns=["id", "dataset", "num"])
                          .to_json(orient="records"))
        return [{"json": {"rows": [rows[(i + k) % len(rows)] for k in range(inputs)]}} for i in range(64)]
    from PIL import Image

    images = np.load(Path(data_root) / "pneumoniamnist.npz")["test_images"][:64 + inputs]
    files = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        files.append(buffer.getvalue())
    return [{"files": [("files", (f"img{i + k}.png", files[i + k], "image/png")) for k in range(inputs)]}
            for i in range(64)]


def start_server(run: Path, token: str, log_path: Path) -> tuple[subprocess.Popen, str]:
    """`medtransfer serve RUN --port 0` in a child process; its URL from the start line on stderr."""
    log = log_path.open("w")
    child = subprocess.Popen([sys.executable, "-m", "medtransfer.cli", "serve", str(run), "--port", "0"],
                             stdout=log, stderr=log, env={**os.environ, "MEDTRANSFER_TOKEN": token})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = re.search(r"on (http://127\.0\.0\.1:\d+)", log_path.read_text())
        if found:
            return child, found.group(1)
        if child.poll() is not None:
            raise SystemExit(f"the server did not start:\n{log_path.read_text()}")
        time.sleep(0.1)
    child.kill()
    raise SystemExit("the server did not start within 120 s")


async def client(url: str, token: str, requests: list[dict], stop_at: float, latencies: list[float],
                 errors: list[str], offset: int) -> None:
    import httpx

    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60) as http:
        i = offset
        while time.perf_counter() < stop_at:
            start = time.perf_counter()
            try:
                response = await http.post(f"{url}/predict", **requests[i % len(requests)])
                if response.status_code != 200:
                    errors.append(f"{response.status_code}: {response.text[:200]}")
            except Exception as exc:  # a refused or dropped connection is an error of the server under load
                errors.append(f"{type(exc).__name__}: {exc}")
            latencies.append(time.perf_counter() - start)
            i += 1


async def load(url: str, token: str, requests: list[dict], clients: int, seconds: float):
    latencies: list[float] = []
    errors: list[str] = []
    start = time.perf_counter()
    stop_at = start + seconds
    await asyncio.gather(*(client(url, token, requests, stop_at, latencies, errors, k * 7) for k in range(clients)))
    return latencies, errors, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", choices=["heart", "pneumonia"], default="heart")
    parser.add_argument("--run", type=Path, help="an existing run of that kind (default: train a small one)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--inputs", type=int, default=1, help="inputs per request")
    parser.add_argument("--data-root", default="../shared/data/medmnist")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="serve-load-"))  # the run trained here and the server's log; removed
    try:
        run = args.run or build_run(args.kind, work / "run", args.data_root)
        requests = payloads(args.kind, args.inputs, args.data_root)
        token = secrets.token_urlsafe(32)
        child, url = start_server(run, token, work / "server.log")
        try:
            asyncio.run(load(url, token, requests[:2], 1, 1.0))  # warm-up, not counted
            latencies, errors, elapsed = asyncio.run(load(url, token, requests, args.clients, args.seconds))
        finally:
            child.send_signal(signal.SIGINT)
            child.wait(timeout=60)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ms = np.array(latencies) * 1000
    print(f"medtransfer serve {args.run or 'a run trained for this benchmark'} ({args.kind}, {args.inputs} input(s) "
          f"per request); the server stopped with exit code {child.returncode}")
    print("| clients | seconds | requests | requests/s | p50 ms | p99 ms | errors |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {args.clients} | {elapsed:.1f} | {len(latencies)} | {len(latencies) / elapsed:.1f} | "
          f"{np.percentile(ms, 50):.1f} | {np.percentile(ms, 99):.1f} | {len(errors)} |")
    for error in sorted(set(errors))[:5]:
        print(f"error: {error}")


if __name__ == "__main__":
    main()
