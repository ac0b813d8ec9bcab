"""`medtransfer export`: ONNX and TorchScript files that reproduce a run's probabilities (checked on its test
split with onnxruntime / a reloaded TorchScript module), carry the run's classes and operating point, and
document their input well enough to be fed from outside medtransfer."""

from __future__ import annotations

import hashlib
import json
import sys

import numpy as np
import pytest
import torch

import medtransfer as mt
from medtransfer import api
from medtransfer.data.tabular import MISSING, heart_frame
from medtransfer.errors import MedTransferError
from medtransfer.models import export_formats
from medtransfer.models.checkpoint import load_checkpoint, save_checkpoint

from conftest import DATA_ROOT, needs_medmnist

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def heart_run(tmp_path_factory):
    """A calibrated tabular run with a threshold chosen on validation (both must survive the export)."""
    out = tmp_path_factory.mktemp("runs") / "heart"
    mt.transfer("heart:hungary", "full", source="heart:cleveland", budget=20, out=out, progress=False, n_boot=10,
                calibrate="temperature", threshold="youden")
    return out


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    """A 2D run (timm ResNet-10t) whose preprocess resizes 28 -> 32 px and normalises inside the graph. BreastMNIST:
    its whole test split (156 images) is checked in seconds."""
    if not (DATA_ROOT / "breastmnist.npz").is_file():
        pytest.skip("breastmnist.npz not found")
    out = tmp_path_factory.mktemp("runs") / "breast"
    mt.transfer("medmnist:breastmnist", "scratch", budget=40, data_root=DATA_ROOT, epochs=1, image_size=32,
                backbone="resnet10t", out=out, progress=False, n_boot=10)
    return out


@pytest.fixture(scope="module")
def volume_run(tmp_path_factory):
    """A MONAI 3D ResNet-10 run folder on AdrenalMNIST3D. Built directly rather than trained: a 3D transfer
    evaluates ~400 volumes at 28^3 (two minutes on two shared CPU cores); its BatchNorm statistics are set
    from real training volumes, so the eval-mode graph is a real one."""
    from medtransfer.data import load_dataset
    from medtransfer.models.backbones import create_model, default_spec, describe

    if not (DATA_ROOT / "adrenalmnist3d.npz").is_file():
        pytest.skip("adrenalmnist3d.npz not found")
    torch.manual_seed(0)
    dataset = load_dataset("medmnist:adrenalmnist3d", data_root=DATA_ROOT)
    model = create_model(describe("monai:resnet10", "image3d", 1), default_spec("image3d", 1), 2)
    with torch.no_grad():
        model.train()(dataset.train.x[:16])  # running BatchNorm statistics from real volumes
    out = tmp_path_factory.mktemp("runs") / "adrenal"
    save_checkpoint(out, model, "binary", dataset.classes, None, {"data": "medmnist:adrenalmnist3d"},
                    data_shape=list(dataset.train.x.shape[1:]),
                    extra={"operating_point": {"rule": "0.3", "threshold": 0.3, "positive": dataset.classes[1]}})
    (out / "config.json").write_text(json.dumps({"data": "medmnist:adrenalmnist3d", "data_root": str(DATA_ROOT)}))
    return out


def check_sidecar(result, run, fmt: str) -> dict:
    record = json.loads(result.sidecar.read_text())
    assert result.sidecar.name == result.path.name + ".json"
    assert record["file"]["sha256"] == hashlib.sha256(result.path.read_bytes()).hexdigest()
    assert record["file"]["format"] == fmt and record["parity"]["split"] == "test"
    assert record["parity"]["max_abs_diff"] == result.max_abs_diff < 1e-4
    weights = hashlib.sha256((run / "model.safetensors").read_bytes()).hexdigest()
    assert record["model"]["version"] == f"{run.name}@{weights[:12]}"
    return record


