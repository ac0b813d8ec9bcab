"""Post-hoc calibration on the validation split: fit a few parameters on validation logits, apply them to logits.

Why on logits: a calibrated model is the same model with one more map in front of the softmax, so it
can be saved as buffers in the weights and every consumer (test metrics, predictions.csv, ``predict``)
sees calibrated probabilities without knowing. ``calibrate_logits`` here is the numpy reference of that
map; the torch module in ``models/`` must agree with it. Temperature and platt (with a > 0) keep the
order of the scores, so the AUC stays; isotonic is a step function and can tie scores (AUC may move).
"""

from __future__ import annotations

import warnings

import numpy as np

from ..errors import MedTransferError
from .metrics import compute_metrics

CALIBRATIONS = ("none", "temperature", "platt", "isotonic")
_OPTION = "(option --calibrate)"
_EPS = 1e-6  # isotonic probabilities are clipped here before their logit, so no logit is infinite
_LOG_T_BOUNDS = (np.log(1e-2), np.log(1e2))  # temperature searched in [0.01, 100]
_PLATT_C = 1e4  # inverse regularisation: negligible on real data, keeps the fit finite on separable data
MIN_PER_CLASS = 2  # fewer validation examples of a class than this: nothing is fitted


def check_calibration(method, task: str) -> str:
    """The method's canonical name (None means "none"), or a one-line MedTransferError naming what works."""
    name = "none" if method is None else str(method).strip().lower()
    if name not in CALIBRATIONS:
        raise MedTransferError(f"calibration {str(method)!r} is not known; choose one of {', '.join(CALIBRATIONS)} "
                               f"{_OPTION}")
    if task == "multilabel" and name != "none":
        raise MedTransferError(f"calibration {name!r} is not available for multilabel tasks; use none {_OPTION}")
    if task == "multiclass" and name in ("platt", "isotonic"):
        raise MedTransferError(f"calibration {name!r} works for binary tasks only; for this multiclass task use "
                               f"temperature (it works for multiclass) or none {_OPTION}")
    return name


def fit_calibration(method, logits, y, task: str) -> dict | None:
    """Parameters of ``method`` fitted on validation ``logits`` (N, C) and labels ``y`` (N,) class indices.

    temperature: {"temperature": T} minimising the validation negative log-likelihood of softmax(logits / T)
    (T searched on log T in [0.01, 100]); platt: {"a": a, "b": b}, the logistic regression of y on
    z = l1 - l0; isotonic: {"x": [...], "y": [...]}, the knots of the isotonic regression of y on
    q = softmax(logits)[:, 1], values in [0, 1]; none: {}.
    Returns None when validation is too small to fit (fewer than 2 examples of a class; multiclass
    temperature needs 2 classes with 2 examples each): the run is trained, so the caller warns and
    goes on uncalibrated rather than failing.
    """
    method = check_calibration(method, task)
    if method == "none":
        return {}
    z, labels = _arrays(logits, y)
    counts = np.bincount(labels, minlength=z.shape[1])
    too_few = counts.min() < MIN_PER_CLASS if task == "binary" else (counts >= MIN_PER_CLASS).sum() < 2
    if too_few:
        return None
    if method == "temperature":
        return {"temperature": _fit_temperature(z, labels)}
    if method == "platt":
        return _fit_platt(z[:, 1] - z[:, 0], labels)
    return _fit_isotonic(_softmax(z)[:, 1], labels)


def calibrate_logits(method, params: dict, logits) -> np.ndarray:
    """Calibrated logits (N, C) from ``logits`` (N, C): softmax of the result is the calibrated probability.

    temperature: logits / T; platt: [a l0 - b/2, a l1 + b/2], so softmax gives sigmoid(a z + b) with
    z = l1 - l0; isotonic: [0, logit(clip(interp(q), 1e-6, 1 - 1e-6))] with q = softmax(logits)[:, 1].
    """
    name = "none" if method is None else str(method).strip().lower()
    z = np.asarray(logits, dtype=float)
    if name == "none":
        return z
    if name == "temperature":
        return z / float(params["temperature"])
    if name == "platt":
        a, b = float(params["a"]), float(params["b"])
        return np.stack([a * z[:, 0] - b / 2, a * z[:, 1] + b / 2], axis=1)
    if name == "isotonic":
        q = np.interp(_softmax(z)[:, 1], np.asarray(params["x"], float), np.asarray(params["y"], float))
        q = np.clip(q, _EPS, 1 - _EPS)
        return np.stack([np.zeros(len(q)), np.log(q) - np.log1p(-q)], axis=1)
    raise ValueError(f"calibrate_logits: unknown method {method!r}; expected one of {', '.join(CALIBRATIONS)}.")


def calibration_summary(y, prob, task: str, positive: int = 1) -> dict:
    """Point values {"ece", "brier", "cal_slope", "cal_intercept"} (the last two binary only; multilabel has
    no ECE) for the metrics.json "calibration" block, without a bootstrap."""
    res = compute_metrics(y, prob, task, n_boot=0, positive=positive)
    return {k: res[k]["value"] for k in ("ece", "brier", "cal_slope", "cal_intercept") if k in res}


# ----------------------------------------------------------------------------- fitting


def _arrays(logits, y):
    z = np.asarray(logits, dtype=float)
    labels = np.asarray(y).reshape(-1)
    if z.ndim != 2 or z.shape[1] < 2 or len(z) != len(labels):
        raise ValueError(f"fit_calibration: logits must be (N, C) with C >= 2 matching {len(labels)} labels, "
                         f"got shape {z.shape}.")
    if not np.isfinite(z).all():
        raise ValueError("fit_calibration: logits contain NaN or infinite values.")
    if len(labels) and (labels.min() < 0 or labels.max() >= z.shape[1]):
        raise ValueError(f"fit_calibration: labels must be class indices in [0, {z.shape[1] - 1}].")
    return z, labels.astype(int)


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _nll(z, labels):
    """Mean negative log-likelihood of softmax(z) (log-sum-exp, stable)."""
    top = z.max(axis=1, keepdims=True)
    log_norm = top[:, 0] + np.log(np.exp(z - top).sum(axis=1))
    return float(np.mean(log_norm - z[np.arange(len(z)), labels]))


def _fit_temperature(z, labels) -> float:
    from scipy.optimize import minimize_scalar

    found = minimize_scalar(lambda log_t: _nll(z / np.exp(log_t), labels), bounds=_LOG_T_BOUNDS, method="bounded",
                            options={"xatol": 1e-6})
    return float(np.exp(found.x))


def _fit_platt(margin, labels) -> dict:
    from sklearn.linear_model import LogisticRegression

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence on (near-)separable validation data: the fit is still usable
        fitted = LogisticRegression(C=_PLATT_C, max_iter=1000).fit(margin[:, None], labels)
    return {"a": float(fitted.coef_[0, 0]), "b": float(fitted.intercept_[0])}


def _fit_isotonic(q, labels) -> dict:
    from sklearn.isotonic import IsotonicRegression

    fitted = IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1).fit(q, labels.astype(float))
    return {"x": [float(v) for v in fitted.X_thresholds_], "y": [float(v) for v in fitted.y_thresholds_]}
