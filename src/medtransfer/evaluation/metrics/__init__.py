"""Test-set metrics with 95% bootstrap confidence intervals, for binary, multiclass and multilabel tasks.

Why this shape: small medical test sets make point estimates noisy, so every metric comes with a
percentile bootstrap CI. The bootstrap is vectorised by expressing each resample as a row of
multiplicities ``w`` (how often each of the N samples was drawn; rows sum to N). Every metric is then a
weighted sum over the *original* samples — a matrix product — and AUC is a weighted Mann–Whitney
statistic computed from one sort of the scores. The point estimate is the same code with ``w = 1``,
so point values and resamples can never disagree in definition.

Metrics come from a registry (``METRICS``): a metric is one function of the task's shared context,
decorated with ``@register_metric(name, tasks=...)``, in a file of this package (found on import) or
in any module. ``compute_metrics`` reports every metric registered for the task, in registration order.
"""

from __future__ import annotations

import numpy as np

from ...defaults import N_BOOT
from ...registry import import_submodules
from .base import CONTEXTS, METRICS, TASKS, Metric, evaluate, metric_functions, register_metric
from .kernels import _div, _ece, _nanmean, _weighted_auc

_CHUNK = 4_000_000  # max resamples x samples per weight chunk, bounds memory for large test sets

__all__ = [
    "compute_metrics", "auc_paired_mean_ci", "auc_paired_difference", "binary_auc", "expected_calibration_error",
    "METRICS", "Metric", "register_metric", "metric_functions", "CONTEXTS", "TASKS",
]


# ----------------------------------------------------------------------------- public API


def compute_metrics(y_true, prob, task: str, n_boot: int = N_BOOT, seed: int = 0, threshold: float = 0.5,
                    positive: int = 1, class_weights=None, classes=None) -> dict:
    """All metrics for ``task`` as ``{name: {"value": float, "ci": [low, high]}}`` (95% percentile bootstrap).

    Decisions: binary, the class at index ``positive`` (0 or 1) is positive when its probability is
    >= ``threshold`` (positive=0 flips labels and columns first, so sensitivity, PPV, calibration slope ...
    are about that class); multiclass, argmax of ``prob * class_weights`` (plain argmax when None), with
    per-class outputs named after ``classes``; multilabel, each label at ``threshold``. ``threshold`` and
    ``positive`` may be None (0.5 and 1), as an operating point of another task carries them.

    Resamples where a metric is undefined (e.g. one class only, for AUC) are skipped for that metric;
    an undefined value is ``nan`` with ci ``[nan, nan]``. ``n_boot=0`` skips the bootstrap (ci is nan).
    """
    y, p = _validate(y_true, prob, task)
    threshold = 0.5 if threshold is None else float(threshold)
    if task == "binary" and _positive_index(positive) == 0:
        y, p = 1 - y, p[:, ::-1]
    weights = _class_weights(class_weights, task, p.shape[1])
    names = _class_names(classes, task, p.shape[1])
    point = evaluate(task, np.ones((1, len(y))), y, p, threshold, weights, names)
    chunks = [evaluate(task, w, y, p, threshold, weights, names) for w in _weight_chunks(len(y), n_boot, seed)]
    return {
        name: {
            "value": float(value[0]),
            "ci": _percentile_ci(np.concatenate([c[name] for c in chunks]) if chunks else np.empty(0)),
        }
        for name, value in point.items()
    }


def auc_paired_mean_ci(y_true, probs: list, n_boot: int = N_BOOT, seed: int = 0, task: str = "binary",
                       split_of: list | None = None) -> dict:
    """Mean AUC of K models scored on the same test set, with a CI from paired resampling.

    Every model is evaluated on the same resample indices, so the CI reflects test-set sampling noise of
    the K-model mean (rather than treating the K models' AUCs as independent draws). For multiclass and
    multilabel tasks the AUC is the macro one-vs-rest mean, as in ``compute_metrics``.

    Repeated hold-out (each seed redraws the split): ``split_of`` names the test split of each model and
    ``y_true`` maps each split to its labels. Each split is resampled on its own, and models on the same
    split share its resamples.
    """
    point, boots = _split_mean_auc(y_true, probs, split_of, task, n_boot, seed, "auc_paired_mean_ci")
    return {"value": point, "ci": _percentile_ci(boots)}


