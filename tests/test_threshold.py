"""Operating points: rules parsed and refused in one line, chosen on validation, applied by `decisions`."""

import math

import numpy as np
import pytest

from medtransfer.errors import MedTransferError
from medtransfer.evaluation import (OperatingPoint, check_rule_syntax, choose_operating_point, compute_metrics,
                                    decisions, parse_rule)


@pytest.mark.parametrize("rule, task, want", [
    (None, "binary", "0.5"),
    (None, "multiclass", "argmax"),
    (None, "multilabel", "0.5"),
    (0.3, "binary", "0.3"),
    ("0.30", "binary", "0.3"),
    (" YOUDEN ", "binary", "youden"),
    ("sens=0.90", "binary", "sens=0.9"),
    ("spec=0.95", "binary", "spec=0.95"),
    ("argmax", "multiclass", "argmax"),
    ("prior", "multiclass", "prior"),
    ("0.2", "multilabel", "0.2"),
])
def test_parse_rule_accepts(rule, task, want):
    assert parse_rule(rule, task) == want


@pytest.mark.parametrize("rule, task, message", [
    ("sens=1.5", "binary", "threshold 'sens=1.5' is not valid: sens=S needs S between 0 and 1 (e.g. sens=0.90) "
                           "(option --threshold)"),
    ("spec=0", "binary", "spec=S needs S between 0 and 1"),
    ("sens=", "binary", "sens=S needs S between 0 and 1"),
    ("abc", "binary", "binary accepts a number between 0 and 1 (e.g. 0.3), youden, sens=S or spec=S"),
    (1.0, "binary", "strictly between 0 and 1"),
    (-0.1, "binary", "strictly between 0 and 1"),
    ("nan", "binary", "binary accepts"),
    (True, "binary", "binary accepts"),
    ("youden", "multiclass", "not valid for a multiclass task: multiclass accepts argmax or prior"),
    ("0.5", "multiclass", "multiclass accepts argmax or prior"),
    ("prior", "binary", "not valid for a binary task"),
    ("argmax", "binary", "not valid for a binary task"),
    ("youden", "multilabel", "multilabel accepts a number"),
])
def test_parse_rule_refuses_in_one_line(rule, task, message):
    with pytest.raises(MedTransferError) as err:
        parse_rule(rule, task)
    text = str(err.value)
    assert message in text and "\n" not in text and text.endswith("(option --threshold)")


def test_check_rule_syntax_before_the_task_is_known():
    assert [check_rule_syntax(r) for r in (None, 0.3, "youden", "SENS=0.8", "prior", "argmax")] == [
        None, "0.3", "youden", "sens=0.8", "prior", "argmax"]
    with pytest.raises(MedTransferError, match="sens=S needs S between 0 and 1"):
        check_rule_syntax("sens=1.5")
    with pytest.raises(MedTransferError, match="strictly between 0 and 1"):
        check_rule_syntax(1.5)
    with pytest.raises(MedTransferError, match=r"'abc' is not valid: use a number .* argmax or prior \(multiclass\) "
                                               r"\(option --threshold\)$"):
        check_rule_syntax("abc")


def val_data(n_pos=40, n_neg=60, seed=0):
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(n_pos, int), np.zeros(n_neg, int)]
    q = np.clip(0.3 * y + 0.7 * rng.random(len(y)), 0, 1)
    return y, np.stack([1 - q, q], axis=1)


def rates(y, p, point):
    d = decisions(p, "binary", point)
    pos = y == point.positive
    return np.mean(d[pos] == point.positive), np.mean(d[~pos] != point.positive)


def test_a_number_is_the_threshold():
    y, p = val_data()
    point = choose_operating_point(0.3, y, p, "binary")
    assert (point.threshold, point.chosen_on, point.warnings, point.n_val) == (0.3, "fixed", [], 100)
    assert (point.n_val_positive, point.n_val_negative) == (40, 60)


@pytest.mark.parametrize("positive", [1, 0])
def test_sens_rule_reaches_the_sensitivity_midway_below_the_deciding_positive(positive):
    y, p = val_data()
    y = y if positive == 1 else 1 - y
    p = p if positive == 1 else p[:, ::-1]
    point = choose_operating_point("sens=0.9", y, p, "binary", positive=positive)
    sens, _ = rates(y, p, point)
    assert sens >= 0.9 and point.chosen_on == "val" and point.positive == positive
    scores = np.sort(p[y == positive, positive])[::-1]
    kth = scores[math.ceil(0.9 * 40) - 1]  # the 36th highest positive score decides
    below = p[:, positive][p[:, positive] < kth].max()  # the next lower validation score, of either class
    assert point.threshold == pytest.approx((kth + below) / 2)
    higher = OperatingPoint("x", float(np.nextafter(kth, 1)), None, positive, 0, None, None)
    assert rates(y, p, higher)[0] < 0.9  # a threshold above the deciding positive loses it
    v = compute_metrics(y, p, "binary", n_boot=0, threshold=point.threshold, positive=positive)
    assert v["sensitivity"]["value"] >= 0.9


