"""Data-parallel runs (`--devices N [--num-nodes M]`): N x M processes, one per device, started by
Lightning Fabric's spawn launcher (DDP), each running the same pipeline on the same data.

Why this shape: the pipeline stays one straight line and the training loop stays one loop. Every rank
loads the data and runs the same deterministic steps; inside `training.loop.fit` each rank trains on
its share of every batch and DDP averages the gradients; rank 0 takes every decision that depends on a
computed number (validation score, early stopping, whether a cached source exists) and broadcasts it,
so all ranks take the same branch and no collective waits forever. Only rank 0 writes anything that
lasts (run folder, source cache, feature cache); the others write only into this launch's scratch
folder, removed when the launch returns.

Spawn rather than Fabric's script launcher ("ddp"), because the API is called from anywhere (a
notebook-less script, pytest, an experiment) and re-running `sys.argv` would re-run the caller.
Rank 0's result comes back through a file in the scratch folder (`torch.save`), not the launcher's
pipe: a run's result (model, predictions, dataset) can exceed what a pipe holds while the parent
waits for the processes to end. A failure in any rank ends the launch with that rank's error (the
launcher stops the other processes): a MedTransferError stays one, with its own message.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import traceback
import warnings
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch

from ..errors import MedTransferError
from ..runs import temporary_environ

RESULT, ERRORS = "result.pt", "error-rank{}.json"
_world: dict = {}  # inside a launched process: {"fabric": the launcher's Fabric, "scratch": Path}


def check_devices(devices: int, num_nodes: int, accelerator: str) -> None:
    """What a data-parallel run needs from the machine, checked before anything starts: enough GPUs
    on CUDA, a DDP backend (none on Apple MPS), and the rendezvous variables when several nodes join."""
    if devices * num_nodes <= 1:
        return
    if accelerator == "mps":
        raise MedTransferError(f"--devices {devices}: Apple MPS has no data-parallel (DDP) backend; use --device cpu "
                               "or one device")
    if accelerator == "cuda" and devices > torch.cuda.device_count():
        raise MedTransferError(f"--devices {devices}: this machine has {torch.cuda.device_count()} CUDA GPU(s); "
                               f"use --devices {max(torch.cuda.device_count(), 1)} or fewer")
    if num_nodes > 1:
        missing = [name for name in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK") if name not in os.environ]
        if missing:
            raise MedTransferError(f"--num-nodes {num_nodes}: set {', '.join(missing)} on every node (node 0's address "
                                   "and a free port, and this node's rank 0..M-1), then run the same command on each")


def launched() -> bool:
    """Whether this process is one rank of a launched data-parallel run."""
    return "fabric" in _world


def world_size() -> int:
    return _world["fabric"].world_size if launched() else 1


def rank() -> int:
    """This process's global rank (0 outside a launched run)."""
    return _world["fabric"].global_rank if launched() else 0


def is_main() -> bool:
    """Rank 0: the process that decides, shows progress and writes."""
    return rank() == 0


def agree(value: Any) -> Any:
    """Rank 0's `value` on every rank (Fabric's broadcast); `value` itself outside a launched run. Every
    rank must call it at the same point, so each branch that depends on it is taken by all or none."""
    return _world["fabric"].broadcast(value, src=0) if launched() else value


def record(devices: int, num_nodes: int) -> dict | None:
    """What a run's config.json and model.json say of its data parallelism (None: one process)."""
    if devices * num_nodes == 1:
        return None
    import torch.distributed as dist

    return {"strategy": "ddp", "devices": devices, "num_nodes": num_nodes, "world_size": devices * num_nodes,
            "backend": dist.get_backend() if dist.is_initialized() else None,
            "batch_size": "global: each step, every device trains on an equal share of the batch",
            "launcher": "lightning_fabric spawn", "writer": "rank 0"}


def scratch_dir() -> Path:
    """This rank's folder for what must exist a moment but not last (removed when the launch ends)."""
    folder = _world["scratch"] / f"rank{rank()}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def launch(function: Callable, *args, devices: int, num_nodes: int = 1, accelerator: str = "cpu") -> Any:
    """`function(*args)` in devices x num_nodes processes (DDP: gloo on CPU, NCCL on CUDA); returns rank 0's
    result, or None on a node other than node 0 (its ranks return nothing)."""
    from lightning_fabric import Fabric
    from lightning_fabric.plugins.environments.lightning import find_free_network_port
    from lightning_fabric.strategies import DDPStrategy

    check_devices(devices, num_nodes, accelerator)
    with tempfile.TemporaryDirectory(prefix="medtransfer-ddp-") as scratch, \
            rendezvous(num_nodes, find_free_network_port):
        fabric = Fabric(accelerator=accelerator, devices=devices, num_nodes=num_nodes,
                        strategy=DDPStrategy(start_method="spawn"))
        try:
            # one opaque callable: the launcher walks plain arguments (and refuses frozen dataclasses)
            fabric.launch(worker, partial(function, *args), Path(scratch))
        except Exception as exc:  # the launcher's ProcessRaisedException / ProcessExitedException
            raise failure(Path(scratch), exc) from None
        result = Path(scratch) / RESULT
        # Written a moment ago by rank 0 of this launch into this private folder: not foreign data.
        return torch.load(result, weights_only=False) if result.is_file() else None


@contextmanager
def rendezvous(num_nodes: int, free_port: Callable[[], int]):
    """One node: a fresh local port for this launch (Fabric reads MASTER_PORT, and a later launch in the
    same process must not inherit this one's); the caller's environment is restored afterwards. Several
    nodes: the MASTER_* variables the user set (`check_devices`)."""
    if num_nodes > 1:
        yield
        return
    with temporary_environ({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}):
        yield


def worker(fabric, function: Callable, scratch: Path) -> None:
    """One rank: run `function()`; rank 0 saves its result, a failing rank its error, for the parent."""
    _world.update(fabric=fabric, scratch=scratch)
    if fabric.global_rank > 0:
        os.environ["MEDTRANSFER_FEATURE_CACHE"] = "0"  # only rank 0 writes the feature cache
        warnings.simplefilter("ignore")  # rank 0 says it once
    try:
        result = function()
    except BaseException as exc:
        (scratch / ERRORS.format(fabric.global_rank)).write_text(json.dumps({
            "rank": fabric.global_rank, "time": time.time(), "type": type(exc).__name__, "message": str(exc),
            "user_error": isinstance(exc, MedTransferError), "traceback": traceback.format_exc()}))
        raise
    if fabric.global_rank == 0:
        torch.save(result, scratch / RESULT)


def failure(scratch: Path, exc: BaseException) -> BaseException:
    """The first error a rank reported (the others followed from it: a peer that waited in a collective
    reads "connection closed", or was stopped by the launcher): a MedTransferError keeps its one line;
    anything else names the rank, with its traceback as a note."""
    reports = sorted((json.loads(p.read_text()) for p in scratch.glob(ERRORS.format("*"))),
                     key=lambda r: (r["time"], r["rank"]))
    if not reports:  # it died (a signal: killed, out of memory) or failed in the launcher, before our code
        return RuntimeError(f"a data-parallel process failed outside the pipeline: {' '.join(str(exc).split())}")
    first = reports[0]
    if first["user_error"]:
        return MedTransferError(first["message"])
    error = RuntimeError(f"rank {first['rank']} of the data-parallel run failed: {first['type']}: {first['message']}")
    error.add_note(first["traceback"])
    return error
