"""Multi-label metrics: each label thresholded on its own, averaged over labels; plus one AUC per label."""

from __future__ import annotations

from .base import register_metric
from .kernels import _div, _log_loss, _nanmean

MULTILABEL = ("multilabel",)


@register_metric("auc", MULTILABEL)
def auc(c):
    return c.aucs.mean(axis=1)


@register_metric("acc", MULTILABEL)
def accuracy(c):
    return (c.w @ (c.pred == c.pos).astype(float) / c.n).mean(axis=1)


@register_metric("f1", MULTILABEL)
def f1(c):
    return _nanmean(_div(2 * c.tp, 2 * c.tp + c.fp + c.fn))


@register_metric("brier", MULTILABEL)
def brier(c):
    return (c.w @ (c.p - c.y) ** 2 / c.n).mean(axis=1)


@register_metric("log_loss", MULTILABEL)
def log_loss(c):
    """Mean over labels of each label's binary log-loss."""
    return _log_loss(c.w, c.y, c.p).mean(axis=1)


@register_metric("auc_per_label", MULTILABEL)
def auc_per_label(c):
    """auc_0, auc_1, ...: which labels the model ranks well."""
    return {f"auc_{k}": c.aucs[:, k] for k in range(c.y.shape[1])}