def auc_paired_difference(
    y_true, probs_a: list, probs_b: list, n_boot: int = N_BOOT, seed: int = 0, task: str = "binary",
    split_of_a: list | None = None, split_of_b: list | None = None,
) -> dict:
    """Mean AUC of models A minus mean AUC of models B on the same test samples: value, 95% CI and p-value.

    Why paired: A and B are scored on identical resamples, so patient-level difficulty cancels and the
    CI is much tighter than comparing two separate CIs. ``p`` is the two-sided bootstrap p-value
    ``2 * min(P*(d <= 0), P*(d >= 0))`` with a +1 correction (never exactly 0; 1 for identical models),
    so ``p < 0.05`` agrees with the 95% percentile CI excluding zero. ``split_of_a`` / ``split_of_b``:
    as ``split_of`` in ``auc_paired_mean_ci``, for repeated hold-out.
    """
    point_a, boots_a = _split_mean_auc(y_true, probs_a, split_of_a, task, n_boot, seed, "auc_paired_difference")
    point_b, boots_b = _split_mean_auc(y_true, probs_b, split_of_b, task, n_boot, seed, "auc_paired_difference")
    diffs = boots_a - boots_b
    diffs = diffs[np.isfinite(diffs)]
    if diffs.size:
        tail = min(np.sum(diffs <= 0), np.sum(diffs >= 0))
        p = float(min(1.0, 2 * (tail + 1) / (diffs.size + 1)))
    else:
        p = float("nan")
    return {"value": point_a - point_b, "ci": _percentile_ci(diffs), "p": p}


def binary_auc(y_true, score) -> float:
    """ROC AUC for 0/1 labels (``score``: positive-class score (N,) or probabilities (N, 2)); nan if one class only.

    Never raises on a single-class validation set, which is why early stopping uses it instead of sklearn.
    """
    y = np.asarray(y_true).reshape(-1)
    s = np.asarray(score, dtype=float)
    s = s[:, -1] if s.ndim == 2 else s
    if s.shape != y.shape:
        raise ValueError(f"binary_auc: y_true has {y.shape[0]} samples but score has shape {np.shape(score)}.")
    return float(_weighted_auc(np.ones((1, len(y))), y == 1, s)[0])


def expected_calibration_error(y_true, prob_pos, n_bins: int = 10) -> float:
    """Reliability ECE (Naeini 2015 / Guo 2017): sum over equal-width bins of bin weight x |mean label - mean prob|."""
    y = np.asarray(y_true, dtype=float).reshape(-1)
    q = np.asarray(prob_pos, dtype=float).reshape(-1)
    if y.shape != q.shape:
        raise ValueError(f"expected_calibration_error: {y.size} labels but {q.size} probabilities.")
    return float(_ece(np.ones((1, len(y))), y, q, n_bins)[0])


# ----------------------------------------------------------------------------- validation & bootstrap


def _validate(y_true, prob, task):
    """Return (y, p) as numpy arrays in canonical shapes, or raise ValueError saying what is wrong."""
    if task not in TASKS:
        raise ValueError(f"Unknown task {task!r}; expected one of {', '.join(TASKS)}.")
    y, p = np.asarray(y_true), np.asarray(prob, dtype=float)
    if task == "binary" and p.ndim == 1:  # positive-class probabilities are accepted too
        p = np.stack([1 - p, p], axis=1)
    if p.ndim != 2 or len(p) == 0:
        raise ValueError(f"prob must be a non-empty 2-D array (N, C), got shape {p.shape}.")
    if not np.isfinite(p).all():
        raise ValueError("prob contains NaN or infinite values.")
    if p.min() < 0 or p.max() > 1:
        raise ValueError("prob must lie in [0, 1]; pass probabilities (softmax/sigmoid), not logits.")
    n, c = p.shape
    if task == "multilabel":
        if y.shape != p.shape:
            raise ValueError(f"multilabel: y_true shape {y.shape} does not match prob shape {p.shape}.")
        if not np.isin(y, (0, 1)).all():
            raise ValueError("multilabel: y_true must contain only 0 and 1.")
        return y.astype(int), p
    if y.ndim == 2 and y.shape[1] == 1:  # MedMNIST stores labels as (N, 1)
        y = y[:, 0]
    if y.shape != (n,):
        raise ValueError(f"{task}: y_true must have shape ({n},) to match prob {p.shape}, got {y.shape}.")
    if task == "binary" and c != 2:
        raise ValueError(f"binary: prob must have 2 columns (N, 2), got {c}.")
    if c < 2:
        raise ValueError(f"{task}: prob must have at least 2 columns, got {c}.")
    if not np.all(np.mod(y, 1) == 0) or y.min() < 0 or y.max() >= c:
        raise ValueError(f"{task}: y_true must hold integer class indices in [0, {c - 1}].")
    if np.abs(p.sum(axis=1) - 1).max() > 1e-3:
        raise ValueError(f"{task}: prob rows must sum to 1 (class probabilities, e.g. after softmax).")
    return y.astype(int), p


