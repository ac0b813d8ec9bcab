"""Evaluation: test-set metrics (a registry) with bootstrap confidence intervals, the operating point
(threshold rules chosen on validation), post-hoc calibration, and the selection score."""

from .calibration import CALIBRATIONS, calibrate_logits, calibration_summary, check_calibration, fit_calibration
from .metrics import (
    METRICS,
    auc_paired_difference,
    auc_paired_mean_ci,
    binary_auc,
    compute_metrics,
    expected_calibration_error,
    register_metric,
)
from .selection import FEW_EXAMPLES, grid_choice_key, selection_key, selection_score, thin_validation, thinnest_class
from .threshold import RULE_HELP, OperatingPoint, check_rule_syntax, choose_operating_point, decisions, parse_rule

__all__ = [
    "compute_metrics",
    "auc_paired_mean_ci",
    "auc_paired_difference",
    "binary_auc",
    "expected_calibration_error",
    "METRICS",
    "register_metric",
    "selection_score",
    "selection_key",
    "grid_choice_key",
    "FEW_EXAMPLES",
    "thinnest_class",
    "thin_validation",
    "RULE_HELP",
    "parse_rule",
    "check_rule_syntax",
    "OperatingPoint",
    "choose_operating_point",
    "decisions",
    "CALIBRATIONS",
    "check_calibration",
    "fit_calibration",
    "calibrate_logits",
    "calibration_summary",
]
