"""`explain` on tiny real runs: Grad-CAM on a PneumoniaMNIST subset (maps of the input's size, the
randomisation sanity check), tabular attributions named by the heart table's original columns, integrated
gradients on ECG200 beats shaped like the signals, and bad input as one line with exit code 2."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import medtransfer as mt
from medtransfer.api import explain
from medtransfer.data.tabular import TabularEncoder
from medtransfer.errors import MedTransferError
from medtransfer.models.attribution import rank_correlations, randomized_copy
from medtransfer.models.checkpoint import load_checkpoint

from conftest import DATA_ROOT, HAS_MEDMNIST

ECG = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "signals" / "ecg"


@pytest.fixture(scope="module")
def heart_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("heart") / "run"
    mt.transfer("heart:hungary", "full", source="heart:cleveland", budget=20, out=out, progress=False, n_boot=10)
    return out


@pytest.fixture(scope="module")
def heart_explained(heart_run, tmp_path_factory):
    return explain(heart_run, "heart:hungary", tmp_path_factory.mktemp("explain") / "heart", repeats=3)


@pytest.fixture(scope="module")
def image_run(tmp_path_factory) -> Path:
    """A scratch test_resnet on 96 real PneumoniaMNIST training images (a subset written as its own .npz)."""
    if not HAS_MEDMNIST:
        pytest.skip(f"MedMNIST files not found in {DATA_ROOT}")
    root = tmp_path_factory.mktemp("medmnist")
    real = np.load(DATA_ROOT / "pneumoniamnist.npz")
    sizes = {"train": 96, "val": 32, "test": 32}
    np.savez(root / "pneumoniamnist.npz", **{f"{s}_{k}": real[f"{s}_{k}"][:n] for s, n in sizes.items()
                                             for k in ("images", "labels")})
    out = root / "run"
    mt.transfer("medmnist:pneumoniamnist", "scratch", backbone="test_resnet", image_size=64, budget=96, epochs=4,
                lr=1e-2, batch_size=32, data_root=root, out=out, progress=False, n_boot=0)
    return out


def test_gradcam_maps_have_the_input_size_and_the_sanity_check_runs(image_run, tmp_path):
    root = image_run.parent
    result = explain(image_run, "medmnist:pneumoniamnist", tmp_path / "x", limit=6, data_root=root)
    maps = result.maps
    assert maps.shape == (6, 28, 28) and np.isfinite(maps).all()
    assert maps.min() >= 0 and maps.max() == 1 and sum(np.ptp(m) > 0 for m in maps) >= 4  # evidence somewhere
    assert not np.allclose(maps, result.random_maps, atol=1e-3)  # random weights give other maps
    sanity = result.sanity
    assert sanity["n"] == 6 and len(sanity["per_input"]) == 6 and sanity["layer"] == "backbone.layer4"
    assert sanity["n_defined"] == 6 and -1 <= sanity["min_rho"] <= sanity["mean_rho"] <= sanity["max_rho"] <= 1
    assert sanity["max_rho"] < 0.999  # not the same maps
    np.testing.assert_allclose(result.explained["sanity_rho"], [r["rho"] for r in sanity["per_input"]])
    # the probabilities are predict's, the explained class is the positive one (binary)
    predicted = mt.predict(image_run, "medmnist:pneumoniamnist", data_root=root).iloc[:6]
    np.testing.assert_allclose(result.explained["probability"], predicted["prob_pneumonia"], atol=1e-6)
    assert set(result.explained["explained_class"]) == {"pneumonia"}
    files = {p.name for p in (tmp_path / "x").iterdir()}
    assert {"predictions.csv", "explanations.csv", "sanity.json", "sanity.png", "maps.npz", "explanations.md",
            "explanations.html"} <= files
    assert all(name in files for name in result.explained["map_file"])
    assert "Sanity check" in (tmp_path / "x" / "explanations.md").read_text()


def test_gradcam_plus_plus_for_a_named_class_on_another_stage(image_run, tmp_path):
    result = explain(image_run, "medmnist:pneumoniamnist", tmp_path / "x", method="gradcam++", class_name="normal",
                     layer="layer3", limit=2, data_root=image_run.parent)
    assert result.maps.shape == (2, 28, 28) and result.layer == "backbone.layer3"
    assert set(result.explained["explained_class"]) == {"normal"}
    assert all(name.endswith("_gradcampp.png") for name in result.explained["map_file"])


def test_randomisation_resets_learned_weights_and_keeps_the_preprocess(image_run):
    model, _ = load_checkpoint(image_run)
    twin = randomized_copy(model, seed=1)
    trained, random = dict(model.named_parameters()), dict(twin.named_parameters())
    changed = [n for n in trained if not torch.equal(trained[n], random[n])]
    assert len(changed) > 0.9 * len(trained)
    assert torch.equal(model.preprocess.mean, twin.preprocess.mean)
    a = np.random.default_rng(0).random((3, 8, 8))
    assert np.allclose(rank_correlations(a, a), 1) and np.isnan(rank_correlations(a, np.zeros_like(a))).all()


def test_tabular_attributions_are_named_by_original_columns(heart_run, heart_explained):
    _, meta = load_checkpoint(heart_run)
    encoder = TabularEncoder.from_dict(meta["encoder"])
    columns = [*encoder.numeric, *encoder.categorical]
    result = heart_explained
    assert list(result.attributions.columns[1:]) == columns and {"cp", "thal", "age"} <= set(columns)
    assert not any("=" in c for c in result.attributions.columns)
    assert sorted(result.importance["column"]) == sorted(columns)  # one row per original column
    assert result.importance["mean_drop"].iloc[0] > 0.01  # the top column matters on the test split
    # integrated gradients are complete: differences of row sums are differences of probabilities
    total = result.attributions[columns].sum(axis=1).to_numpy()
    prob = result.explained["probability"].to_numpy()
    np.testing.assert_allclose(total - total[0], prob - prob[0], atol=0.02)
    predicted = mt.predict(heart_run, "heart:hungary")
    pd.testing.assert_frame_equal(result.predictions, predicted)
    saved = pd.read_csv(result.out / "importance.csv")
    assert list(saved["column"]) == list(result.importance["column"])
    assert (result.out / "importance.png").is_file() and (result.out / "attributions.csv").is_file()


@pytest.mark.skipif(not (ECG / "ECG200_TRAIN.tsv").is_file(), reason=f"ECG200 not found in {ECG}")
def test_signal_integrated_gradients_have_the_signal_shape(tmp_path):
    run = tmp_path / "ecg"
    mt.transfer(f"ucr:{ECG}/ECG200", "scratch", backbone="cnn1d:width=8", epochs=2, out=run, progress=False,
                n_boot=0)
    result = explain(run, f"ucr:{ECG}/ECG200", tmp_path / "x", limit=5)
    assert result.method == "ig"
    from medtransfer.data import load_dataset

    signals = load_dataset(f"ucr:{ECG}/ECG200").test.x[:5]
    assert result.maps.shape == tuple(signals.shape) and np.isfinite(result.maps).all()
    assert np.abs(result.maps).max() > 0
    assert all((tmp_path / "x" / name).is_file() for name in result.explained["map_file"])


def run_cli(monkeypatch, capsys, *args) -> tuple[int, str]:
    """`medtransfer <args>` in this process (as `python -m medtransfer.cli` runs it): (exit code, stderr)."""
    from medtransfer import cli

    monkeypatch.setattr(sys, "argv", ["medtransfer", *map(str, args)])
    handler = signal.getsignal(signal.SIGINT)
    code = 0
    try:
        cli.main()
    except SystemExit as exc:
        code = exc.code
    finally:
        signal.signal(signal.SIGINT, handler)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("case, fragment", [
    ("method", "method 'gradcam' does not fit a tabular model; choose ig (--method)"),
    ("class", "unknown class 'sick' (--class); the run's classes: no disease, disease"),
    ("out", "already exists; choose another --out or pass --overwrite"),
    ("empty", "has a header but no data rows"),
    ("limit", "--limit"),
])
def test_bad_input_is_one_line_and_exit_2(heart_run, heart_explained, tmp_path, monkeypatch, capsys, case, fragment):
    empty = tmp_path / "empty.csv"
    pd.DataFrame(columns=["age", "sex"]).to_csv(empty, index=False)
    out = heart_explained.out if case == "out" else tmp_path / "x"
    before = sorted(p.name for p in heart_explained.out.iterdir())
    extra = {"method": ["--method", "gradcam"], "class": ["--class", "sick"], "limit": ["--limit", "0"]}.get(case, [])
    code, err = run_cli(monkeypatch, capsys, "explain", heart_run, empty if case == "empty" else "heart:hungary",
                        "--out", out, *extra)
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and fragment in err, err
    assert sorted(p.name for p in heart_explained.out.iterdir()) == before
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())


def test_cli_explains_into_a_folder_and_overwrites_when_asked(heart_run, tmp_path, monkeypatch, capsys):
    out = tmp_path / "x"
    code, _ = run_cli(monkeypatch, capsys, "explain", heart_run, "heart:hungary", "--out", out, "--limit", "4")
    assert code == 0
    assert len(pd.read_csv(out / "explanations.csv")) == 4
    code, _ = run_cli(monkeypatch, capsys, "explain", heart_run, "heart:hungary", "--out", out, "--limit", "3",
                      "--overwrite")
    assert len(pd.read_csv(out / "explanations.csv")) == 3
    with pytest.raises(MedTransferError, match="already exists"):
        explain(heart_run, "heart:hungary", out)