def _positive_index(positive) -> int:
    if positive is None:
        return 1
    if isinstance(positive, bool) or positive not in (0, 1):
        raise ValueError(f"binary: positive must be the index 0 or 1 of the positive class, got {positive!r}.")
    return int(positive)


def _class_weights(class_weights, task, c):
    """None, or the multiclass decision weights as a (C,) array of finite non-negative numbers."""
    if class_weights is None:
        return None
    if task != "multiclass":
        raise ValueError(f"{task}: class_weights weight the multiclass argmax; a {task} task decides by threshold.")
    weights = np.asarray(class_weights, dtype=float)
    if weights.shape != (c,) or not np.isfinite(weights).all() or (weights < 0).any() or not weights.any():
        raise ValueError(f"multiclass: class_weights must be {c} finite non-negative numbers, not all 0, "
                         f"got {list(np.ravel(class_weights))}.")
    return weights


def _class_names(classes, task, c):
    """The class names of a multiclass task (per-class outputs are named after them); ignored otherwise."""
    if classes is None or task != "multiclass":
        return None
    names = [str(name) for name in classes]
    if len(names) != c:
        raise ValueError(f"multiclass: {len(names)} class names for {c} probability columns.")
    return names


def _weight_chunks(n, n_boot, seed):
    """Yield (b, n) float arrays of bootstrap multiplicities, ``n_boot`` rows in total, from one seeded Generator."""
    rng = np.random.default_rng(seed)
    step = max(1, _CHUNK // n)
    for start in range(0, n_boot, step):
        b = min(step, n_boot - start)
        idx = rng.integers(0, n, size=(b, n)) + n * np.arange(b)[:, None]
        yield np.bincount(idx.ravel(), minlength=b * n).reshape(b, n).astype(float)


def _percentile_ci(values):
    """95% percentile interval of the finite bootstrap values (undefined resamples are skipped)."""
    values = values[np.isfinite(values)]
    if values.size == 0:
        return [float("nan"), float("nan")]
    lo, hi = np.percentile(values, [2.5, 97.5])
    return [float(lo), float(hi)]


def _split_mean_auc(y_true, probs, split_of, task, n_boot, seed, caller):
    """(mean AUC over the models, its n_boot resampled values). Without split_of all models share y_true;
    with it, models are grouped by split, each split resampled from its own seeded generator (split 0
    from ``seed`` itself), and the grand mean weights every model equally."""
    if not probs:
        raise ValueError(f"{caller}: probs is empty; pass one probability array per model.")
    if split_of is None:
        y_true, split_of = {0: y_true}, [0] * len(probs)
    if len(split_of) != len(probs):
        raise ValueError(f"{caller}: split_of names {len(split_of)} splits for {len(probs)} models.")
    point, boots = 0.0, np.zeros(n_boot)
    for split in sorted(set(split_of)):
        members = [p for p, s in zip(probs, split_of) if s == split]
        n, mean_auc = _mean_auc_fn(y_true[split], members, task, caller)
        share = len(members) / len(probs)
        point += share * float(mean_auc(np.ones((1, n)))[0])
        chunks = [mean_auc(w) for w in _weight_chunks(n, n_boot, seed if split == 0 else [seed, split])]
        boots = boots + share * (np.concatenate(chunks) if chunks else np.empty(0))
    return point, boots


def _mean_auc_fn(y_true, probs, task, caller):
    """Validate K probability arrays against one label set; return (N, w -> mean AUC over the K models)."""
    pairs = [_validate(y_true, p, task) for p in probs]
    y = pairs[0][0]
    if task == "binary":
        cols = [[(y == 1, p[:, 1])] for _, p in pairs]
    else:  # macro one-vs-rest: class k (multiclass) or label k (multilabel) against the rest
        pos = [(y == k) if task == "multiclass" else (y[:, k] == 1) for k in range(pairs[0][1].shape[1])]
        cols = [list(zip(pos, p.T)) for _, p in pairs]

    def mean_auc(w):
        return np.mean([np.mean([_weighted_auc(w, t, s) for t, s in model], axis=0) for model in cols], axis=0)

    return len(y), mean_auc


import_submodules(__name__)  # the metric files (binary.py, ...) register themselves
