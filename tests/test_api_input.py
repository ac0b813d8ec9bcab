"""The Python API at its door: bad option values are refused by name before any work, and `predict`
takes the natural types (a DataFrame of patients, a tensor or array of images, a Path)."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import medtransfer as mt
from medtransfer import api
from medtransfer.data.tabular import heart_frame
from medtransfer.errors import MedTransferError

BAD_OPTIONS = [  # (id, call, what the one line must say); each fails before any data is read
    ("seed-text", lambda: mt.transfer("heart:hungary", seed="abc"),
     "seed must be an integer from 0 to 2**63 - 1, got 'abc'"),
    ("seed-float", lambda: mt.transfer("heart:hungary", seed=1.5), "seed must be an integer"),
    ("seed-negative", lambda: mt.transfer("heart:hungary", seed=-1), "seed must be an integer from 0"),
    ("split-seed-text", lambda: mt.transfer("heart:hungary", split_seed="1"), "split_seed must be an integer"),
    ("epochs-zero", lambda: mt.transfer("heart:hungary", epochs=0), "epochs must be an integer >= 1, got 0"),
    ("epochs-bool", lambda: mt.transfer("heart:hungary", epochs=True), "epochs must be"),
    ("batch-size-zero", lambda: mt.transfer("heart:hungary", batch_size=0), "batch_size must be"),
    ("patience-zero", lambda: mt.transfer("heart:hungary", patience=0), "patience must be"),
    ("source-epochs-zero", lambda: mt.transfer("heart:hungary", source_epochs=0), "source_epochs must be"),
    ("image-size-zero", lambda: mt.transfer("heart:hungary", image_size=0), "image_size must be an integer >= 8"),
    ("image-size-tiny", lambda: mt.transfer("heart:hungary", image_size=4), "image_size must be"),
    ("image-size-typo", lambda: mt.transfer("heart:hungary", image_size="nativ"), "or 'native', got 'nativ'"),
    ("lr-zero", lambda: mt.transfer("heart:hungary", lr=0), "lr must be a number > 0"),
    ("lr-negative", lambda: mt.transfer("heart:hungary", lr=-0.1), "lr must be"),
    ("lr-nan", lambda: mt.transfer("heart:hungary", lr=float("nan")), "lr must be"),
    ("lr-text", lambda: mt.transfer("heart:hungary", lr="0.01"), "lr must be"),
    ("n-boot-negative", lambda: mt.transfer("heart:hungary", n_boot=-1), "n_boot must be"),
    ("accelerator-unknown", lambda: mt.transfer("heart:hungary", accelerator="gpu"),
     "accelerator must be one of auto, cpu, cuda, mps, got 'gpu'"),
    ("budget-float", lambda: mt.transfer("heart:hungary", budget=5.5), "budget must be"),
    ("budget-list", lambda: mt.transfer("heart:hungary", budget=[10]), "budget must be"),
    ("budget-over-100-percent", lambda: mt.transfer("heart:hungary", budget="150%"), "bad budget '150%'"),
    ("budget-negative", lambda: mt.transfer("heart:hungary", budget=-3), "bad budget"),
    ("evaluate-split", lambda: mt.evaluate("no-such-run", split="holdout"),
     "split must be one of train, val, test, all, got 'holdout'"),
    ("evaluate-n-boot", lambda: mt.evaluate("no-such-run", n_boot=-5), "n_boot must be"),
    ("pretrain-epochs", lambda: mt.pretrain("heart:cleveland", epochs=0), "epochs must be"),
    ("pretrain-seed", lambda: mt.pretrain("heart:cleveland", seed="x"), "seed must be an integer"),
    ("pretrain-ssl-momentum", lambda: mt.pretrain("folder:x", method="moco", momentum=2.0), "momentum must be"),
    ("pretrain-ssl-temperature", lambda: api.pretrain_self_supervised("folder:x", temperature=0),
     "temperature must be"),
    ("shift-permutations", lambda: mt.shift("heart:cleveland", "heart:va", n_perm=-1), "n_perm must be"),
    ("shift-max-samples", lambda: mt.shift("heart:cleveland", "heart:va", max_samples=2), "max_samples must be"),
    ("shift-accelerator", lambda: mt.shift("heart:cleveland", "heart:va", accelerator="tpu"), "accelerator must be"),
    ("experiment-jobs", lambda: api.experiment("no.yaml", jobs=0), "jobs must be"),
    ("predict-a-list", lambda: mt.predict("no-such-run", [[1, 2, 3]]),
     "cannot predict on a list: give a path (CSV, image or folder) or a dataset spec as a str or Path, "
     "a pandas DataFrame"),
    ("predict-a-number", lambda: mt.predict("no-such-run", 42), "cannot predict on a int"),
]


@pytest.mark.parametrize("call, message", [c[1:] for c in BAD_OPTIONS], ids=[c[0] for c in BAD_OPTIONS])
def test_a_bad_option_is_refused_by_name_before_any_work(call, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MedTransferError) as caught:
        call()
    assert message in str(caught.value)
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_cuda_device_is_refused_up_front():
    with pytest.raises(MedTransferError, match="'cuda' is not available on this machine; use cpu or auto"):
        mt.transfer("heart:hungary", "scratch", accelerator="cuda")


def test_the_cli_gets_the_same_checks_named_by_their_option():
    with pytest.raises(MedTransferError, match=r"\(option --device\)"):
        mt.transfer("heart:hungary", accelerator="nonsense")
    with pytest.raises(MedTransferError, match=r"\(option --image-size\)"):
        mt.transfer("heart:hungary", image_size=0)


@pytest.fixture(scope="module")
def heart_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "hungary"
    return mt.transfer("heart:hungary", "target-only", budget=40, epochs=20, out=out, progress=False, n_boot=10)


@pytest.fixture(scope="module")
def patients(tmp_path_factory):
    """Ten VA patients as a user holds them: a DataFrame, and the same rows as a CSV file."""
    frame = heart_frame()
    frame = frame[frame["dataset"] == "VA Long Beach"].drop(columns=["dataset", "disease"]).head(10)
    frame = frame.reset_index(drop=True)
    path = tmp_path_factory.mktemp("patients") / "patients.csv"
    frame.to_csv(path, index=False)
    return frame, path


def test_predict_on_a_dataframe_equals_predict_on_its_csv(heart_run, patients):
    frame, path = patients
    from_frame = mt.predict(heart_run.out, frame)
    from_csv = mt.predict(heart_run.out, str(path))
    assert len(from_frame) == 10
    pd.testing.assert_frame_equal(from_frame, from_csv)


def test_predict_takes_a_path_object(heart_run, patients):
    _, path = patients
    pd.testing.assert_frame_equal(mt.predict(Path(heart_run.out), Path(path)), mt.predict(heart_run.out, str(path)))


def test_transfer_takes_a_run_folder_as_a_path_object(heart_run):
    run = mt.transfer("heart:va", "head", source=Path(heart_run.out), budget=20, epochs=2, save=False,
                      progress=False, n_boot=10)
    assert run.config["strategy"] == "head"


def test_a_table_model_refuses_images_and_an_image_model_refuses_tables(heart_run, grey_run):
    with pytest.raises(MedTransferError, match="does not fit this run's model, which takes tabular"):
        mt.predict(heart_run.out, np.zeros((2, 1, 16, 16), np.uint8))
    with pytest.raises(MedTransferError, match="tabular model"):
        mt.predict(grey_run[0], pd.DataFrame({"age": [50]}))


def write_grey_images(folder: Path) -> None:
    rng = np.random.default_rng(0)
    for label, shift in (("a", 0), ("b", 90)):
        (folder / label).mkdir(parents=True)
        for i in range(6):
            pixels = (rng.integers(0, 100, (16, 16)) + shift).astype(np.uint8)
            Image.fromarray(pixels, "L").save(folder / label / f"{i}.png")


@pytest.fixture(scope="module")
def grey_run(tmp_path_factory):
    """A small grey image model and the folder it was trained on."""
    root = tmp_path_factory.mktemp("grey")
    write_grey_images(root / "images")
    run = mt.transfer(f"folder:{root / 'images'}", "scratch", backbone="test_resnet", image_size=16, epochs=1,
                      out=root / "run", progress=False, n_boot=10)
    return run.out, root / "images"


def test_predict_on_an_image_array_equals_predict_on_the_files(grey_run):
    run, images = grey_run
    from_files = mt.predict(run, str(images))
    files = [Path(name) for name in from_files["input"]]
    pixels = np.stack([np.asarray(Image.open(f))[None] for f in files])  # (N, 1, 16, 16) uint8
    probs = [c for c in from_files.columns if c.startswith("prob_")]
    for given in (pixels, torch.from_numpy(pixels), pixels.astype(np.float32) / 255):
        from_array = mt.predict(run, given)
        assert list(from_array["input"]) == [str(i) for i in range(len(files))]
        np.testing.assert_allclose(from_array[probs].to_numpy(), from_files[probs].to_numpy(), atol=1e-5)
        assert list(from_array["predicted"]) == list(from_files["predicted"])


@pytest.mark.parametrize("images, message", [
    (np.zeros((2, 3, 16, 16), np.uint8), "images have 3 channel(s) but the model was trained on 1"),
    (np.zeros((2, 1, 20, 20), np.uint8), "images are 20x20 but the model was trained on 16x16"),
    (np.zeros((2, 16, 16), np.uint8), "images must be an array (N, C, H, W)"),
    (np.zeros((0, 1, 16, 16), np.uint8), "N >= 1"),
    (np.full((2, 1, 16, 16), 200.0, np.float32), "float images must lie in [0, 1]"),
    (np.full((2, 1, 16, 16), np.nan, np.float32), "float images must lie in [0, 1]"),
    (np.zeros((2, 1, 16, 16), np.int64), "ambiguous"),
], ids=["channels", "size", "no-channel-axis", "empty", "float-0-255", "nan", "int64"])
def test_an_image_array_that_does_not_fit_is_refused_in_one_line(grey_run, images, message):
    with pytest.raises(MedTransferError) as caught:
        mt.predict(grey_run[0], images)
    assert message in str(caught.value) and "\n" not in str(caught.value)
