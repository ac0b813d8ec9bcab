"""The transfer pipeline, one straight line: target loaded once -> source resolved -> strategy ->
evaluate (validation, then the test split, touched once) -> run folder (the last three in `run`)."""

from __future__ import annotations

import time
from types import SimpleNamespace

from ..data import TaskDataset, parse_budget, require_classes
from ..errors import MedTransferError
from ..strategies import STRATEGIES, Strategy, get_strategy
from ..training.privacy import check_private_training
from .parallel import check_data_parallel, launching, run_parallel
from .request import TransferRequest
from .run import check_target, run_transfer
from .run_folder import RunResult, output_dir
from .source import load_source_data, resolve_source, source_encoder
from .unlabelled import load_extra_unlabelled


def transfer(request: TransferRequest) -> RunResult:
    """Move a source model (or none) to the target with a strategy; evaluate; write the run folder.
    With --devices N (x --num-nodes M) > 1 the whole line runs in N x M processes (`parallel.py`)."""
    started = time.perf_counter()
    strategy = get_strategy(request.strategy)
    check_budget(strategy, request.budget)
    check_dp(strategy, request)
    check_data_parallel(strategy, request)
    out = output_dir(request.output, request.data, request.strategy,
                     "all" if request.budget is None else request.budget, f"s{request.seed}")
    if launching(request.training):
        return run_parallel(transfer, request, out)
    source_data = load_source_data(request)
    if source_data is not None:
        require_classes(source_data, request.source)
    target = request.loading.load(request.data, encoder=source_encoder(request.source, source_data),
                                  split_seed=request.split_seed)
    require_classes(target, request.data)
    check_split_seed(request, target)
    check_target(request, target)  # --positive, --threshold, --calibrate against the task, before any training
    extra = load_extra_unlabelled(request.unlabelled, target, strategy)  # a bad folder refused before any pretraining
    source = resolve_source(request, strategy, target, source_data)
    return run_transfer(request, target, out, strategy, source, source_data, started, extra)


def check_split_seed(request: TransferRequest, target: TaskDataset) -> None:
    """A split seed only redraws splits that medtransfer draws itself (the loader records its seed)."""
    if request.split_seed and "split_seed" not in target.info:
        raise MedTransferError(f"{request.data} comes with fixed splits, so --split-seed {request.split_seed} cannot "
                               "redraw them; it applies to csv:, heart: and folder: datasets without split folders")


def check_dp(strategy: Strategy, request: TransferRequest) -> None:
    """--dp only for a strategy whose every use of the target's labels is the DP-SGD loop (tag `dp_sgd`),
    with loop settings DP-SGD can honour: anywhere else it would be silently ignored or void."""
    if request.dp is None:
        return
    if not strategy.dp_sgd:
        able = ", ".join(sorted(n for n, cls in STRATEGIES.items() if cls.dp_sgd))
        raise MedTransferError(f"--dp: strategy {strategy.name!r} does not learn from the target's labels by DP-SGD "
                               "alone (a closed-form fit, a linear probe, a loss coupling examples, or no target "
                               f"training), so --dp could not protect them; use one of: {able}")
    t = request.training
    check_private_training(SimpleNamespace(sampler=t.sampler or "none", class_weight=t.class_weight or "none",
                                           compile=bool(t.compile), precision=t.precision or "auto"),
                           None, None, None)


def check_budget(strategy: Strategy, budget) -> None:
    if parse_budget(budget) == 0 and strategy.needs_labels:
        able = ", ".join(sorted(n for n, cls in STRATEGIES.items() if not cls.needs_labels))
        raise MedTransferError(f"strategy {strategy.name!r} needs labelled target examples, so --budget 0 is "
                               f"refused; give a budget such as 20, or use a strategy that needs no target "
                               f"labels: {able}")
