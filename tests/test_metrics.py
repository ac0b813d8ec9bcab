"""Metrics agree with scikit-learn and MedMNIST's evaluator; the bootstrap is deterministic and sane."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from medtransfer.evaluation import (auc_paired_difference, auc_paired_mean_ci, binary_auc, compute_metrics,
                                    expected_calibration_error)
from medtransfer.evaluation import metrics as M

MEDMNIST_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "medmnist"


def binary_data(n=200, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    q = np.clip(0.35 * y + 0.65 * rng.random(n), 0, 1)
    return y, np.stack([1 - q, q], axis=1)


def multiclass_data(n=300, c=4, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c)) + 1.5 * np.eye(c)[y]
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, p


def multilabel_data(n=300, k=3, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, k)) < 0.3).astype(int)
    p = np.clip(0.4 * y + 0.6 * rng.random((n, k)), 0, 1)
    return y, p


def values(res):
    return {k: v["value"] for k, v in res.items()}


def test_binary_point_values_match_sklearn():
    y, p = binary_data()
    v = values(compute_metrics(y, p, "binary", n_boot=0))
    pred = (p[:, 1] >= 0.5).astype(int)
    tn, fp, fn, tp = confusion_matrix(y, pred).ravel()
    assert set(v) == {"acc", "balanced_acc", "auc", "sensitivity", "specificity", "ppv", "npv", "f1", "brier", "ece",
                      "log_loss", "prevalence", "cal_slope", "cal_intercept"}
    assert v["acc"] == pytest.approx(accuracy_score(y, pred))
    assert v["balanced_acc"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert v["auc"] == pytest.approx(roc_auc_score(y, p[:, 1]))
    assert v["f1"] == pytest.approx(f1_score(y, pred))
    assert v["brier"] == pytest.approx(brier_score_loss(y, p[:, 1]))
    assert v["sensitivity"] == pytest.approx(recall_score(y, pred))
    assert v["specificity"] == pytest.approx(recall_score(y, pred, pos_label=0))
    assert v["ppv"] == pytest.approx(precision_score(y, pred))
    assert v["npv"] == pytest.approx(tn / (tn + fn))
    assert v["ece"] == pytest.approx(expected_calibration_error(y, p[:, 1]))


def test_multiclass_point_values_match_sklearn():
    y, p = multiclass_data()
    v = values(compute_metrics(y, p, "multiclass", n_boot=0))
    pred = p.argmax(axis=1)
    cm = confusion_matrix(y, pred)
    tn = cm.sum() - cm.sum(0) - cm.sum(1) + np.diag(cm)
    per_class = {f"{m}[{k}]" for m in ("sensitivity", "specificity", "ppv", "npv") for k in range(4)}
    assert set(v) == {"acc", "balanced_acc", "auc", "f1", "brier", "ece", "sensitivity", "specificity",
                      "log_loss"} | per_class
    assert v["acc"] == pytest.approx(accuracy_score(y, pred))
    assert v["balanced_acc"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert v["sensitivity"] == pytest.approx(recall_score(y, pred, average="macro"))
    assert v["specificity"] == pytest.approx(np.mean(tn / (tn + cm.sum(0) - np.diag(cm))))
    assert v["auc"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"))
    assert v["f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert v["brier"] == pytest.approx(brier_score_loss(y, p, labels=range(p.shape[1])))
    conf, correct = p.max(axis=1), (pred == y).astype(float)
    assert v["ece"] == pytest.approx(expected_calibration_error(correct, conf))


def test_multilabel_point_values_match_sklearn():
    y, p = multilabel_data()
    v = values(compute_metrics(y, p, "multilabel", n_boot=0))
    pred = (p >= 0.5).astype(int)
    assert set(v) == {"auc", "acc", "f1", "brier", "log_loss", "auc_0", "auc_1", "auc_2"}
    per_label = [roc_auc_score(y[:, k], p[:, k]) for k in range(3)]
    assert v["auc"] == pytest.approx(roc_auc_score(y, p, average="macro"))
    assert [v[f"auc_{k}"] for k in range(3)] == pytest.approx(per_label)
    assert v["acc"] == pytest.approx(np.mean([accuracy_score(y[:, k], pred[:, k]) for k in range(3)]))
    assert v["f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert v["brier"] == pytest.approx(np.mean([brier_score_loss(y[:, k], p[:, k]) for k in range(3)]))


@pytest.mark.parametrize(
    "task, medmnist_task, make",
    [
        ("binary", "binary-class", binary_data),
        ("multiclass", "multi-class", multiclass_data),
        ("multilabel", "multi-label, binary-class", multilabel_data),
    ],
)
def test_acc_auc_match_medmnist_evaluator(task, medmnist_task, make):
    from medmnist.evaluator import getACC, getAUC

    y, p = make()
    v = values(compute_metrics(y, p, task, n_boot=0))
    labels = y if task == "multilabel" else y[:, None]  # MedMNIST stores labels as (N, 1)
    assert v["acc"] == pytest.approx(getACC(labels, p, medmnist_task))
    assert v["auc"] == pytest.approx(getAUC(labels, p, medmnist_task))


def test_matches_official_medmnist_evaluator_on_real_labels():
    if not (MEDMNIST_ROOT / "pneumoniamnist.npz").exists():
        pytest.skip(f"pneumoniamnist.npz not found under {MEDMNIST_ROOT}")
    import medmnist

    evaluator = medmnist.Evaluator("pneumoniamnist", "test", root=str(MEDMNIST_ROOT))
    y = evaluator.labels[:, 0]
    rng = np.random.default_rng(0)
    q = np.clip(0.3 * y + 0.7 * rng.random(len(y)), 0, 1)
    p = np.stack([1 - q, q], axis=1)
    official = evaluator.evaluate(p)
    v = values(compute_metrics(evaluator.labels, p, "binary", n_boot=0))  # (N, 1) labels are accepted
    assert len(y) == 624
    assert v["acc"] == pytest.approx(official.ACC)
    assert v["auc"] == pytest.approx(official.AUC)


def test_ci_contains_value_is_deterministic_and_json_ready():
    y, p = binary_data()
    a = compute_metrics(y, p, "binary", n_boot=300, seed=3)
    assert a == compute_metrics(y, p, "binary", n_boot=300, seed=3)
    assert a != compute_metrics(y, p, "binary", n_boot=300, seed=4)
    for name, r in a.items():
        assert type(r["value"]) is float and all(type(c) is float for c in r["ci"])
        assert r["ci"][0] <= r["value"] <= r["ci"][1], name
    json.dumps(a)


def test_chunked_bootstrap_gives_identical_results(monkeypatch):
    y, p = multiclass_data(n=60, c=3)
    whole = compute_metrics(y, p, "multiclass", n_boot=100)
    monkeypatch.setattr(M, "_CHUNK", 60 * 7)  # 7 resamples per chunk
    chunked = compute_metrics(y, p, "multiclass", n_boot=100)
    flat = lambda res: [x for r in res.values() for x in [r["value"], *r["ci"]]]
    assert flat(chunked) == pytest.approx(flat(whole), rel=1e-12)  # same resamples; BLAS rounding may differ


def test_ci_narrows_as_n_grows():
    width = {}
    for n in (100, 2000):
        res = compute_metrics(*binary_data(n=n), "binary", n_boot=200)
        width[n] = {k: r["ci"][1] - r["ci"][0] for k, r in res.items()}
    for name in ("acc", "auc", "sensitivity", "brier"):
        assert width[2000][name] < width[100][name] / 2, name


def test_vectorised_auc_equals_sklearn_on_explicit_resamples():
    rng = np.random.default_rng(1)
    n = 80
    y = rng.integers(0, 2, n)
    score = np.round(0.3 * y + rng.random(n), 1)  # coarse scores: many ties
    idx = rng.integers(0, n, size=(5, n))
    w = np.stack([np.bincount(i, minlength=n) for i in idx]).astype(float)
    got = M._weighted_auc(w, y == 1, score)
    want = [roc_auc_score(y[i], score[i]) for i in idx]
    assert got == pytest.approx(want)


def test_undefined_metrics_are_nan_and_skipped():
    y = np.ones(20, dtype=int)
    q = np.linspace(0.1, 0.9, 20)
    res = compute_metrics(y, np.stack([1 - q, q], axis=1), "binary", n_boot=50)
    assert math.isnan(res["auc"]["value"]) and all(math.isnan(c) for c in res["auc"]["ci"])
    assert math.isnan(res["specificity"]["value"])
    assert res["sensitivity"]["value"] == pytest.approx(recall_score(y, q >= 0.5))
    assert math.isnan(binary_auc(y, q))
    # a rare positive: resamples without it are skipped for AUC, the rest still give a CI
    y2 = np.zeros(20, dtype=int)
    y2[-1] = 1
    auc = compute_metrics(y2, np.stack([1 - q, q], axis=1), "binary", n_boot=200)["auc"]
    assert auc["value"] == 1.0 and auc["ci"] == [1.0, 1.0]


def test_ece_zero_when_calibrated_and_hand_computed():
    # each bin's mean probability equals its fraction of positives
    y = np.array([1, 0, 0, 0, 1, 1, 1, 0])
    q = np.array([0.25] * 4 + [0.75] * 4)
    assert expected_calibration_error(y, q) == pytest.approx(0.0)
    # bin (0.1, 0.2]: 2 samples, |0.5 - 0.2| = 0.3; bin (0.8, 0.9]: 3 samples, |2/3 - 0.9|
    y = np.array([0, 1, 1, 1, 0])
    q = np.array([0.2, 0.2, 0.9, 0.9, 0.9])
    assert expected_calibration_error(y, q) == pytest.approx(2 / 5 * 0.3 + 3 / 5 * (0.9 - 2 / 3))


def test_binary_auc_matches_sklearn():
    y, p = binary_data()
    assert binary_auc(y, p[:, 1]) == pytest.approx(roc_auc_score(y, p[:, 1]))
    assert binary_auc(y, p) == pytest.approx(roc_auc_score(y, p[:, 1]))


def test_auc_paired_mean_ci():
    y, _ = binary_data(n=150)
    rng = np.random.default_rng(2)
    probs = [np.clip(0.3 * y + 0.7 * rng.random(len(y)), 0, 1) for _ in range(3)]
    probs[1] = np.stack([1 - probs[1], probs[1]], axis=1)  # (N, 2) and (N,) both accepted
    res = auc_paired_mean_ci(y, probs, n_boot=300, seed=0)
    per_model = [roc_auc_score(y, q if q.ndim == 1 else q[:, 1]) for q in probs]
    assert res["value"] == pytest.approx(np.mean(per_model))
    assert res["ci"][0] < res["value"] < res["ci"][1]
    assert res == auc_paired_mean_ci(y, probs, n_boot=300, seed=0)


def test_auc_mean_over_repeated_splits_resamples_each_split():
    rng = np.random.default_rng(3)
    ys = {0: rng.integers(0, 2, 80), 4: rng.integers(0, 2, 60)}  # two hold-out splits of different size
    probs = [np.clip(0.4 * ys[s] + 0.6 * rng.random(len(ys[s])), 0, 1) for s in (0, 0, 4)]
    split_of = [0, 0, 4]
    res = auc_paired_mean_ci(ys, probs, n_boot=300, seed=0, split_of=split_of)
    assert res["value"] == pytest.approx(np.mean([roc_auc_score(ys[s], p) for s, p in zip(split_of, probs)]))
    assert res["ci"][0] < res["value"] < res["ci"][1]
    # one split only: the same numbers as the shared-labels form
    shared = auc_paired_mean_ci(ys[0], probs[:2], n_boot=300)
    assert auc_paired_mean_ci(ys, probs[:2], n_boot=300, split_of=[0, 0]) == shared
    # the same models on the same splits are paired: a zero difference, p = 1
    same = auc_paired_difference(ys, probs, probs, n_boot=300, split_of_a=split_of, split_of_b=split_of)
    assert same["value"] == 0 and same["ci"] == [0.0, 0.0] and same["p"] == 1.0
    with pytest.raises(ValueError, match="split_of names 2 splits for 3 models"):
        auc_paired_mean_ci(ys, probs, split_of=[0, 4])


@pytest.mark.parametrize(
    "y, p, task, message",
    [
        ([0, 1], [[0.5, 0.5], [0.5, 0.5]], "regression", "Unknown task"),
        ([0, 1, 1], [[0.5, 0.5], [0.5, 0.5]], "binary", "shape"),
        ([0, 1], [[0.5, 0.5], [np.nan, 0.5]], "binary", "NaN"),
        ([0, 1], [[2.0, -1.0], [0.5, 0.5]], "binary", "logits"),
        ([0, 3], [[0.5, 0.5], [0.5, 0.5]], "binary", "class indices"),
        ([0, 1], [[0.2, 0.2, 0.2], [0.3, 0.3, 0.4]], "multiclass", "sum to 1"),
        ([[0, 1]], [[0.5, 0.5, 0.5]], "multilabel", "shape"),
    ],
)
def test_bad_inputs_raise_clear_errors(y, p, task, message):
    with pytest.raises(ValueError, match=message):
        compute_metrics(np.array(y), np.array(p), task, n_boot=0)


def test_binary_n600_bootstrap_is_fast():
    import time

    y, p = binary_data(n=600)
    compute_metrics(y, p, "binary", n_boot=20)  # warm-up
    start = time.perf_counter()
    compute_metrics(y, p, "binary", n_boot=1000)
    assert time.perf_counter() - start < 1.0  # typically well under 0.3 s; loose bound for busy CI machines


def test_a_metric_registered_from_a_test_module_gets_a_bootstrap_ci():
    from medtransfer.evaluation import METRICS, register_metric

    @register_metric("positive_rate_test_only", tasks=("binary",))
    def positive_rate(c):  # share of the resample predicted positive, from the shared confusion counts
        return (c.tp + c.fp) / c.n

    try:
        y, p = binary_data(n=150)
        res = compute_metrics(y, p, "binary", n_boot=200, seed=1)
        got = res["positive_rate_test_only"]
        assert got["value"] == pytest.approx(np.mean(p[:, 1] >= 0.5))
        assert got["ci"][0] < got["value"] < got["ci"][1]
        assert list(res)[:10] == ["acc", "balanced_acc", "auc", "sensitivity", "specificity", "ppv", "npv", "f1",
                                  "brier", "ece"]  # built-ins keep their order; the new one comes after
        assert list(res)[-1] == "positive_rate_test_only"
        assert "positive_rate_test_only" not in compute_metrics(*multiclass_data(n=60), "multiclass", n_boot=0)
        assert METRICS.lookup("positive_rate_test_only").tasks == ("binary",)
    finally:
        METRICS.pop("positive_rate_test_only")
    assert "positive_rate_test_only" not in compute_metrics(y, p, "binary", n_boot=0)


# ----------------------------------------------------------------------------- positive class, weights, calibration


def test_positive_zero_reports_the_other_class():
    y, p = binary_data()
    flipped = values(compute_metrics(y, p, "binary", n_boot=0, threshold=0.4, positive=0))
    pred0 = p[:, 0] >= 0.4  # class 0 decided when its own probability reaches the threshold
    assert flipped["sensitivity"] == pytest.approx(recall_score(y == 0, pred0))
    assert flipped["specificity"] == pytest.approx(recall_score(y == 1, ~pred0))
    assert flipped["ppv"] == pytest.approx(precision_score(y == 0, pred0))
    assert flipped["prevalence"] == pytest.approx(np.mean(y == 0))
    assert flipped["auc"] == pytest.approx(roc_auc_score(y == 0, p[:, 0]))
    usual = values(compute_metrics(y, p, "binary", n_boot=0, threshold=0.6))  # 0.6 on p1 = 0.4 on p0 (no ties)
    assert flipped["sensitivity"] == pytest.approx(usual["specificity"])
    assert flipped["npv"] == pytest.approx(usual["ppv"])
    assert values(compute_metrics(y, p, "binary", n_boot=0, positive=None, threshold=None)) == values(
        compute_metrics(y, p, "binary", n_boot=0))  # an operating point of another task carries None


def test_class_weights_move_the_multiclass_decision():
    y, p = multiclass_data(c=3)
    weights = np.array([0.2, 1.0, 3.0])
    pred = (p * weights).argmax(axis=1)
    assert (pred != p.argmax(axis=1)).any()
    v = values(compute_metrics(y, p, "multiclass", n_boot=0, class_weights=weights))
    assert v["acc"] == pytest.approx(accuracy_score(y, pred))
    assert v["balanced_acc"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert v["f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert v["sensitivity[2]"] == pytest.approx(recall_score(y == 2, pred == 2))
    plain = values(compute_metrics(y, p, "multiclass", n_boot=0))
    assert v["auc"] == plain["auc"] and v["log_loss"] == plain["log_loss"]  # scores, not decisions
    assert v["acc"] != plain["acc"]
    assert values(compute_metrics(y, p, "multiclass", n_boot=0, class_weights=[1, 1, 1])) == plain


def test_per_class_one_vs_rest_rates_are_named_after_the_classes():
    y, p = multiclass_data(c=3)
    classes = ["normal", "benign", "malignant"]
    res = compute_metrics(y, p, "multiclass", n_boot=50, classes=classes)
    pred = p.argmax(axis=1)
    for k, name in enumerate(classes):
        truth, decided = y == k, pred == k
        assert res[f"sensitivity[{name}]"]["value"] == pytest.approx(recall_score(truth, decided))
        assert res[f"specificity[{name}]"]["value"] == pytest.approx(recall_score(~truth, ~decided))
        assert res[f"ppv[{name}]"]["value"] == pytest.approx(precision_score(truth, decided))
        assert res[f"npv[{name}]"]["value"] == pytest.approx(precision_score(~truth, ~decided))
        lo, hi = res[f"sensitivity[{name}]"]["ci"]
        assert lo <= res[f"sensitivity[{name}]"]["value"] <= hi
    assert "sensitivity[0]" in compute_metrics(y, p, "multiclass", n_boot=0)  # index as text without names


def test_log_loss_matches_sklearn():
    from sklearn.metrics import log_loss

    y, p = binary_data()
    p = np.clip(p, 1e-3, 1 - 1e-3)  # away from the clip, where conventions differ
    assert compute_metrics(y, p, "binary", n_boot=0)["log_loss"]["value"] == pytest.approx(log_loss(y, p[:, 1]))
    y, p = multiclass_data()
    assert compute_metrics(y, p, "multiclass", n_boot=0)["log_loss"]["value"] == pytest.approx(log_loss(y, p))
    y, p = multilabel_data()
    p = np.clip(p, 1e-3, 1 - 1e-3)
    want = np.mean([log_loss(y[:, k], p[:, k]) for k in range(3)])
    assert compute_metrics(y, p, "multilabel", n_boot=0)["log_loss"]["value"] == pytest.approx(want)
    # a confident mistake costs -log(1e-7), not infinity
    v = compute_metrics([1, 0], [[1.0, 0.0], [1.0, 0.0]], "binary", n_boot=0)["log_loss"]["value"]
    assert v == pytest.approx(-np.log(1e-7) / 2, rel=1e-6)


def simulated(n, stretch, shift=0.0, seed=0):
    """Labels drawn from sigmoid(z); the model reports sigmoid(stretch * z + shift)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(int)
    q = 1 / (1 + np.exp(-(stretch * z + shift)))
    return y, np.stack([1 - q, q], axis=1)


