"""Label budgets: how many labelled target examples a run may use, drawn stratified and seeded."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import MedTransferError
from .base import TaskDataset


def parse_budget(budget: str | int | float | None) -> int | float | None:
    """'40' -> 40 examples, '5%' -> 0.05 of the training split, None/'all' -> everything,
    '0' -> 0: no labelled target examples at all (only the strategies that adapt without target
    labels accept it; `transfer` checks that)."""
    if budget is None or str(budget).strip().lower() in {"", "all", "100%"}:
        return None
    text = str(budget).strip()
    try:
        if text.endswith("%"):
            fraction = float(text[:-1]) / 100
            if not 0 < fraction <= 1:
                raise ValueError
            return fraction
        count = int(text)
        if count < 0:
            raise ValueError
        return count
    except ValueError:
        raise MedTransferError(f"bad budget {budget!r}: use a count like 40, a share like 5%, all, "
                               "or 0 (no target labels)") from None


def stratified_sample(y: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """n indices, each class at least once, the rest in proportion to class frequency."""
    rng = np.random.default_rng(seed)
    labels = y.numpy() if y.ndim == 1 else None
    if labels is None:  # multi-label: plain random subset
        return torch.from_numpy(np.sort(rng.choice(len(y), size=n, replace=False)))
    classes, counts = np.unique(labels, return_counts=True)
    if n < len(classes):
        raise MedTransferError(f"budget {n} is smaller than the number of classes ({len(classes)}); "
                               "every class needs at least one labelled example")
    share = np.maximum(1, np.floor(n * counts / counts.sum())).astype(int)
    share = np.minimum(share, counts)
    while share.sum() < n:  # hand out the remainder to the classes furthest below their share
        room = np.where(share < counts, n * counts / counts.sum() - share, -np.inf)
        share[np.argmax(room)] += 1
    while share.sum() > n:
        share[np.argmax(np.where(share > 1, share, 0))] -= 1
    picked = [rng.choice(np.flatnonzero(labels == c), size=k, replace=False) for c, k in zip(classes, share)]
    return torch.from_numpy(np.sort(np.concatenate(picked)))


def apply_budget(dataset: TaskDataset, budget, seed: int = 0) -> TaskDataset:
    """Keep `budget` labelled training examples, and no more labelled validation examples than that:
    a team with 20 labels does not also have 500 for model selection. Budget 0 leaves both the train
    and the val split empty (the unlabelled target images/rows stay available to a strategy through
    `TransferContext.unlabelled`; model selection then uses the source's validation split)."""
    parsed = parse_budget(budget)
    if parsed is None:
        return dataset
    if parsed == 0:
        return dataset.with_splits(train=dataset.train.subset([]), val=dataset.val.subset([]))
    n_train = len(dataset.train)
    n = max(1, round(parsed * n_train)) if isinstance(parsed, float) else parsed
    if n > n_train:
        raise MedTransferError(f"budget {budget} exceeds the {n_train} training examples of {dataset.name}")
    train = dataset.train.subset(stratified_sample(dataset.train.y, n, seed))
    val = dataset.val
    if n < len(val):
        val = val.subset(stratified_sample(val.y, max(n, dataset.num_classes), seed + 1))
    return dataset.with_splits(train=train, val=val)
