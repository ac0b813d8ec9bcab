"""Issue 12: no silent wrong number. Each test here failed on the code before the fix it guards.

Stale source cache, colour images read as grey at predict, overflowing feature statistics and
non-finite values, strict JSON, options that were ignored or silently replaced, a run that ends on its
untrained weights, an output folder found unwritable only after training, and lower-layer errors
that named only an exception.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import medtransfer as mt
from medtransfer.errors import MedTransferError
from medtransfer import runs


def _strict_json(path: Path):
    """Parse as strict JSON: NaN / Infinity are not JSON."""
    def refuse(token):
        raise ValueError(f"{path} holds {token}, which is not JSON")
    return json.loads(Path(path).read_text(), parse_constant=refuse)


def _table(path: Path, n: int = 120, seed: int = 0, signal: bool = True) -> Path:
    """A small table: label `y` from `a` (signal) or independent of it (noise)."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=n)
    y = (a > 0) if signal else rng.random(n) > 0.5
    frame = pd.DataFrame({"a": a, "b": rng.normal(size=n), "y": np.where(y, "pos", "neg")})
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("MEDTRANSFER_CACHE", str(folder))
    return folder / "sources"


def _rgb_folder(root: Path, size: int = 16, seed: int = 0) -> Path:
    """Red vs green squares of (almost) the same brightness: only colour tells them apart."""
    rng = np.random.default_rng(seed)
    colours = {"green": (0, 130, 0), "red": (255, 0, 0)}  # luma 76.3 and 76.2
    for split, n in (("train", 10), ("val", 4), ("test", 6)):
        for cls, colour in colours.items():
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                a = np.array(colour, float)[None, None] * rng.uniform(0.8, 1.0) + rng.normal(0, 8, (size, size, 3))
                Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(root / split / cls / f"{i}.png")
    return root


# ----------------------------------------------------------------------------- 1. stale source cache


def test_source_cache_follows_the_file_content_not_its_name(tmp_path, cache, monkeypatch):
    target = _table(tmp_path / "target.csv", seed=9)
    kwargs = dict(source="csv:hospA.csv", target="y", epochs=1, source_epochs=2, budget=20, save=False,
                  progress=False, n_boot=0)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _table(tmp_path / "a" / "hospA.csv", seed=1, signal=True)
    _table(tmp_path / "b" / "hospA.csv", seed=2, signal=False)

    monkeypatch.chdir(tmp_path / "a")
    first = mt.transfer(f"csv:{target}", "full", **kwargs)
    monkeypatch.chdir(tmp_path / "b")  # another hospA.csv, same spec string
    second = mt.transfer(f"csv:{target}", "full", **kwargs)
    assert first.config["source_description"] != second.config["source_description"]
    assert len([p for p in cache.iterdir() if p.is_dir()]) == 2

    _table(tmp_path / "b" / "hospA.csv", seed=3, signal=True)  # the same file, edited
    third = mt.transfer(f"csv:{target}", "full", **kwargs)
    assert third.config["source_description"] not in (first.config["source_description"],
                                                       second.config["source_description"])
    # the explicit default backbone is the same model: one cache entry, no second pretraining
    again = mt.transfer(f"csv:{target}", "full", backbone="mlp", **kwargs)
    assert again.config["source_description"] == third.config["source_description"]
    assert len([p for p in cache.iterdir() if p.is_dir()]) == 3


def test_source_cache_key_covers_folder_content_and_resolves_defaults(tmp_path):
    from medtransfer.pipeline.request import DataOptions, TransferRequest
    from medtransfer.pipeline.source import source_cache_key

    root = _rgb_folder(tmp_path / "imgs")
    spec = f"folder:{root}"

    def key(**kw):
        request = TransferRequest("folder:x", "full", source=spec, **kw)
        return source_cache_key(request, DataOptions().load(spec))

    plain = key()
    assert key(backbone="resnet18") == plain  # the default 2D backbone, named or not
    assert key(image_size=64) == plain  # the default image size, named or not
    assert key(source_epochs=15) == plain  # the default epochs for 2D images
    assert key(backbone="resnet34") != plain
    assert key(image_size=32) != plain
    assert key(source_epochs=3) != plain
    image = root / "train" / "red" / "0.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(image)  # one image replaced
    os.utime(image, ns=(1, 1))
    assert key() != plain