def test_calibration_slope_and_intercept():
    from sklearn.linear_model import LogisticRegression

    y, p = simulated(4000, 1.0)
    res = compute_metrics(y, p, "binary", n_boot=200)
    assert res["cal_slope"]["value"] == pytest.approx(1, abs=0.1)
    assert res["cal_intercept"]["value"] == pytest.approx(0, abs=0.1)
    assert res["cal_slope"]["ci"][0] < 1 < res["cal_slope"]["ci"][1]
    y, p = simulated(4000, 2.5)  # overconfident: predictions too extreme
    v = values(compute_metrics(y, p, "binary", n_boot=0))
    assert v["cal_slope"] < 0.6
    z = np.log(p[:, 1] / p[:, 0])
    assert v["cal_slope"] == pytest.approx(LogisticRegression(C=1e12, tol=1e-10).fit(z[:, None], y).coef_[0, 0],
                                           rel=1e-4)
    y, p = simulated(4000, 1.0, shift=-1.0)  # risks too low: positive calibration-in-the-large
    v = values(compute_metrics(y, p, "binary", n_boot=0))
    z = np.log(p[:, 1] / p[:, 0])
    assert v["cal_intercept"] > 0.5
    assert np.mean(1 / (1 + np.exp(-(v["cal_intercept"] + z)))) == pytest.approx(np.mean(y))  # its score equation


