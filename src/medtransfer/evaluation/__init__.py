"""Evaluation: test-set metrics with bootstrap confidence intervals."""

from .metrics import (
    auc_paired_difference,
    auc_paired_mean_ci,
    binary_auc,
    compute_metrics,
    expected_calibration_error,
)

__all__ = [
    "compute_metrics",
    "auc_paired_mean_ci",
    "auc_paired_difference",
    "binary_auc",
    "expected_calibration_error",
]