def test_signal_standardisation_does_not_depend_on_the_thread_count():
    """A grid's worker (1 torch thread) and its parent (2) must compute one standardisation: the std is
    part of the source's cache key (and of every model's input spec). Torch's reduction differed in the
    last bit here, and ECG5000 was pretrained twice in one grid."""
    from medtransfer.models.backbones import channel_statistics

    x = torch.randn(3000, 1, 140, generator=torch.Generator().manual_seed(0)) * 3 + 1  # differed with torch
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = channel_statistics(x, 1)
        torch.set_num_threads(2)
        two = channel_statistics(x, 1)
    finally:
        torch.set_num_threads(threads)
    assert one == two
    flat = x.double().reshape(1, -1)
    np.testing.assert_allclose(one[0], flat.mean(1).numpy(), rtol=1e-12)
    np.testing.assert_allclose(one[1], flat.std(1).numpy(), rtol=1e-12)  # the same (unbiased) estimate as before


def test_dataset_fingerprints_change_with_the_content(tmp_path, medmnist_root):
    from medtransfer.data import load_dataset

    csv = _table(tmp_path / "t.csv")
    before = load_dataset(f"csv:{csv}", target="y").info["fingerprint"]
    _table(csv, seed=5)
    assert load_dataset(f"csv:{csv}", target="y").info["fingerprint"] != before
    heart = load_dataset("heart:va").info["fingerprint"]
    assert heart != load_dataset("heart:hungary").info["fingerprint"]
    plain = load_dataset("medmnist:breastmnist", data_root=medmnist_root)
    shifted = load_dataset("shift:gamma:1.5:medmnist:breastmnist", data_root=medmnist_root)
    assert plain.info["fingerprint"] and shifted.info["fingerprint"] != plain.info["fingerprint"]
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copyfile(Path(medmnist_root) / "breastmnist.npz", copy / "breastmnist.npz")
    os.utime(copy / "breastmnist.npz", ns=(1, 1))  # a re-mounted or copied file: same bytes, another mtime
    assert load_dataset("medmnist:breastmnist", data_root=copy).info["fingerprint"] == plain.info["fingerprint"]


# ----------------------------------------------------------------------------- 2. predict decodes as training


def test_predict_on_rgb_image_files_matches_the_run(tmp_path):
    root = _rgb_folder(tmp_path / "rgb")
    run = mt.transfer(f"folder:{root}", "scratch", image_size=16, epochs=1, out=tmp_path / "run", progress=False,
                      n_boot=0)
    saved = pd.read_csv(run.out / "predictions.csv")
    saved = saved[saved.split == "test"].reset_index(drop=True)
    predicted = mt.predict(run.out, str(root / "test"))  # test/green/*, test/red/*: the test split's order
    assert len(predicted) == len(saved)
    cols = ["prob_green", "prob_red"]
    np.testing.assert_allclose(predicted[cols].to_numpy(), saved[cols].to_numpy(), atol=1e-5)
    one = mt.predict(run.out, str(root / "test" / "red" / "0.png"))
    np.testing.assert_allclose(one[cols].to_numpy()[0], predicted[cols].to_numpy()[6], atol=1e-5)


