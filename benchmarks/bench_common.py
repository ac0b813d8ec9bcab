"""What the benchmarks share: the command-line options, the device, a CUDA sync, and a timed grid run."""

from __future__ import annotations

import argparse

import torch


def base_parser(doc: str, n: int, batch_size: int) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default="../shared/data/medmnist")
    parser.add_argument("--n", type=int, default=n, help="training images (0 = all)")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0 = leave default)")
    parser.add_argument("--max-ratio", type=float, default=1.15)
    return parser


def setup(args) -> tuple[str, torch.device]:
    """Threads as asked; the accelerator name (for TrainConfig) and its torch device."""
    if args.threads:
        torch.set_num_threads(args.threads)
    accelerator = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    return accelerator, torch.device(accelerator)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed_grid(config, out, jobs: int):
    """(wall seconds, results.csv) of `medtransfer experiment config` into out/grid, with an empty feature and
    source cache in out/cache (the spawned workers inherit MEDTRANSFER_CACHE)."""
    import os
    import time
    from pathlib import Path

    import pandas as pd

    from medtransfer.api import experiment

    out = Path(out)
    os.environ["MEDTRANSFER_CACHE"] = str(out / "cache")
    start = time.perf_counter()
    experiment(config, out=out / "grid", jobs=jobs, progress=False, report=False)
    return time.perf_counter() - start, pd.read_csv(out / "grid" / "results.csv")