def embedded(result) -> dict:
    if result.format == "onnx":
        flat = export_formats.read_onnx_metadata(result.path)
        description = json.loads(flat["medtransfer"])
        assert flat["task"] == description["task"] and json.loads(flat["classes"]) == description["classes"]
        assert flat["model_version"] == description["model"]["version"]
        if description["operating_point"]["threshold"] is not None:
            assert float(flat["threshold"]) == description["operating_point"]["threshold"]
            assert flat["positive_class"] == description["operating_point"]["positive_class"]
        return description
    return export_formats.read_torchscript_metadata(result.path)


def run_file(result, x: torch.Tensor) -> np.ndarray:
    return (export_formats.run_onnx if result.format == "onnx" else export_formats.run_torchscript)(result.path, x)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_tabular_export_matches_the_run_and_documents_the_encoding(heart_run, tmp_path, fmt):
    result = api.export(heart_run, fmt, tmp_path / f"heart.{fmt}")
    record = check_sidecar(result, heart_run, fmt)
    assert result.n_checked == record["parity"]["n"] == 147  # the whole Hungary test split
    meta = json.loads((heart_run / "model.json").read_text())
    point = record["operating_point"]
    assert point["threshold"] == pytest.approx(meta["operating_point"]["threshold"]) and point["rule"] == "youden"
    assert point["positive_class"] == "disease" and record["classes"] == ["no disease", "disease"]
    assert "calibration (temperature, fitted on validation)" in record["output"]["in_graph"]
    assert embedded(result) == {k: v for k, v in record.items() if k not in ("file", "parity")}
    # the file and `medtransfer serve` name the same model the same way
    assert record["model"]["version"] == mt.create_app(heart_run, token="t" * 16).state.served.version

    # the documented encoding, implemented from the sidecar alone, feeds the file to mt.predict's numbers
    rows = heart_frame().query("dataset == 'Hungary'").drop(columns=["dataset", "disease"]).head(25)
    x = encode_by_recipe(rows, record["encoding"])
    assert x.shape[1] == record["input"]["shape"][1]
    expected = mt.predict(heart_run, rows)[[f"prob_{c}" for c in record["classes"]]].to_numpy()
    np.testing.assert_allclose(run_file(result, torch.from_numpy(x)), expected, atol=1e-5)


def encode_by_recipe(rows, encoding: dict) -> np.ndarray:
    """The sidecar's recipe, written without medtransfer's encoder."""
    import pandas as pd

    columns = []
    for col, stats in encoding["numeric"].items():
        values = pd.to_numeric(rows[col], errors="coerce").fillna(stats["impute"]).to_numpy(float)
        columns.append((values - stats["mean"]) / stats["std"])
    for col, levels in encoding["categorical"].items():
        text = [encoding["missing_level"] if pd.isna(v) else str(v) for v in rows[col]]
        text = [t if t in levels else encoding["missing_level"] for t in text]
        columns += [np.array([t == level for t in text], float) for level in levels]
    assert encoding["missing_level"] == MISSING
    return np.stack(columns, axis=1).astype(np.float32)


@needs_medmnist
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_image_export_has_preprocessing_inside_and_a_free_batch_axis(image_run, tmp_path, fmt):
    result = api.export(image_run, fmt, tmp_path / f"breast.{fmt}")
    record = check_sidecar(result, image_run, fmt)
    assert result.n_checked == 156  # the whole BreastMNIST test split
    assert record["input"]["shape"] == ["batch", 1, 28, 28] and record["input"]["range"] == [0.0, 1.0]
    assert record["input"]["decoding"]["size"] == [28, 28]
    assert any("resize to 32x32" in step for step in record["input"]["in_graph"])
    assert embedded(result)["operating_point"] == record["operating_point"]
    model, _ = load_checkpoint(image_run)
    x = torch.rand(3, 1, 28, 28)  # a batch size the file was not traced with
    from medtransfer.models.inference import predict_proba
    np.testing.assert_allclose(run_file(result, x), predict_proba(model, x, "binary"), atol=1e-5)