def test_predict_decodes_grey_training_images_as_grey_for_an_rgb_model(tmp_path):
    """A 3-channel source on grey images: a colour file is read as the grey training images were."""
    from medtransfer.pipeline.reuse import read_inputs

    meta = {"input": {"modality": "image2d", "channels": 3, "size": 16}, "data_shape": [1, 12, 12]}
    file = tmp_path / "c.png"
    Image.fromarray(np.full((12, 12, 3), (255, 0, 0), np.uint8)).save(file)
    x, ids, id_name = read_inputs(meta, str(file))
    assert x.shape == (1, 1, 12, 12) and ids == [str(file)] and id_name == "input"
    assert torch.allclose(x, torch.full_like(x, 0.299), atol=1e-3)


# ----------------------------------------------------------------------------- 3. non-finite values, strict JSON


@pytest.mark.parametrize("values, message", [
    (lambda rng, n: rng.normal(size=n) * 1e200, "a"),  # finite values whose spread overflows
    (lambda rng, n: np.where(np.arange(n) == 3, np.inf, rng.normal(size=n)), "a"),
])
def test_non_finite_feature_statistics_are_refused_naming_column_and_file(tmp_path, values, message):
    rng = np.random.default_rng(0)
    path = tmp_path / "huge.csv"
    y = np.arange(80) % 2
    pd.DataFrame({"a": values(rng, 80), "b": rng.normal(size=80), "y": y}).to_csv(path, index=False)
    with pytest.raises(MedTransferError, match=r"column 'a'.*huge\.csv|huge\.csv.*column 'a'"):
        mt.transfer(f"csv:{path}", "target-only", target="y", save=False, progress=False)


def test_infinite_labels_are_refused(tmp_path):
    path = tmp_path / "labels.csv"
    rng = np.random.default_rng(0)
    y = np.where(np.arange(90) % 3 == 0, np.inf, np.arange(90) % 2)
    pd.DataFrame({"a": rng.normal(size=90), "y": y}).to_csv(path, index=False)
    with pytest.raises(MedTransferError, match=r"labels\.csv.*'y'.*inf"):
        mt.transfer(f"csv:{path}", "target-only", target="y", save=False, progress=False)


def test_predict_refuses_non_finite_values_in_new_rows(tmp_path):
    run = mt.transfer("heart:va", "target-only", budget=20, out=tmp_path / "run", progress=False, n_boot=0)
    from medtransfer.data.tabular import heart_frame
    rows = heart_frame().head(3).drop(columns=["dataset", "disease"])
    for value in (float("inf"), 1e301):  # infinite, or finite but overflowing once standardised
        rows.loc[1, "chol"] = value
        rows.to_csv(tmp_path / "new.csv", index=False)
        with pytest.raises(MedTransferError, match=r"'chol'.*new\.csv|new\.csv.*'chol'"):
            mt.predict(run.out, str(tmp_path / "new.csv"))


def test_json_is_strict_and_undefined_metrics_round_trip(tmp_path):
    runs.write_json(tmp_path / "m.json", {"test": {"auc": {"value": float("nan"), "ci": [np.float64("nan"), 0.5]}},
                                     "note": None})
    assert _strict_json(tmp_path / "m.json") == {"test": {"auc": {"value": None, "ci": [None, 0.5]}}, "note": None}
    back = runs.read_json(tmp_path / "m.json")
    assert np.isnan(back["test"]["auc"]["value"]) and np.isnan(back["test"]["auc"]["ci"][0])
    assert back["note"] is None
    with pytest.raises(ValueError):
        runs.write_json(tmp_path / "bad.json", {"x": float("inf")})


def test_run_folder_json_is_strict_with_undefined_metrics(tmp_path):
    run = mt.transfer("heart:switzerland", "target-only", budget=10, out=tmp_path / "run", progress=False, n_boot=0)
    for name in ("metrics.json", "config.json", "model.json"):
        _strict_json(run.out / name)
    assert _strict_json(run.out / "metrics.json")["test"]["auc"]["ci"] == [None, None]  # n_boot=0: no CI
    history = [line for line in (run.out / "log.txt").read_text().splitlines()[1:]
               if not line.startswith(("test: ", "warning: "))]
    for line in history:
        json.loads(line, parse_constant=lambda t: pytest.fail(f"log.txt holds {t}"))
    assert mt.evaluate(run.out, n_boot=0)["auc"]["value"] == pytest.approx(run.metrics["test"]["auc"]["value"])


