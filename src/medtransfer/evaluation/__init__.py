"""Evaluation: test-set metrics (a registry) with bootstrap confidence intervals, and the selection score."""

from .metrics import (
    METRICS,
    auc_paired_difference,
    auc_paired_mean_ci,
    binary_auc,
    compute_metrics,
    expected_calibration_error,
    register_metric,
)
from .selection import selection_score

__all__ = [
    "compute_metrics",
    "auc_paired_mean_ci",
    "auc_paired_difference",
    "binary_auc",
    "expected_calibration_error",
    "METRICS",
    "register_metric",
    "selection_score",
]