@needs_medmnist
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_3d_export_matches_the_model(volume_run, tmp_path, fmt):
    result = api.export(volume_run, fmt, tmp_path / f"adrenal.{fmt}", examples=6)
    record = check_sidecar(result, volume_run, fmt)
    assert result.n_checked == 6 and record["input"]["shape"] == ["batch", 1, 28, 28, 28]
    assert record["input"]["name"] == "volume"
    assert embedded(result)["operating_point"]["threshold"] == 0.3


def test_failed_parity_keeps_the_old_file_and_leaves_no_partial(heart_run, tmp_path, monkeypatch):
    out = tmp_path / "heart.onnx"
    first = api.export(heart_run, "onnx", out)
    before = out.read_bytes(), first.sidecar.read_text()
    monkeypatch.setattr(export_formats, "run_onnx", lambda path, x: np.full((len(x), 2), 0.5, np.float32))
    with pytest.raises(MedTransferError, match=r"does not reproduce .*max \|Δp\|"):
        api.export(heart_run, "onnx", out, overwrite=True)
    assert (out.read_bytes(), first.sidecar.read_text()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["heart.onnx", "heart.onnx.json"]


def cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    from medtransfer.cli import main

    monkeypatch.setattr(sys, "argv", ["medtransfer", *map(str, args)])
    with pytest.raises(SystemExit) as ended:
        main()
    out, err = capsys.readouterr()
    return ended.value.code, out, err


def test_cli_exports_and_prints_parity(heart_run, tmp_path, monkeypatch, capsys):
    out = tmp_path / "heart.pt"
    monkeypatch.setattr(sys, "argv", ["medtransfer", "export", str(heart_run), "--format", "torchscript", "--out",
                                      str(out)])
    from medtransfer.cli import main
    main()
    printed = capsys.readouterr().out
    assert "parity with the run on 147 test examples of heart:hungary: max |Δp| = " in printed
    assert "'disease' when probabilities[:, 1] >= " in printed and out.is_file()


@pytest.mark.parametrize("case", ["exists", "format", "not a run", "folder", "no folder"])
def test_cli_bad_inputs_are_one_line_and_exit_2(heart_run, tmp_path, monkeypatch, capsys, case):
    existing = tmp_path / "model.onnx"
    existing.write_text("keep me")
    out = {"exists": existing, "folder": tmp_path, "no folder": tmp_path / "nowhere" / "m.onnx"}.get(
        case, tmp_path / "new.onnx")
    run = tmp_path if case == "not a run" else heart_run
    fmt = "tflite" if case == "format" else "onnx"
    code, _, err = cli(monkeypatch, capsys, "export", run, "--format", fmt, "--out", out)
    expected = {"exists": "already exists; pass --overwrite", "format": "unknown export format 'tflite'; choose onnx "
                "or torchscript", "not a run": "is not a medtransfer run", "folder": "is a folder; give a file path",
                "no folder": "is not a folder; create it"}[case]
    assert code == 2 and err.startswith("error: ") and expected in err and err.count("\n") == 1
    assert existing.read_text() == "keep me" and not (tmp_path / "new.onnx").exists()


def test_text_runs_are_refused_in_one_line(tmp_path):
    """Text encoders crop each batch to its longest text (a data-dependent shape): refused, nothing written."""
    pytest.importorskip("transformers")
    from test_text import notes

    run = tmp_path / "run"
    mt.transfer(f"text-csv:{notes(tmp_path, 40)}", "tfidf-lr", text="note", target="dx", out=run, progress=False,
                n_boot=0)
    with pytest.raises(MedTransferError, match="is a text model, which export does not support yet"):
        api.export(run, "onnx", tmp_path / "notes.onnx")
    assert not (tmp_path / "notes.onnx").exists()