# ----------------------------------------------------------------------------- 4. options refused, not replaced


@pytest.mark.parametrize("kwargs, message", [
    (dict(epochs=0), "epochs"),
    (dict(epochs=-3), "epochs"),
    (dict(batch_size=0), "batch.size"),
    (dict(lr=0), "lr"),
    (dict(patience=0), "patience"),
    (dict(source_epochs=0, source="heart:cleveland"), "source.epochs"),
    (dict(target="age"), "target"),
    (dict(group="sex"), "group"),
    (dict(seed="abc"), "seed"),
])
def test_bad_options_are_refused_up_front(kwargs, message):
    with pytest.raises(MedTransferError, match=message):
        mt.transfer("heart:va", kwargs.pop("strategy", "scratch"), save=False, progress=False, **kwargs)


@pytest.mark.parametrize("size", [0, 4, -1])
def test_image_size_below_8_is_refused(size):
    with pytest.raises(MedTransferError, match="image.size"):
        mt.transfer("folder:/nonexistent", "scratch", image_size=size, save=False, progress=False)


def test_target_column_used_by_a_csv_source_is_accepted(tmp_path):
    from medtransfer.data.tabular import heart_frame
    frame = heart_frame()
    frame[frame.pop("dataset") == "Cleveland"].to_csv(tmp_path / "cleveland.csv", index=False)
    run = mt.transfer("heart:va", "full", source=f"csv:{tmp_path / 'cleveland.csv'}", target="disease",
                      budget=10, epochs=1, source_epochs=2, save=False, progress=False, n_boot=0)
    assert run.metrics["test"]["auc"]["value"] > 0.5


def test_unknown_category_at_predict_is_named_in_a_warning(tmp_path, caplog):
    from medtransfer.data.tabular import heart_frame
    run = mt.transfer("heart:va", "target-only", budget=20, out=tmp_path / "run", progress=False, n_boot=0)
    rows = heart_frame().head(4).drop(columns=["dataset", "disease"])
    rows = rows.astype({"sex": object, "age": object})
    rows.loc[2, "sex"] = "Alien"
    rows.loc[1, "age"] = "old"  # not a number
    rows.to_csv(tmp_path / "new.csv", index=False)
    with caplog.at_level("WARNING", logger="medtransfer"):
        frame = mt.predict(run.out, str(tmp_path / "new.csv"))
    warnings = frame.attrs["warnings"]
    assert any("sex" in w and "Alien" in w for w in warnings)
    assert any("age" in w and "old" in w for w in warnings)
    assert "Alien" in caplog.text
    assert len(frame) == 4  # a warning, not a refusal: every row still gets its prediction


# ----------------------------------------------------------------------------- 5. a run that ends on epoch 0


def test_a_run_that_keeps_its_untrained_weights_says_so(tmp_path):
    # lr 1e-30 leaves every float32 weight unchanged: no epoch beats epoch 0
    run = mt.transfer("heart:va", "scratch", lr=1e-30, epochs=2, out=tmp_path / "run", progress=False, n_boot=0)
    assert run.metrics["fit"]["best_epoch"] == 0
    assert run.warnings and "epoch 0" in run.warnings[0]
    assert _strict_json(run.out / "metrics.json")["warnings"] == run.warnings
    assert "epoch 0" in (run.out / "log.txt").read_text()


def test_a_run_that_trains_has_no_warning():
    run = mt.transfer("heart:va", "target-only", budget=20, save=False, progress=False, n_boot=0)
    assert run.warnings == []


# ----------------------------------------------------------------------------- 6. output checked first


