"""The Ray backend of `medtransfer experiment --backend ray [--address HOST:PORT]`: a grid's cells as Ray tasks.

Only where the cells run changes: the runner still locks the folder, checks every cell first, runs the first
cell of each source itself (it pretrains and caches the source), records each finished or failed cell, and
writes results.csv, MLflow and the report. Each task runs one cell and writes that cell's run folder itself.

Without `--address` a local Ray is started on 127.0.0.1 with `--jobs` CPUs and stopped afterwards. With it,
the driver joins that cluster. A cluster of several machines needs a shared filesystem, mounted at the same
path on every node, for the driver's working folder, the experiment folder, the data root and the source
cache (MEDTRANSFER_CACHE): tasks run in the driver's working folder and write the cells where the driver
reads them.

A task whose worker dies (kill -9, the out-of-memory killer, a lost node) is not retried by Ray
(`max_retries=0`): its cell is recorded as failed, like a cell that raised, the grid goes on, and a re-run
retries it. A cell that kills its worker every time therefore costs one attempt per run, not four (Ray's
default), and every lost attempt is visible in results.csv. Ctrl-C cancels the tasks not yet finished.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import warnings
from pathlib import Path
from typing import Callable

from ..errors import MedTransferError
from ..pipeline.source import cache_dir
from ..runs import temporary_environ

LOOPBACK = ("127.0.0.1", "localhost")
SINGLE_MACHINE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray's single-machine mode (see `loopback`)
NO_USAGE_STATS = {"RAY_USAGE_STATS_ENABLED": "0"}  # a Ray we start sends nothing anywhere
CPUS_PER_CELL = 1  # Ray reserves one CPU per cell; the cell's torch uses as many threads
RETRIES = 0  # a crashed worker's cell is a failed cell (see the module docstring)
INSTALL = "pip install 'medtransfer[distributed]'"


def import_ray():
    try:
        import ray
    except ImportError:
        raise MedTransferError(f"--backend ray needs Ray, which is not installed: {INSTALL}") from None
    return ray


def check(address: str | None) -> None:
    """Before any work: Ray is installed, and the cluster at `address` (host:port or ray://host:port)
    answers. Ray itself keeps retrying an unreachable address for a minute before a traceback."""
    import_ray()
    if not address or address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise MedTransferError(f"bad Ray address {address!r}: give the head's host:port, e.g. 127.0.0.1:6379, "
                               "or auto (option --address)")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise MedTransferError(f"no Ray cluster answers at {address} ({exc.strerror or exc}); start one with "
                               f"`ray start --head --port {port}` or fix --address") from None


@contextlib.contextmanager
def session(address: str | None, jobs: int):
    """Ray, connected: to the cluster at `address`, else a local one on 127.0.0.1 with `jobs` CPUs, shut
    down afterwards. A process that already called ray.init keeps its connection (and it is left open)."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    options = dict(include_dashboard=False, log_to_driver=False, configure_logging=True,
                   logging_level=logging.ERROR)
    if address:
        options.update(address=address)
    else:
        options.update(num_cpus=jobs, _node_ip_address="127.0.0.1")
    on_loopback = not address or address.removeprefix("ray://").rpartition(":")[0] in LOOPBACK
    try:
        quiet = {} if address else NO_USAGE_STATS
        with warnings.catch_warnings(), loopback(on_loopback), temporary_environ(quiet):
            warnings.simplefilter("ignore", FutureWarning)  # Ray's tip on CUDA_VISIBLE_DEVICES: see `environment`
            ray.init(**options)
    except Exception as exc:  # noqa: BLE001 (whatever Ray raises, the user gets one line)
        what = f"cannot connect to the Ray cluster at {address}" if address else "cannot start a local Ray"
        first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
        raise MedTransferError(f"{what}: {first[:300]}; check `ray status`"
                               + (" and --address" if address else "")) from None
    try:
        yield ray
    finally:
        ray.shutdown()


