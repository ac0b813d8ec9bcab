"""The validation score behind every model choice (early stopping, the logistic C grid, the SSL monitor)."""

from __future__ import annotations

import math

import numpy as np

from .metrics import binary_auc
from .metrics.kernels import _LOG_EPS

# Fewer validation examples of a class than this: a choice made on validation (a threshold, a method) is shaky.
FEW_EXAMPLES = 10


def selection_score(y: np.ndarray, prob: np.ndarray, task: str) -> float:
    """Validation AUC used for model selection (accuracy when AUC is undefined). Multiclass: the mean
    one-vs-rest AUC over the classes the validation split holds (a rare class absent from a small split,
    like ECG5000's 2 unclassified beats in 500, would otherwise make the AUC undefined at every epoch)."""
    from sklearn.metrics import roc_auc_score

    if task == "binary":
        score = binary_auc(y, prob[:, 1])
    elif task == "multiclass":
        present = [k for k in range(prob.shape[1]) if 0 < (y == k).sum() < len(y)]
        score = float(np.mean([binary_auc((y == k).astype(int), prob[:, k]) for k in present])) if present \
            else float("nan")
    else:
        try:
            score = roc_auc_score(y, prob, average="macro")
        except ValueError:
            score = float("nan")
    if math.isnan(score):
        score = float((prob.argmax(1) == y).mean()) if task != "multilabel" else 0.0
    return float(score)


def thinnest_class(y: np.ndarray, task: str, classes: list[str]) -> tuple[str, int] | None:
    """(name, count) of the rarest class in labelled examples `y` (multilabel: the rarer of a label's
    positives and negatives, named "label (positives)" or "label (negatives)"); None when `y` is empty.

    Why: a validation AUC over 1 positive and 4 negatives takes only five values, and every model that ranks
    that one positive first scores 1.000; a choice made on it is close to chance, and the user must hear so."""
    y = np.asarray(y)
    if len(y) == 0:
        return None
    if task == "multilabel":
        counts = [(f"{name} ({kind})", int(n)) for k, name in enumerate(classes)
                  for kind, n in (("positives", y[:, k].sum()), ("negatives", len(y) - y[:, k].sum()))]
    else:
        y = y.reshape(len(y), -1)[:, 0].astype(int)
        counts = [(name, int((y == k).sum())) for k, name in enumerate(classes)]
    return min(counts, key=lambda item: item[1])


def thin_validation(y: np.ndarray, task: str, classes: list[str]) -> str | None:
    """A phrase for a warning when the validation split a choice was made on holds fewer than FEW_EXAMPLES
    of some class, else None: "1 validation example of 'malignant' (5 in all)"."""
    thinnest = thinnest_class(y, task, classes)
    if thinnest is None or thinnest[1] >= FEW_EXAMPLES:
        return None
    name, n = thinnest
    return f"{n} validation example{'s' if n != 1 else ''} of {name!r} ({len(y)} in all)"


def grid_choice_key(val_auc: float, val_log_loss: float, name: str) -> tuple:
    """How a grid's method is chosen (the experiment report and `rank --against`): the smallest key wins.
    Best seed-mean validation AUC first; then the lower validation log-loss (unrecorded: last); then the
    name, so a full tie is still decided the same way every time. No test number takes part."""
    return -val_auc, val_log_loss if math.isfinite(val_log_loss) else math.inf, name


def selection_key(y: np.ndarray, prob: np.ndarray, task: str) -> tuple:
    """(selection_score, balanced accuracy of the argmax decision, -log_loss): larger is better, compare as tuples.

    Why the tie-breakers: on a small validation split many epochs or C values share the same AUC; among
    them, one that predicts a single class for every example (balanced accuracy 0.5 or less) or is worse
    calibrated (higher log-loss) should not win. Never holds nan (undefined parts are -inf or 0), so tuple
    comparison is total. Multilabel: labels decided at 0.5, balanced accuracy and log-loss averaged over labels.
    """
    y, prob = np.asarray(y), np.asarray(prob, dtype=float)
    if task != "multilabel" and y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    y = y.astype(int)
    score = selection_score(y, prob, task) if len(y) else float("nan")
    balanced = _balanced_accuracy(y, prob, task)
    loss = _log_loss(y, prob, task)
    return (_finite(score, -math.inf), _finite(balanced, 0.0), _finite(-loss, -math.inf))


def _finite(value: float, default: float) -> float:
    return float(value) if math.isfinite(value) else default


def _balanced_accuracy(y, prob, task) -> float:
    """Mean recall over the classes present (multilabel: mean of every label's sensitivity and specificity)."""
    if len(y) == 0:
        return float("nan")
    if task == "multilabel":
        pred, pos = prob >= 0.5, y == 1
        rates = []
        for k in range(y.shape[1]):
            rates += [np.mean(pred[pos[:, k], k]) if pos[:, k].any() else np.nan,
                      np.mean(~pred[~pos[:, k], k]) if (~pos[:, k]).any() else np.nan]
        rates = np.asarray(rates, dtype=float)
    else:
        pred = prob.argmax(axis=1)
        rates = np.asarray([np.mean(pred[y == k] == k) for k in np.unique(y)], dtype=float)
    rates = rates[np.isfinite(rates)]
    return float(rates.mean()) if rates.size else float("nan")


def _log_loss(y, prob, task) -> float:
    """Mean negative log-likelihood, probabilities clipped at 1e-7 (as the log_loss metric); nan when empty."""
    if len(y) == 0:
        return float("nan")
    p = np.clip(prob, _LOG_EPS, 1 - _LOG_EPS)
    if task == "multilabel":
        return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))
    return float(-np.mean(np.log(p[np.arange(len(y)), y])))