def test_unwritable_output_is_refused_before_any_work(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(MedTransferError, match=str(blocker)):
        runs.check_writable(blocker / "run", overwrite=False)
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        try:
            with pytest.raises(MedTransferError, match="ro"):
                mt.transfer("heart:va", "scratch", out=ro / "run", progress=False)
        finally:
            ro.chmod(0o755)


def test_unwritable_output_is_refused_by_transfer_before_loading(tmp_path, monkeypatch):
    import importlib
    transfer_module = importlib.import_module("medtransfer.pipeline.transfer")  # the module, not the function
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setattr(transfer_module, "load_source_data", lambda *a: pytest.fail("loaded data"))
    with pytest.raises(MedTransferError, match="file"):
        mt.transfer("heart:va", "scratch", out=blocker / "run", progress=False)


# ----------------------------------------------------------------------------- 7. clear lower-layer errors


@pytest.fixture(scope="module")
def heart_run(tmp_path_factory):
    return mt.transfer("heart:va", "target-only", budget=20, out=tmp_path_factory.mktemp("r") / "run",
                       progress=False, n_boot=0)


def test_truncated_weights_are_named(heart_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(heart_run.out, run)
    weights = run / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:20])
    with pytest.raises(MedTransferError, match=r"model\.safetensors.*(truncated|corrupt)"):
        mt.evaluate(run)
    with pytest.raises(MedTransferError, match=r"model\.safetensors"):
        mt.transfer("heart:hungary", "full", source=str(run), budget=20, save=False, progress=False)


@pytest.mark.parametrize("key", ["architecture", "input", "classes", "task", "num_outputs"])
def test_model_json_without_a_required_key_names_it(heart_run, tmp_path, key):
    run = tmp_path / "run"
    shutil.copytree(heart_run.out, run)
    meta = json.loads((run / "model.json").read_text())
    del meta[key]
    (run / "model.json").write_text(json.dumps(meta))
    with pytest.raises(MedTransferError, match=rf"model\.json.*'{key}'"):
        mt.evaluate(run)


