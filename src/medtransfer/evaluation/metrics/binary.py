"""Binary metrics: sensitivity and friends at the stated threshold, for the positive class (index 1 here:
compute_metrics flips labels and columns when the positive class is index 0)."""

from __future__ import annotations

import numpy as np

from .base import register_metric
from .kernels import _div, _ece, _log_loss, _nanmean, _newton, _weighted_auc

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


@register_metric("log_loss", BINARY)
def log_loss(c):
    return _log_loss(c.w, c.y, c.q)


@register_metric("prevalence", BINARY)
def prevalence(c):
    """Share of positives: the base rate that PPV and NPV depend on."""
    return c.w @ c.y.astype(float) / c.n


@register_metric("cal_slope", BINARY)
def calibration_slope(c):
    """b of y ~ a + b logit(q): 1 when calibrated, < 1 when overconfident (predictions too extreme)."""
    return c.recalibration[1]


@register_metric("cal_intercept", BINARY)
def calibration_intercept(c):
    """a of y ~ a + offset(logit q), calibration-in-the-large: 0 when calibrated, > 0 when risks are too low."""
    return _newton(c.w, c.y, c.q, slope=False)[0]
