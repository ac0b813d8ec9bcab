"""Post-hoc calibration: one-line refusals, fits on validation logits that improve calibration, the numpy map."""

import numpy as np
import pytest

from medtransfer.errors import MedTransferError
from medtransfer.evaluation import (CALIBRATIONS, calibrate_logits, calibration_summary, check_calibration,
                                    expected_calibration_error, fit_calibration, selection_key)
from medtransfer.evaluation.calibration import _nll, _softmax


def overconfident(n=600, c=2, scale=3.0, shift=0.0, seed=0):
    """Labels drawn from softmax(z); the model's logits are scale * z (+ shift on the last class)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.2, size=(n, c))
    y = np.array([rng.choice(c, p=row) for row in _softmax(z)])
    logits = scale * z
    logits[:, -1] += shift
    return logits, y


@pytest.mark.parametrize("method, task, message", [
    ("beta", "binary", "calibration 'beta' is not known; choose one of none, temperature, platt, isotonic"),
    ("platt", "multiclass", "works for binary tasks only; for this multiclass task use temperature (it works for "
                            "multiclass) or none"),
    ("isotonic", "multiclass", "binary tasks only"),
    ("temperature", "multilabel", "not available for multilabel tasks; use none"),
])
def test_check_calibration_refuses_in_one_line(method, task, message):
    with pytest.raises(MedTransferError) as err:
        check_calibration(method, task)
    assert message in str(err.value) and str(err.value).endswith("(option --calibrate)")
    assert "\n" not in str(err.value)


def test_check_calibration_accepts():
    assert CALIBRATIONS == ("none", "temperature", "platt", "isotonic")
    assert check_calibration(None, "multilabel") == "none"
    assert check_calibration(" Temperature", "multiclass") == "temperature"
    assert [check_calibration(m, "binary") for m in CALIBRATIONS] == list(CALIBRATIONS)


@pytest.mark.parametrize("c", [2, 4])
def test_temperature_undoes_overconfidence(c):
    logits, y = overconfident(c=c)
    params = fit_calibration("temperature", logits, y, "binary" if c == 2 else "multiclass")
    assert set(params) == {"temperature"} and 2.0 < params["temperature"] < 4.5  # the true factor is 3
    calibrated = calibrate_logits("temperature", params, logits)
    assert _nll(calibrated, y) < _nll(logits, y)
    assert (calibrated.argmax(1) == logits.argmax(1)).all()


@pytest.mark.parametrize("method", ["platt", "isotonic", "temperature"])
def test_binary_methods_reduce_ece(method):
    logits, y = overconfident(n=2000, scale=2.5, shift=1.0)  # too extreme and shifted
    params = fit_calibration(method, logits, y, "binary")
    before = expected_calibration_error(y, _softmax(logits)[:, 1])
    after = expected_calibration_error(y, _softmax(calibrate_logits(method, params, logits))[:, 1])
    assert after < before / 2


def test_platt_map_is_sigmoid_of_a_z_plus_b():
    logits, y = overconfident(scale=2.0, shift=0.5)
    params = fit_calibration("platt", logits, y, "binary")
    z = logits[:, 1] - logits[:, 0]
    want = 1 / (1 + np.exp(-(params["a"] * z + params["b"])))
    assert _softmax(calibrate_logits("platt", params, logits))[:, 1] == pytest.approx(want)
    assert params["a"] == pytest.approx(0.5, abs=0.15) and params["b"] == pytest.approx(-0.25, abs=0.3)
    manual = calibrate_logits("platt", {"a": 2.0, "b": -1.0}, np.array([[0.0, 1.0]]))
    assert manual.tolist() == [[0.5, 1.5]]


def test_isotonic_knots_and_map():
    logits, y = overconfident(scale=2.0)
    params = fit_calibration("isotonic", logits, y, "binary")
    x, v = np.array(params["x"]), np.array(params["y"])
    assert (np.diff(x) > 0).all() and (np.diff(v) >= 0).all() and v.min() >= 0 and v.max() <= 1
    q = _softmax(calibrate_logits("isotonic", params, logits))[:, 1]
    assert q == pytest.approx(np.clip(np.interp(_softmax(logits)[:, 1], x, v), 1e-6, 1 - 1e-6))
    far = calibrate_logits("isotonic", params, np.array([[0.0, 50.0], [50.0, 0.0]]))  # beyond the knots: clipped
    assert np.isfinite(far).all()


def test_too_little_validation_returns_none():
    logits = np.array([[0.0, 1.0], [1.0, 0.0], [0.0, 2.0]])
    assert fit_calibration("platt", logits, [1, 0, 1], "binary") is None  # one negative
    assert fit_calibration("temperature", logits, [1, 1, 1], "binary") is None
    assert fit_calibration("none", logits, [1, 1, 1], "binary") == {}
    assert calibrate_logits("none", {}, logits) is not None


def test_calibration_summary():
    logits, y = overconfident(scale=2.5)
    prob = _softmax(logits)
    summary = calibration_summary(y, prob, "binary")
    assert set(summary) == {"ece", "brier", "cal_slope", "cal_intercept"}
    assert summary["cal_slope"] < 0.6 and summary["ece"] == pytest.approx(expected_calibration_error(y, prob[:, 1]))
    flipped = calibration_summary(y, prob, "binary", positive=0)
    assert flipped["cal_slope"] == pytest.approx(summary["cal_slope"])
    assert flipped["cal_intercept"] == pytest.approx(-summary["cal_intercept"])
    multi_logits, multi_y = overconfident(c=3)
    assert set(calibration_summary(multi_y, _softmax(multi_logits), "multiclass")) == {"ece", "brier"}


def test_selection_key_prefers_a_model_that_decides_on_auc_ties():
    y = np.array([0, 0, 0, 1, 1, 1, 1, 1])
    q = np.array([0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9])
    ranked_all_positive = 0.5 + q / 10  # the same ranking (AUC 1) but every decision is positive
    good, degenerate = (selection_key(y, np.stack([1 - s, s], axis=1), "binary") for s in (q, ranked_all_positive))
    assert good[0] == degenerate[0] == 1.0
    assert good > degenerate and degenerate[1] == 0.5
    assert not any(np.isnan(good + degenerate))


def test_selection_key_breaks_remaining_ties_by_log_loss():
    from sklearn.metrics import log_loss

    y = np.array([0, 1, 0, 1])
    mild, extreme = np.array([0.2, 0.4, 0.6, 0.8]), np.array([0.01, 0.3, 0.7, 0.99])  # same ranks and decisions
    keys = [selection_key(y, np.stack([1 - q, q], axis=1), "binary") for q in (mild, extreme)]
    assert keys[0][:2] == keys[1][:2] == (0.75, 0.5)
    assert [k[2] for k in keys] == pytest.approx([-log_loss(y, mild), -log_loss(y, extreme)])
    assert (keys[0] > keys[1]) == (log_loss(y, mild) < log_loss(y, extreme))
    rng = np.random.default_rng(0)
    multi = selection_key(rng.integers(0, 3, 30), rng.dirichlet(np.ones(3), 30), "multiclass")
    multilabel = selection_key(rng.integers(0, 2, (30, 2)), rng.random((30, 2)), "multilabel")
    assert all(np.isfinite(multi + multilabel))
    empty = selection_key(np.zeros(0, int), np.zeros((0, 2)), "binary")
    assert empty == (-np.inf, 0.0, -np.inf)
    one_class = selection_key(np.ones(3, int), np.full((3, 2), 0.5), "binary")
    assert not any(np.isnan(one_class))