def test_model_json_that_is_not_json_is_named(heart_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(heart_run.out, run)
    (run / "model.json").write_text("{not json")
    with pytest.raises(MedTransferError, match=r"model\.json"):
        mt.predict(run, "heart:va")


def test_one_class_folder_is_refused_before_training(tmp_path, monkeypatch):
    import importlib
    transfer_module = importlib.import_module("medtransfer.pipeline.transfer")
    root = tmp_path / "one"
    (root / "cats").mkdir(parents=True)
    for i in range(10):
        Image.fromarray(np.full((8, 8), 20 * i, np.uint8)).save(root / "cats" / f"{i}.png")
    monkeypatch.setattr(transfer_module, "run_transfer", lambda *a, **k: pytest.fail("trained"))
    with pytest.raises(MedTransferError, match=r"one.*one class.*cats|cats.*one"):
        mt.transfer(f"folder:{root}", "scratch", save=False, progress=False)


def test_header_only_csv_is_refused(tmp_path):
    (tmp_path / "empty.csv").write_text("a,b,y\n")
    with pytest.raises(MedTransferError, match=r"empty\.csv.*no (data )?rows"):
        mt.transfer(f"csv:{tmp_path / 'empty.csv'}", "target-only", target="y", save=False, progress=False)


def test_header_only_csv_at_predict_is_refused(heart_run, tmp_path):
    (tmp_path / "empty.csv").write_text("age,sex\n")
    with pytest.raises(MedTransferError, match=r"empty\.csv.*no (data )?rows"):
        mt.predict(heart_run.out, str(tmp_path / "empty.csv"))


def test_missing_label_column_lists_the_columns(tmp_path):
    path = _table(tmp_path / "t.csv")
    with pytest.raises(MedTransferError, match=rf"--target.*'label'.*{tmp_path}/t\.csv.*a, b, y"):
        mt.transfer(f"csv:{path}", "target-only", target="label", save=False, progress=False)


def test_labels_outside_the_classes_are_refused_at_load(tmp_path, medmnist_root):
    """A MedMNIST file whose labels do not fit its flag's classes (e.g. another dataset under its name)."""
    from medtransfer.data import load_dataset
    src = np.load(medmnist_root / "breastmnist.npz")
    arrays = {k: src[k] for k in src.files}
    arrays["train_labels"] = arrays["train_labels"].copy()
    arrays["train_labels"][0] = 3
    np.savez(tmp_path / "breastmnist.npz", **arrays)
    with pytest.raises(MedTransferError, match=r"breastmnist\.npz.*label.*3"):
        load_dataset("medmnist:breastmnist", data_root=tmp_path)


# ----------------------------------------------------------------------------- the same classes of bug, elsewhere


def test_training_that_diverges_keeps_the_best_finite_epoch_and_says_so():
    from medtransfer.data.base import Split
    from medtransfer.models.backbones import create_model, default_spec, describe
    from medtransfer.pipeline.run import fit_warnings
    from medtransfer.training.loop import TrainConfig, fit

    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    y = (x[:, 0] > 0).long()
    torch.manual_seed(0)
    model = create_model(describe("mlp:8", "tabular", 0, 4), default_spec("tabular", 0, list("abcd")), 2)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    config = TrainConfig(epochs=3, batch_size=16, lr=1e-2, patience=10, augment=False, accelerator="cpu",
                         progress=False)
    nan_loss = lambda m, xb, yb, gen: m(xb).sum() * float("nan")  # noqa: E731
    result = fit(model, [{"params": list(model.parameters())}], Split(x, y), Split(x, y), "binary", "tabular",
                 config, batch_loss=nan_loss)
    assert result.diverged_epoch == 1 and result.best_epoch == 0
    assert all(torch.equal(v, start[k]) for k, v in model.state_dict().items())  # no NaN weights kept
    warnings = fit_warnings(result, has_source=False)
    assert "diverged" in warnings[0] and "epoch 0" in warnings[1]


def test_nan_weights_are_refused_at_predict_not_argmaxed_to_class_0(heart_run, tmp_path):
    from safetensors.torch import load_file, save_file
    run = tmp_path / "run"
    shutil.copytree(heart_run.out, run)
    state = load_file(str(run / "model.safetensors"))
    state = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in state.items()}
    save_file(state, str(run / "model.safetensors"))
    with pytest.raises(MedTransferError, match="non-finite probabilities"):
        mt.predict(run, "heart:va")
    with pytest.raises(MedTransferError, match="non-finite probabilities"):
        mt.evaluate(run)


def test_float_tiff_with_nan_pixels_is_refused(tmp_path):
    from medtransfer.data.folder import decode_images
    a = np.ones((8, 8), np.float32)
    a[2, 2] = np.nan
    Image.fromarray(a, mode="F").save(tmp_path / "nan.tif")
    with pytest.raises(MedTransferError, match=r"nan\.tif.*NaN"):
        decode_images([tmp_path / "nan.tif"], None, None)


def test_unlabelled_folder_is_refused_as_a_transfer_target(tmp_path):
    for i in range(6):
        Image.fromarray(np.full((8, 8), 30 * i, np.uint8)).save(tmp_path / f"{i}.png")
    with pytest.raises(MedTransferError, match="unlabelled"):
        mt.transfer(f"folder:{tmp_path}", "scratch", save=False, progress=False)


def test_label_options_follow_the_wrapped_dataset():
    from medtransfer.data import reads
    assert reads("csv:x.csv") == {"target", "group", "id", "drop"}
    assert reads("heart:va") == reads("medmnist:breastmnist") == frozenset()
    assert reads("folder:x") == reads("shift:gamma:1.5:folder:x") == {"group"}  # a DICOM tag: patient-level split


def test_evaluate_refuses_an_unknown_or_empty_split(heart_run, tmp_path):
    with pytest.raises(MedTransferError, match="holdout"):
        mt.evaluate(heart_run.out, split="holdout")
