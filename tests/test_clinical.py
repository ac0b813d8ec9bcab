"""Clinical evaluation end to end (issue 13): the positive class, the operating point chosen on validation
and applied to test, predict and evaluate; calibration inside the model; class imbalance options; ids in
every predictions file; the one-class warning; external validation of a whole site; the model card."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import medtransfer as mt
from medtransfer.data.base import Split, TaskDataset
from medtransfer.data.positive import looks_negative, positive_class
from medtransfer.errors import MedTransferError
from medtransfer.evaluation.calibration import calibrate_logits
from medtransfer.models.calibration import Calibration
from medtransfer.models.checkpoint import load_checkpoint
from medtransfer.training.loop import class_weights, epoch_order


@pytest.fixture(scope="module")
def screening_run(tmp_path_factory):
    """Cleveland -> Hungary, 20 labels, a screening operating point (sens=0.90), Platt-calibrated."""
    out = tmp_path_factory.mktemp("runs") / "screening"
    return mt.transfer("heart:hungary", "head", "heart:cleveland", budget=20, out=out, threshold="sens=0.90",
                       calibrate="platt", progress=False, n_boot=50)


# ----------------------------------------------------------------------------- positive class


def _binary(classes, declared=None):
    x = torch.zeros(4, 2)
    split = Split(x, torch.tensor([0, 1, 0, 1]))
    info = {"positive": declared} if declared else {}
    return TaskDataset("t", "tabular", "binary", classes, split, split, split, info=info)


@pytest.mark.parametrize("classes, positive", [
    (["cancer", "healthy"], "cancer"), (["normal", "pneumonia"], "pneumonia"),
    (["malignant", "normal, benign"], "malignant"), (["no disease", "disease"], "disease"),
    (["abnormal", "normal"], "abnormal"), (["0", "1"], "1"),
])
def test_the_positive_class_is_the_one_opposite_a_negative_name(classes, positive):
    chosen = positive_class(_binary(classes))
    assert chosen.name == positive and chosen.warning is None


def test_positive_class_order_of_rules_and_refusals():
    assert positive_class(_binary(["a", "b"], declared="a")).name == "a"  # the dataset's declaration
    assert positive_class(_binary(["cancer", "healthy"]), "healthy").name == "healthy"  # --positive wins
    default = positive_class(_binary(["cat", "dog"]))
    assert default.name == "dog" and "--positive" in default.warning
    with pytest.raises(MedTransferError, match="not a class"):
        positive_class(_binary(["cat", "dog"]), "cow")
    assert not looks_negative("abnormal") and looks_negative("No finding")


# ----------------------------------------------------------------------------- the operating point in a run


def test_the_threshold_is_chosen_on_validation_and_stored_with_the_run(screening_run):
    run = screening_run
    point = run.metrics["operating_point"]
    assert point["rule"] == "sens=0.9" and point["chosen_on"] == "val" and point["positive"] == "disease"
    val = run.predictions[run.predictions["split"] == "val"]
    val_sens = (val.loc[val["label"] == 1, "prob_disease"] >= point["threshold"]).mean()
    assert val_sens >= 0.9  # reached on validation, where it was chosen
    meta = json.loads((run.out / "model.json").read_text())
    assert meta["operating_point"]["threshold"] == point["threshold"] and meta["positive"] == "disease"
    assert meta["calibration"]["method"] == "platt"
    test = run.predictions[run.predictions["split"] == "test"]
    decided = np.where(test["prob_disease"] >= point["threshold"], "disease", "no disease")
    assert (test["predicted"] == decided).all()
    sens = ((test["predicted"] == "disease") & (test["label"] == 1)).sum() / (test["label"] == 1).sum()
    assert run.metrics["test"]["sensitivity"]["value"] == pytest.approx(sens)
    assert test["id"].str.startswith("hungary:").all()  # the UCI id of every patient


def test_predict_and_evaluate_apply_the_stored_threshold_and_calibration(screening_run, tmp_path):
    run = screening_run
    threshold = run.metrics["operating_point"]["threshold"]
    frame = mt.predict(run.out, "heart:hungary")
    assert {"predicted", "positive_class", "threshold"} <= set(frame.columns)
    assert (frame["threshold"] == threshold).all() and (frame["positive_class"] == "disease").all()
    assert (frame["predicted"] == np.where(frame["prob_disease"] >= threshold, "disease", "no disease")).all()
    test = run.predictions[run.predictions["split"] == "test"]
    np.testing.assert_allclose(frame["prob_disease"], test["prob_disease"], atol=1e-6)  # calibrated, as in the run
    again = mt.evaluate(run.out, n_boot=0)
    assert again["sensitivity"]["value"] == pytest.approx(run.metrics["test"]["sensitivity"]["value"])
    assert again["operating_point"]["threshold"] == threshold


def test_evaluate_split_all_scores_every_patient_of_an_external_site(screening_run, tmp_path):
    metrics = mt.evaluate(screening_run.out, data="heart:va", split="all", n_boot=0,
                          predictions=tmp_path / "va.csv")
    assert metrics["counts"]["n"] == 200 and sum(metrics["counts"]["per_class"].values()) == 200
    frame = pd.read_csv(tmp_path / "va.csv")
    assert len(frame) == 200 and frame["id"].str.startswith("va:").all() and frame["id"].is_unique


def test_the_run_folder_holds_a_model_card(screening_run):
    card = (screening_run.out / "model_card.md").read_text()
    assert "disease" in card and "sens=0.9" in card and "platt" in card
    threshold = screening_run.metrics["operating_point"]["threshold"]
    assert f"{threshold:.3f}" in card or f"{threshold:.4f}" in card


def test_a_run_that_decides_one_class_for_everyone_is_warned_about(tmp_path):
    run = mt.transfer("heart:hungary", "target-only", budget=20, threshold=0.999, save=False, progress=False,
                      n_boot=0)
    assert run.metrics["predicted_counts"]["disease"] == 0
    assert any("every test example is predicted 'no disease'" in w for w in run.warnings)


# ----------------------------------------------------------------------------- calibration inside the model


@pytest.mark.parametrize("method, params", [
    ("temperature", {"temperature": 2.5}), ("platt", {"a": 0.6, "b": -0.4}),
    ("isotonic", {"x": [0.1, 0.4, 0.8], "y": [0.05, 0.3, 0.9]}),
])
def test_the_calibration_module_matches_the_numpy_reference(method, params):
    logits = np.random.default_rng(0).normal(0, 2, size=(64, 2)).astype(np.float32)
    got = Calibration.from_params(method, params, 2)(torch.from_numpy(logits)).numpy()
    want = calibrate_logits(method, params, logits)
    p_got = torch.softmax(torch.from_numpy(got), 1).numpy()
    p_want = torch.softmax(torch.from_numpy(np.asarray(want, np.float32)), 1).numpy()
    np.testing.assert_allclose(p_got, p_want, atol=1e-5)


def test_a_calibrated_checkpoint_loads_with_its_calibration(screening_run):
    model, meta = load_checkpoint(screening_run.out)
    assert model.calibration is not None and model.calibration.method == "platt"
    copy = mt.transfer("heart:hungary", "head", str(screening_run.out), budget=20, save=False, progress=False,
                       n_boot=0)  # a calibrated run as a source: its calibration is not carried on
    assert copy.model.calibration is None and "calibration" not in copy.metrics


# ----------------------------------------------------------------------------- class imbalance


def test_balanced_class_weights_and_sampler():
    y = torch.tensor([0] * 90 + [1] * 10)
    weights = class_weights(y, "binary", "balanced")
    assert weights.tolist() == pytest.approx([100 / (2 * 90), 100 / (2 * 10)])
    assert class_weights(y, "binary", "none") is None
    drawn = epoch_order(y, 4000, "balanced", torch.Generator().manual_seed(0))
    assert abs(float((y[drawn] == 1).float().mean()) - 0.5) < 0.05  # each class equally likely
    plain = epoch_order(y, 100, "none", torch.Generator().manual_seed(0))
    assert sorted(plain.tolist()) == list(range(100))  # one shuffled pass


def test_imbalance_options_are_recorded_and_change_the_model():
    runs = {(cw, sampler): mt.transfer("heart:hungary", "scratch", budget=40, class_weight=cw, sampler=sampler,
                                       epochs=5, save=False, progress=False, n_boot=0)
            for cw, sampler in (("none", "none"), ("balanced", "none"), ("none", "balanced"))}
    assert runs["balanced", "none"].config["train"]["class_weight"] == "balanced"
    assert runs["none", "balanced"].config["train"]["sampler"] == "balanced"
    probs = [r.predictions["prob_disease"].to_numpy() for r in runs.values()]
    assert not np.allclose(probs[0], probs[1]) and not np.allclose(probs[0], probs[2])


# ----------------------------------------------------------------------------- identifiers


def test_an_id_column_is_kept_in_predictions_and_predict_uses_it(tmp_path):
    rng = np.random.default_rng(1)
    n = 120
    y = rng.integers(0, 2, n)
    frame = pd.DataFrame({"patient": [f"P{i:03d}" for i in range(n)], "age": rng.normal(50, 9, n) + 6 * y,
                          "bp": rng.normal(130, 10, n), "y": y})
    frame.to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(MedTransferError, match="--id"):
        mt.transfer(f"csv:{tmp_path / 't.csv'}", "target-only", target="y", save=False, progress=False)
    run = mt.transfer(f"csv:{tmp_path / 't.csv'}", "target-only", target="y", id="patient", out=tmp_path / "run",
                      progress=False, n_boot=0)
    assert run.predictions["id"].str.startswith("P").all()
    assert not any("patient" in f for f in run.model.spec.features)
    frame.head(5).drop(columns="y").to_csv(tmp_path / "new.csv", index=False)
    predicted = mt.predict(run.out, tmp_path / "new.csv")
    assert list(predicted["patient"]) == ["P000", "P001", "P002", "P003", "P004"]


def test_a_folder_with_only_test_images_evaluates_a_run(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("val", 4), ("test", 4)):
        for label, level in (("a", 40), ("b", 210)):
            folder = tmp_path / "full" / split / label
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = np.clip(rng.normal(level, 20, (12, 12)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    run = mt.transfer(f"folder:{tmp_path / 'full'}", "scratch", backbone="test_resnet", image_size=16, epochs=2,
                      out=tmp_path / "run", progress=False, n_boot=0)
    external = tmp_path / "external" / "test" / "b"  # another hospital's images, one class only
    external.parent.mkdir(parents=True)
    (tmp_path / "full" / "test" / "b").rename(external)
    metrics = mt.evaluate(run.out, data=f"folder:{tmp_path / 'external'}", n_boot=0,
                          predictions=tmp_path / "p.csv")
    assert metrics["counts"]["n"] == 4 and metrics["counts"]["per_class"] == {"a": 0, "b": 4}
    assert pd.read_csv(tmp_path / "p.csv")["id"].str.endswith(".png").all()
    with pytest.raises(MedTransferError, match="evaluate"):
        mt.transfer(f"folder:{tmp_path / 'external'}", "scratch", backbone="test_resnet", save=False, progress=False)


def test_the_demo_stars_the_strategy_chosen_on_validation_not_on_test(monkeypatch):
    from rich.console import Console

    from medtransfer import demo

    def fake_cell(data, strategy, source, budget, seeds, resplit=False, **options):
        test_best, val_best = strategy == "full", strategy == "head"
        return {"value": 0.9 if test_best else 0.7, "ci": [0.6, 0.95], "val": 0.95 if val_best else 0.8}

    monkeypatch.setattr(demo, "cell", fake_cell)
    blocks = demo.heart_site("hungary", 1, Console(file=open("/dev/null", "w")), {})
    rows = {row[0]: row[1:] for row in blocks[1].rows}
    assert all(value.endswith("*") for value in rows["head"])
    assert not any(value.endswith("*") for value in rows["full"])


def test_every_demo_heart_row_can_run_on_a_heart_site():
    """The demo's rows pass the checks a grid makes before training (a text baseline on a table failed
    `make demo` once): each strategy takes tables and its source."""
    from medtransfer.demo import HEART_SOURCE, heart_strategies
    from medtransfer.pipeline import TransferRequest
    from medtransfer.pipeline.preflight import preflight

    rows, cache = heart_strategies(), {}
    assert {"scratch", "target-only", "full"} <= set(rows) and "tfidf-lr" not in rows
    for strategy in rows:
        assert preflight(TransferRequest("heart:hungary", strategy, HEART_SOURCE, budget=10), cache) is None, strategy
