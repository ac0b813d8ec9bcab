"""Data-parallel pipelines (`--devices N [--num-nodes M]`): the entry (transfer, pretrain) runs again in
each of the N x M processes `training.distributed.launch` starts, with the same request, except that
only rank 0 writes (run folder, caches) and shows progress; the caller gets rank 0's RunResult.

What cannot train data-parallel is refused here, before any process starts: a strategy or SSL method
not tagged `data_parallel` (decided from the tags), and DP-SGD (--dp). A multi: source is pretrained on
one device in every rank (its loss weighs each dataset by its share of the batch, which a device's
share would change; each rank repeats the same steps, rank 0 caches the result) before the transfer
itself trains data-parallel.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable

from ..errors import MedTransferError
from ..progress import SILENT, RichProgress
from ..strategies import STRATEGIES, Strategy
from ..training import distributed
from ..training.loop import resolve_accelerator
from .request import RunSettings, TrainOptions, TransferRequest


def launching(training: TrainOptions) -> bool:
    """Whether this call must start the processes (more than one asked, and not inside them already)."""
    return training.world > 1 and not distributed.launched()


def run_parallel(entry: Callable, request: RunSettings, out: Path | None):
    """`entry(request)` in every process of the run; rank 0's result (None on a node other than node 0).
    `out` is the run folder the caller resolved and checked, so the ranks never pick a default name twice."""
    shown = request.progress is not SILENT  # a Progress object cannot cross processes: rank 0 draws bars
    request = replace(request, output=replace(request.output, out=out), progress=SILENT)
    t = request.training
    return distributed.launch(run_rank, entry, request, shown, devices=t.devices or 1, num_nodes=t.num_nodes or 1,
                              accelerator=resolve_accelerator(request.accelerator))


def run_rank(entry: Callable, request: RunSettings, shown: bool):
    """One rank's run: rank 0 as asked; the others save nothing and stay quiet."""
    if distributed.is_main():
        return entry(replace(request, progress=RichProgress() if shown else SILENT))
    return entry(replace(request, output=replace(request.output, save=False), progress=SILENT))


def check_data_parallel(strategy: Strategy, request: TransferRequest) -> None:
    """Refuse, before anything starts, a transfer that N processes would train differently than one."""
    t = request.training
    if t.world == 1:
        return
    flag = f"--devices {t.devices or 1}" + (f" --num-nodes {t.num_nodes}" if (t.num_nodes or 1) > 1 else "")
    if not strategy.data_parallel:
        able = ", ".join(sorted(n for n, cls in STRATEGIES.items() if cls.data_parallel))
        raise MedTransferError(f"{flag}: strategy {strategy.name!r} cannot train data-parallel (a closed-form fit, no "
                               "training loop, or a loss coupling a batch's examples, which each device's share would "
                               f"compute differently); use one of: {able}, or one device")
    if request.dp is not None:
        raise MedTransferError(f"{flag}: --dp (DP-SGD) runs on one device: Opacus's per-example clipping, Poisson "
                               "batches and privacy accountant assume one process; drop --dp or --devices")


def check_data_parallel_method(method_class, training: TrainOptions) -> None:
    """Refuse --devices for a self-supervised method whose loss would see only a device's share of a batch."""
    if training.world > 1 and not method_class.data_parallel:
        raise MedTransferError(f"--devices {training.devices or 1}: --method {method_class.name} cannot pretrain "
                               "data-parallel (its loss would see only each device's share of a batch); use one device")
