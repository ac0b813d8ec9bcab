"""Multi-class metrics: arg-max predictions, macro averages over classes (sklearn's conventions)."""

from __future__ import annotations

from .base import register_metric
from .kernels import _div, _ece, _nanmean

MULTICLASS = ("multiclass",)


@register_metric("acc", MULTICLASS)
def accuracy(c):
    return c.w @ (c.pred == c.y).astype(float) / c.n


@register_metric("balanced_acc", MULTICLASS)
def balanced_accuracy(c):
    return c.recall


@register_metric("auc", MULTICLASS)
def auc(c):
    return c.aucs.mean(axis=1)  # nan if any class is absent: OvR AUC is then undefined


@register_metric("f1", MULTICLASS)
def f1(c):
    return _nanmean(_div(2 * c.tp, 2 * c.tp + c.fp + c.fn))


@register_metric("brier", MULTICLASS)
def brier(c):
    return c.w @ ((c.p - c.true1h) ** 2).sum(axis=1) / c.n


@register_metric("ece", MULTICLASS)
def ece(c):
    return _ece(c.w, (c.pred == c.y).astype(float), c.p.max(axis=1))


@register_metric("sensitivity", MULTICLASS)
def sensitivity(c):
    return c.recall


@register_metric("specificity", MULTICLASS)
def specificity(c):
    return _nanmean(_div(c.tn, c.tn + c.fp))
