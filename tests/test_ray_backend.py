"""`medtransfer experiment --backend ray`: the same results.csv as the local backend, cell for cell; a Ray
worker killed mid-grid costs only its cell (recorded failed, the grid goes on, a re-run retries it); bad
backend options are one line.

One Ray head for the module, started here as a user would (`ray start --head`) on 127.0.0.1 and a free
port, in its own process group, and stopped by killing that group (never `ray stop`, which stops every
Ray of the user on the machine)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import pandas as pd
import pytest

from medtransfer import api
from medtransfer.errors import MedTransferError
from medtransfer.experiment import CellsFailed

pytest.importorskip("ray")

GRID = """\
name: tiny
targets: [heart:hungary]
sources: [heart:cleveland]
strategies: [scratch, head, full]
budgets: [10]
seeds: 2
train: {epochs: 3}
n_boot: 50
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def head():
    """The address of a 2-CPU Ray head on 127.0.0.1, stopped (its whole process group) afterwards."""
    port, temp = free_port(), tempfile.mkdtemp(prefix="ray-")  # short: Ray's socket paths have a length limit
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # Ray's single-machine mode: 127.0.0.1 only
           "RAY_USAGE_STATS_ENABLED": "0"}
    ray = Path(sys.executable).with_name("ray")
    process = subprocess.Popen([str(ray), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port",
                                str(port), "--num-cpus", "2", "--include-dashboard", "false", "--temp-dir", temp],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        deadline = time.time() + 60
        while True:
            assert process.poll() is None and time.time() < deadline, "the Ray head did not start"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        stop_group(process)
        shutil.rmtree(temp, ignore_errors=True)


def stop_group(process: subprocess.Popen) -> None:
    for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.time() + grace
        while time.time() < deadline and group_alive(process):
            time.sleep(0.2)
    process.wait()


def group_alive(process: subprocess.Popen) -> bool:
    process.poll()
    try:
        os.killpg(process.pid, 0)
        return True
    except ProcessLookupError:
        return False


def table(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "results.csv").set_index("cell_id").sort_index()


def test_ray_writes_the_same_results_as_local_cell_for_cell(tmp_path, head):
    import mlflow
    import torch

    config = tmp_path / "grid.yaml"
    config.write_text(GRID)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each Ray cell runs (one CPU): same arithmetic, same digits
    try:
        api.experiment(config, out=tmp_path / "local", progress=False, report=False)
        api.experiment(config, out=tmp_path / "ray", progress=False, report=True, backend="ray", address=head)
    finally:
        torch.set_num_threads(threads)
    local, ray = table(tmp_path / "local"), table(tmp_path / "ray")
    assert len(ray) == 6 and "error" not in ray and set(ray.strategy) == {"scratch", "head", "full"}
    # every column, every digit, but each cell's wall time
    pd.testing.assert_frame_equal(ray.drop(columns="seconds"), local.drop(columns="seconds"), check_exact=True)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'ray' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert sorted(r.data.tags["cell_id"] for r in runs) == sorted(ray.index)
    assert (tmp_path / "ray" / "report.html").is_file()


def test_a_cell_that_raises_on_ray_fails_with_its_own_error_and_the_workers_traceback(head):
    from medtransfer.experiment.ray_cells import cell_error, session

    def cell():  # a nested function: Ray ships it by value
        raise MedTransferError("heart:mars: unknown heart site")

    with session(head, 1) as ray:
        error = cell_error(ray, ray.remote(cell).remote())
        assert ray.is_initialized()
    assert not ray.is_initialized()  # the session it opened is closed
    assert type(error) is MedTransferError and str(error) == "heart:mars: unknown heart site"  # as in-process
    record = "".join(traceback.format_exception(error))  # what the failed cell's record keeps
    assert 'raise MedTransferError("heart:mars: unknown heart site")' in record and "\x1b[" not in record


KILL_GRID = """\
name: kill
targets: [heart:hungary]
strategies: [scratch]
budgets: [all]
seeds: 2
train: {epochs: 40, patience: 40}
n_boot: 10
"""


def cell_workers() -> list[int]:
    """This session's Ray workers running a cell: named by the task (Ray's process title), with this test
    session's source cache in their environment (the driver hands it to every task)."""
    mark = f"MEDTRANSFER_CACHE={os.environ['MEDTRANSFER_CACHE']}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            running = (entry / "cmdline").read_bytes().startswith(b"ray::medtransfer-cell")
            if running and mark in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
        except (OSError, ValueError):
            continue
    return pids


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds Ray's workers in /proc")
def test_a_killed_ray_worker_costs_its_cell_and_a_rerun_completes(tmp_path, head):
    config, out = tmp_path / "grid.yaml", tmp_path / "exp"
    config.write_text(KILL_GRID)
    killed = []

    def kill_first_worker() -> None:
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            for pid in cell_workers()[:1]:
                time.sleep(0.5)  # mid-cell
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            time.sleep(0.1)

    killer = threading.Thread(target=kill_first_worker, daemon=True)
    killer.start()
    with pytest.raises(CellsFailed) as info:
        api.experiment(config, out=out, progress=False, report=False, backend="ray", address=head)
    killer.join()
    assert killed, "no Ray worker ran a cell"
    (cell, error), = info.value.failed.items()  # the killed cell only; the grid went on
    assert "its Ray worker was lost (WorkerCrashedError" in error and "a re-run retries the cell" in error
    first = table(out)
    assert len(first) == 2 and first.error.notna().sum() == 1 and first.loc[cell, "error"] == error
    assert (out / "cells" / f"{cell}.failed.json").is_file()
    finished = {m.parent.name: m.stat().st_mtime_ns for m in (out / "cells").glob("*/metrics.json")}
    assert len(finished) == 1  # the other cell, running beside the killed one, finished

    api.experiment(config, out=out, progress=False, report=False, backend="ray", address=head)
    again = table(out)
    assert len(again) == 2 and "error" not in again and again.test_auc.notna().all()
    assert not (out / "cells" / f"{cell}.failed.json").exists()
    assert {name: (out / "cells" / name / "metrics.json").stat().st_mtime_ns for name in finished} == finished  # kept


@pytest.mark.parametrize("options, message", [
    ({"backend": "spark"}, "backend must be one of local, ray, got 'spark' (option --backend)"),
    ({"address": "127.0.0.1:6379"}, "--address needs --backend ray"),
    ({"backend": "ray", "gpus_per_cell": -1}, "gpus_per_cell must be a number >= 0, got -1 (option --gpus-per-cell)"),
    ({"backend": "ray", "address": "nohost"}, "bad Ray address 'nohost'"),
])
def test_bad_backend_options_are_refused_before_any_work(tmp_path, options, message):
    with pytest.raises(MedTransferError) as info:
        api.experiment(tmp_path / "no.yaml", out=tmp_path / "exp", **options)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "exp").exists()


def test_ray_not_installed_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(MedTransferError, match=r"needs Ray, which is not installed: pip install "
                                               r"'medtransfer\[distributed\]'"):
        api.experiment(tmp_path / "no.yaml", backend="ray")


def test_cli_unreachable_ray_cluster_is_one_line_exit_2(tmp_path):
    (tmp_path / "grid.yaml").write_text(GRID)
    port = free_port()  # nothing listens there
    result = subprocess.run([sys.executable, "-m", "medtransfer.cli", "experiment", "grid.yaml", "--backend", "ray",
                             "--address", f"127.0.0.1:{port}"], capture_output=True, text=True, cwd=tmp_path,
                            timeout=120)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"error: no Ray cluster answers at 127.0.0.1:{port} (Connection refused); "
                                          f"start one with `ray start --head --port {port}` or fix --address"]
    assert not (tmp_path / "experiments").exists()
