"""The validation score behind every model choice (early stopping, the logistic C grid, the SSL monitor)."""

from __future__ import annotations

import math

import numpy as np

from .metrics import binary_auc


def selection_score(y: np.ndarray, prob: np.ndarray, task: str) -> float:
    """Validation AUC used for model selection (accuracy when AUC is undefined)."""
    from sklearn.metrics import roc_auc_score

    if task == "binary":
        score = binary_auc(y, prob[:, 1])
    else:
        try:
            score = roc_auc_score(y, prob, multi_class="ovr", average="macro", labels=range(prob.shape[1])) \
                if task == "multiclass" else roc_auc_score(y, prob, average="macro")
        except ValueError:
            score = float("nan")
    if math.isnan(score):
        score = float((prob.argmax(1) == y).mean()) if task != "multilabel" else 0.0
    return float(score)
