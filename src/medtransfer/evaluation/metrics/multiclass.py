"""Multi-class metrics: arg-max decisions (weighted by the class weights when given), macro averages over
classes (sklearn's conventions), and one-vs-rest rates per class."""

from __future__ import annotations

import numpy as np

from .base import register_metric
from .kernels import _div, _ece, _log_loss, _nanmean

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
    return _ece(c.w, (c.pred == c.y).astype(float), c.pred_prob)


@register_metric("sensitivity", MULTICLASS)
def sensitivity(c):
    return c.recall


@register_metric("specificity", MULTICLASS)
def specificity(c):
    return _nanmean(_div(c.tn, c.tn + c.fp))


@register_metric("log_loss", MULTICLASS)
def log_loss(c):
    return _log_loss(c.w, np.ones(len(c.y)), c.p[np.arange(len(c.y)), c.y])


# One class against the rest, at the (possibly prior-weighted) argmax decision: name -> rate per class, (B, C).
ONE_VS_REST = {
    "sensitivity": lambda c: _div(c.tp, c.tp + c.fn),
    "specificity": lambda c: _div(c.tn, c.tn + c.fp),
    "ppv": lambda c: _div(c.tp, c.tp + c.fp),
    "npv": lambda c: _div(c.tn, c.tn + c.fn),
}


@register_metric("per_class", MULTICLASS)
def per_class(c):
    """sensitivity[<class>], ... for every class, grouped by rate."""
    return {f"{name}[{cls}]": rate(c)[:, k] for name, rate in ONE_VS_REST.items()
            for k, cls in enumerate(c.class_names)}