def test_spec_rule_is_the_smallest_threshold_reaching_the_specificity():
    y, p = val_data()
    point = choose_operating_point("spec=0.8", y, p, "binary")
    assert rates(y, p, point)[1] >= 0.8
    kth = np.sort(p[y == 0, 1])[math.ceil(0.8 * (y == 0).sum()) - 1]  # the deciding negative
    above = p[:, 1][p[:, 1] > kth].min()
    assert point.threshold == pytest.approx((kth + above) / 2)
    lower = OperatingPoint("x", float(kth), None, 1, 0, None, None)
    assert rates(y, p, lower)[1] < 0.8  # at the deciding negative's own score it counts as positive


def test_youden_on_a_hand_example():
    y = np.array([0, 0, 0, 1, 0, 1, 1, 1])
    q = np.array([0.1, 0.2, 0.3, 0.35, 0.4, 0.6, 0.7, 0.8])
    # t = 0.5 (midpoint of 0.4 and 0.6): sens 3/4, spec 4/4 -> J = 0.75, the best; t = 0.325: sens 1, spec 3/4 -> 0.75
    # as well; the tie goes to the threshold closest to 0.5
    point = choose_operating_point("youden", y, q, "binary")
    assert point.threshold == pytest.approx(0.5)
    y2 = np.array([0, 0, 0, 1, 0, 1, 1])
    q2 = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 0.8])
    # t = 0.35: sens 3/3, spec 3/4 -> J = 0.75, better than 0.6 (2/3 + 1 - 1) and every other midpoint
    assert choose_operating_point("youden", y2, q2, "binary").threshold == pytest.approx(0.35)


@pytest.mark.parametrize("rule", ["youden", "sens=0.9", "spec=0.9"])
@pytest.mark.parametrize("y", [np.zeros(12, int), np.ones(12, int), np.zeros(0, int)])
def test_single_class_or_empty_validation_falls_back_to_half_with_a_warning(rule, y):
    p = np.full((len(y), 2), 0.5)
    point = choose_operating_point(rule, y, p, "binary")
    assert point.threshold == 0.5 and point.chosen_on == "fixed" and point.rule == rule
    assert len(point.warnings) == 1 and "falls back to 0.5" in point.warnings[0]
    assert f"{int(y.sum())} positive and {int((y == 0).sum())} negative" in point.warnings[0]


def test_few_validation_examples_warn_with_the_counts():
    y, p = val_data(n_pos=4, n_neg=16)
    point = choose_operating_point("sens=0.75", y, p, "binary")
    assert point.warnings == ["the threshold rests on 4 positive and 16 negative validation examples; "
                              "it may move a lot on new data"]
    assert choose_operating_point("sens=0.75", *val_data(), "binary").warnings == []
    assert choose_operating_point(0.4, y, p, "binary").warnings == []  # a fixed number rests on nothing


def test_prior_rule_weights_the_argmax_by_the_inverse_training_prior():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(3), size=50)
    y = rng.integers(0, 3, 50)
    point = choose_operating_point("prior", y, p, "multiclass", train_prior=[60, 30, 10])
    assert point.class_weights == pytest.approx(np.array([1 / 0.6, 1 / 0.3, 1 / 0.1]) / np.mean([1 / 0.6, 1 / 0.3,
                                                                                                 1 / 0.1]))
    assert np.mean(point.class_weights) == pytest.approx(1)
    assert (point.threshold, point.positive, point.n_val, point.n_val_positive) == (None, None, 50, None)
    assert (decisions(p, "multiclass", point) == (p / np.array([0.6, 0.3, 0.1])).argmax(axis=1)).all()
    with pytest.raises(MedTransferError, match="needs the labelled training class distribution"):
        choose_operating_point("prior", y, p, "multiclass")
    plain = choose_operating_point(None, y, p, "multiclass")
    assert plain.rule == "argmax" and plain.class_weights is None
    assert (decisions(p, "multiclass", plain) == p.argmax(axis=1)).all()


def test_decisions_binary_and_multilabel():
    p = np.array([[0.8, 0.2], [0.6, 0.4], [0.3, 0.7]])
    at = lambda t, pos: decisions(p, "binary", OperatingPoint("x", t, None, pos, 0, None, None))
    assert at(0.5, 1).tolist() == [0, 0, 1]
    assert at(0.4, 1).tolist() == [0, 1, 1]  # >= threshold is positive
    assert at(0.7, 0).tolist() == [0, 1, 1]  # positive class 0: decided when p0 >= 0.7
    assert decisions(p[:, 1], "binary", OperatingPoint("x", 0.3, None, 1, 0, None, None)).tolist() == [0, 1, 1]
    ml = np.array([[0.1, 0.6], [0.5, 0.2]])
    point = choose_operating_point("0.3", np.zeros((2, 2), int), ml, "multilabel")
    assert decisions(ml, "multilabel", point).tolist() == [[0, 1], [1, 0]]


def test_operating_point_block_round_trips():
    y, p = val_data()
    point = choose_operating_point("sens=0.9", y, p, "binary", positive=0)
    block = point.to_dict(["disease", "healthy"])
    assert block == {"rule": "sens=0.9", "threshold": point.threshold, "positive": "disease", "chosen_on": "val",
                     "n_val": 100, "n_val_positive": 60, "n_val_negative": 40, "class_weights": None}
    back = OperatingPoint.from_dict(block, ["disease", "healthy"])
    assert back.to_dict(["disease", "healthy"]) == block and back.positive == 0
    with pytest.raises(MedTransferError, match="positive class 'disease' is not one of"):
        OperatingPoint.from_dict(block, ["a", "b"])