def test_calibration_slope_undefined_for_one_class_or_separated_classes():
    q = np.linspace(0.1, 0.9, 20)
    p = np.stack([1 - q, q], axis=1)
    one_class = values(compute_metrics(np.ones(20, dtype=int), p, "binary", n_boot=0))
    assert math.isnan(one_class["cal_slope"]) and math.isnan(one_class["cal_intercept"])
    separated = compute_metrics((q > 0.5).astype(int), p, "binary", n_boot=100)
    assert math.isnan(separated["cal_slope"]["value"]) and math.isnan(separated["cal_slope"]["ci"][0])
    assert math.isfinite(separated["cal_intercept"]["value"])  # an intercept alone always fits both classes


@pytest.mark.parametrize("kwargs, task, message", [
    ({"positive": 2}, "binary", "positive must be the index 0 or 1"),
    ({"class_weights": [1, 2]}, "binary", "class_weights weight the multiclass argmax"),
    ({"class_weights": [1, 2]}, "multiclass", "class_weights must be 4"),
    ({"class_weights": [1, np.nan, 1, 1]}, "multiclass", "finite"),
    ({"classes": ["a", "b"]}, "multiclass", "2 class names for 4"),
])
def test_bad_decision_options_raise(kwargs, task, message):
    y, p = binary_data(n=20) if task == "binary" else multiclass_data(n=20)
    with pytest.raises(ValueError, match=message):
        compute_metrics(y, p, task, n_boot=0, **kwargs)