@contextlib.contextmanager
def loopback(on: bool):
    """While Ray starts or joins a Ray on this machine: 127.0.0.1 stays 127.0.0.1. On Linux Ray replaces
    it with the machine's network address, and a local Ray then listens on the network, and a driver
    cannot reach a head started on 127.0.0.1. Ray's single-machine mode (its default on macOS and
    Windows) keeps it; Ray reads the setting at import, hence its constant too."""
    from ray._private import ray_constants

    if not on or not hasattr(ray_constants, "ENABLE_RAY_CLUSTER"):
        yield
        return
    saved, ray_constants.ENABLE_RAY_CLUSTER = ray_constants.ENABLE_RAY_CLUSTER, False
    try:
        with temporary_environ({SINGLE_MACHINE: "0"}):  # for the processes it starts
            yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


def environment() -> dict[str, str]:
    """What every task's process needs from the driver's environment: the MEDTRANSFER_* settings, the
    source cache the driver pretrained into, and GPUs hidden from tasks that reserve none (Ray's current
    default, which it announces will change)."""
    env = {k: v for k, v in os.environ.items() if k.startswith("MEDTRANSFER_")}
    env["MEDTRANSFER_CACHE"] = str(cache_dir().resolve())
    env["RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO"] = "1"
    return env


def run_cell_task(work: Callable, cell, folder: Path, cwd: str) -> str:
    """One cell in a Ray worker: in the driver's working folder (relative paths in the grid resolve as
    they do for the driver), with torch on the CPUs Ray reserved for it."""
    try:
        os.chdir(cwd)
    except OSError:
        raise MedTransferError(f"the driver's working folder {cwd} does not exist on Ray node "
                               f"{socket.gethostname()}: a cluster of several machines needs the experiment "
                               "and its data on a filesystem shared at the same path") from None
    return work(cell, folder, CPUS_PER_CELL)


class RemoteTraceback(Exception):
    """The worker's traceback, chained to the error it raised so the failed cell's record keeps it (as
    concurrent.futures does for the local processes)."""

    def __str__(self) -> str:
        return self.args[0]


def cell_error(ray, ref) -> BaseException | None:
    """The finished task's error as the cell's own exception, or None when it succeeded."""
    try:
        ray.get(ref)
    except ray.exceptions.RayTaskError as exc:  # the cell raised: its own exception, as in-process
        cause = exc.cause  # (Ray raises a subclass of both, whose text is the worker's traceback, coloured)
        remote = getattr(exc, "traceback_str", None) or str(exc)
        cause.__cause__ = RemoteTraceback(re.sub(r"\x1b\[[0-9;]*m", "", remote))
        return cause
    except ray.exceptions.RayError as exc:  # the worker or its node was lost (or the task cancelled)
        first = (str(exc).strip().splitlines() or [""])[0]
        return MedTransferError(f"its Ray worker was lost ({exc.__class__.__name__}: {first[:200]}); "
                                "a re-run retries the cell")
    return None


def run_ray(todo: list, work: Callable, jobs: int, on_done, address: str | None = None,
            gpus_per_cell: float = 0) -> None:
    """Cells as Ray tasks (CPUS_PER_CELL and `gpus_per_cell` reserved each); each one's result or error
    goes to `on_done(cell, folder, error)` as it finishes."""
    with session(address, jobs) as ray:
        task = ray.remote(run_cell_task).options(
            num_cpus=CPUS_PER_CELL, num_gpus=gpus_per_cell, max_retries=RETRIES, name="medtransfer-cell",
            runtime_env={"env_vars": environment()})
        cwd = os.getcwd()
        work_ref = ray.put(work)  # the grid's settings, shipped once
        cells = {task.remote(work_ref, cell, folder, cwd): (cell, folder) for cell, folder in todo}
        pending = list(cells)
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                on_done(*cells[ready[0]], cell_error(ray, ready[0]))
        except BaseException:  # Ctrl-C (or a failure here): stop the running cells, drop the queued ones
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
