"""Binary metrics (the positive class is 1; sensitivity and friends at the stated threshold)."""

from __future__ import annotations

import numpy as np

from .base import register_metric
from .kernels import _div, _ece, _nanmean, _weighted_auc

BINARY = ("binary",)


@register_metric("acc", BINARY)
def accuracy(c):
    return (c.tp + c.tn) / c.n


@register_metric("balanced_acc", BINARY)
def balanced_accuracy(c):
    return _nanmean(np.stack([c.sensitivity, c.specificity], axis=1))


@register_metric("auc", BINARY)
def auc(c):
    return _weighted_auc(c.w, c.pos, c.q)


@register_metric("sensitivity", BINARY)
def sensitivity(c):
    return c.sensitivity


@register_metric("specificity", BINARY)
def specificity(c):
    return c.specificity


@register_metric("ppv", BINARY)
def ppv(c):
    return _div(c.tp, c.tp + c.fp)


@register_metric("npv", BINARY)
def npv(c):
    return _div(c.tn, c.tn + c.fn)


@register_metric("f1", BINARY)
def f1(c):
    return _div(2 * c.tp, 2 * c.tp + c.fp + c.fn)


@register_metric("brier", BINARY)
def brier(c):
    return c.w @ (c.q - c.y) ** 2 / c.n


@register_metric("ece", BINARY)
def ece(c):
    return _ece(c.w, c.y.astype(float), c.q)
