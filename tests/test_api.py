"""End-to-end API checks on real data: the built-in heart sites and, when present, MedMNIST."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

import medtransfer as mt
from medtransfer.data.tabular import heart_frame
from medtransfer.errors import MedTransferError


@pytest.fixture(scope="module")
def heart_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "hungary-full"
    return mt.transfer("heart:hungary", "full", source="heart:cleveland", budget=20, seed=0, out=out,
                       progress=False)


def test_transfer_writes_a_complete_run_and_beats_chance(heart_run):
    out = heart_run.out
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "log.txt", "metrics.json", "model.json",
                                                     "model.safetensors", "model_card.md", "predictions.csv"]
    metrics = json.loads((out / "metrics.json").read_text())
    auc = metrics["test"]["auc"]
    assert auc["value"] > 0.75 and auc["ci"][0] < auc["value"] < auc["ci"][1]
    config = json.loads((out / "config.json").read_text())
    assert config["n_train_labels"] == 20 and config["strategy"] == "full"
    preds = pd.read_csv(out / "predictions.csv")
    assert set(preds.split) == {"val", "test"}
    assert np.allclose(preds[["prob_no disease", "prob_disease"]].sum(1), 1, atol=1e-5)


def test_same_seed_same_metrics():
    runs = [mt.transfer("heart:va", "full", source="heart:cleveland", budget=10, seed=3, save=False,
                        progress=False, n_boot=50) for _ in range(2)]
    assert runs[0].metrics["test"] == runs[1].metrics["test"]


def test_existing_run_is_never_overwritten_without_asking(heart_run):
    before = (heart_run.out / "metrics.json").read_text()
    with pytest.raises(MedTransferError, match="already exists"):
        mt.transfer("heart:hungary", "target-only", source="heart:cleveland", budget=20, out=heart_run.out,
                    progress=False)
    assert (heart_run.out / "metrics.json").read_text() == before


def test_overwrite_replaces_a_run(tmp_path):
    out = tmp_path / "run"
    mt.transfer("heart:va", "target-only", budget=10, out=out, progress=False, n_boot=10)
    mt.transfer("heart:va", "pooled", source="heart:cleveland", budget=10, out=out, overwrite=True,
                progress=False, n_boot=10)
    assert json.loads((out / "config.json").read_text())["strategy"] == "pooled"
    assert not any(p.name.endswith((".partial", ".old")) for p in tmp_path.iterdir())


def test_evaluate_reproduces_saved_metrics_and_moves_to_another_site(heart_run):
    saved = json.loads((heart_run.out / "metrics.json").read_text())["test"]["auc"]["value"]
    assert mt.evaluate(heart_run.out)["auc"]["value"] == pytest.approx(saved, abs=1e-6)
    other = mt.evaluate(heart_run.out, data="heart:va")
    assert 0.5 < other["auc"]["value"] <= 1


def test_predict_on_new_patients(heart_run, tmp_path):
    rows = heart_frame().drop(columns=["dataset", "disease"]).head(5)
    rows.to_csv(tmp_path / "patients.csv", index=False)
    frame = mt.predict(heart_run.out, str(tmp_path / "patients.csv"))
    assert len(frame) == 5 and set(frame.predicted) <= {"disease", "no disease"}
    assert np.allclose(frame[["prob_no disease", "prob_disease"]].sum(1), 1, atol=1e-5)


def test_a_run_is_a_source_for_the_next_transfer(heart_run):
    result = mt.transfer("heart:switzerland", "head", source=str(heart_run.out), budget=20, save=False,
                         progress=False, n_boot=0)
    assert result.config["source_description"].startswith("run ")
    assert result.metrics["test"]["auc"]["value"] > 0.5


def test_split_seed_redraws_the_target_split_and_evaluate_follows_it(tmp_path):
    run = mt.transfer("heart:switzerland", "target-only", budget=10, split_seed=3, out=tmp_path / "run",
                      progress=False, n_boot=20)
    assert run.config["split_seed"] == 3
    fixed = mt.transfer("heart:switzerland", "target-only", budget=10, save=False, progress=False, n_boot=0)
    assert not torch.equal(run.dataset.test.x, fixed.dataset.test.x)  # other patients held out
    saved = json.loads((run.out / "metrics.json").read_text())["test"]["auc"]["value"]
    assert mt.evaluate(run.out, n_boot=0)["auc"]["value"] == pytest.approx(saved, abs=1e-6)


def test_split_seed_is_refused_where_the_splits_are_fixed(medmnist_root):
    with pytest.raises(MedTransferError, match="comes with fixed splits, so --split-seed 2 cannot redraw them"):
        mt.transfer("medmnist:pneumoniamnist", "scratch", budget=10, split_seed=2, data_root=medmnist_root,
                    save=False, progress=False)


@pytest.mark.parametrize("kwargs, message", [
    (dict(data="heart:mars"), "unknown heart site"),
    (dict(data="heart:va", strategy="magic"), "unknown strategy"),
    (dict(data="heart:va", budget="lots"), "bad budget"),
    (dict(data="heart:va", strategy="source-only"), "needs --source"),
    (dict(data="heart:va", strategy="full"), "needs --source"),
])
def test_bad_input_is_one_clear_error(kwargs, message):
    kwargs = {"strategy": "target-only", **kwargs}
    with pytest.raises(MedTransferError, match=message):
        mt.transfer(kwargs.pop("data"), save=False, progress=False, **kwargs)


def test_imagenet_source_transfers_to_pneumonia(medmnist_root):
    """Real images, real ImageNet weights: a linear probe on 1% of the labels is far above chance."""
    result = mt.transfer("medmnist:pneumoniamnist", "linear-probe", source="imagenet:efficientnet_lite0",
                         budget="1%", data_root=medmnist_root, save=False, progress=False, n_boot=100)
    assert result.config["n_train_labels"] == 47
    assert result.metrics["test"]["auc"]["value"] > 0.8


def test_a_grey_source_is_adapted_to_an_rgb_target(medmnist_root, tmp_path):
    source = mt.transfer("medmnist:breastmnist", "scratch", budget=20, epochs=1, data_root=medmnist_root,
                         out=tmp_path / "gray", progress=False, n_boot=0)
    rgb = tmp_path / "rgb"
    for cls in ("a", "b"):
        (rgb / cls).mkdir(parents=True)
        for i in range(6):
            from PIL import Image
            Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(rgb / cls / f"{i}.png")
    run = mt.transfer(f"folder:{rgb}", "full", source=str(source.out), epochs=1, save=False, progress=False,
                      n_boot=0)
    assert "adapted from 1 to 3" in run.config["source_description"] and run.model.spec.channels == 3
