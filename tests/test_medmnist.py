"""medmnist: loader on tiny fake .npz files (no network), plus the real shared files when present."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medtransfer.data import load_dataset
from medtransfer.data import medmnist as mm
from medtransfer.data.medmnist import FLAGS, KEYS, load_medmnist, locate, parse_flag
from medtransfer.errors import MedTransferError

SIZES = {"train": 6, "val": 3, "test": 4}


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any download attempt fails as if offline, and is recorded."""
    calls = []

    def refuse(url, filename=None, *args, **kwargs):
        calls.append((url, filename))
        raise OSError("network disabled in tests")

    monkeypatch.setattr(mm.urllib.request, "urlretrieve", refuse)
    return calls


def _fake_npz(path, image_shape=(28, 28), num_classes=2, label_width=1, keys=KEYS, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in SIZES.items():
        arrays[f"{split}_images"] = rng.integers(0, 256, size=(n, *image_shape), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, num_classes, size=(n, label_width), dtype=np.uint8)
    arrays["train_images"][0] = 255  # the full range is present
    arrays["train_images"][1] = 0
    np.savez_compressed(path, **{k: v for k, v in arrays.items() if k in keys})
    return arrays


def test_grayscale_2d(tmp_path):
    arrays = _fake_npz(tmp_path / "pneumoniamnist.npz")
    ds = load_medmnist("pneumoniamnist", data_root=tmp_path)
    assert ds.name == "medmnist:pneumoniamnist"
    assert ds.modality == "image2d" and ds.task == "binary"
    assert ds.classes == ["normal", "pneumonia"] and ds.num_outputs == 2
    assert ds.in_channels == 1 and ds.input_shape == (1, 28, 28)
    for split, n in SIZES.items():
        s = ds.split(split)
        assert s.x.shape == (n, 1, 28, 28) and s.x.dtype == torch.float32
        assert s.y.shape == (n,) and s.y.dtype == torch.int64
        assert 0.0 <= float(s.x.min()) and float(s.x.max()) <= 1.0
        np.testing.assert_allclose(s.x[:, 0].numpy() * 255, arrays[f"{split}_images"], atol=1e-3)
        assert s.y.tolist() == arrays[f"{split}_labels"].reshape(-1).tolist()
    assert float(ds.train.x.max()) == 1.0 and float(ds.train.x.min()) == 0.0
    assert ds.info["file"] == str(tmp_path / "pneumoniamnist.npz")


def test_rgb_2d_channels_first(tmp_path):
    arrays = _fake_npz(tmp_path / "pathmnist.npz", image_shape=(28, 28, 3), num_classes=9)
    ds = load_medmnist("PathMNIST", data_root=tmp_path)  # flag is case-insensitive
    assert ds.task == "multiclass" and len(ds.classes) == 9
    assert ds.train.x.shape == (6, 3, 28, 28) and ds.in_channels == 3
    assert ds.train.x.is_contiguous()
    np.testing.assert_allclose(ds.train.x.permute(0, 2, 3, 1).numpy() * 255, arrays["train_images"], atol=1e-3)


def test_3d_volume(tmp_path):
    _fake_npz(tmp_path / "adrenalmnist3d.npz", image_shape=(28, 28, 28))
    ds = load_dataset("medmnist:adrenalmnist3d", data_root=tmp_path)
    assert ds.modality == "image3d" and ds.task == "binary"
    assert ds.train.x.shape == (6, 1, 28, 28, 28) and ds.test.y.shape == (4,)
    assert ds.input_shape == (1, 28, 28, 28)


def test_size_suffix(tmp_path):
    _fake_npz(tmp_path / "adrenalmnist3d_64.npz", image_shape=(8, 8, 8))
    ds = load_medmnist("adrenalmnist3d@64", data_root=tmp_path)
    assert ds.name == "medmnist:adrenalmnist3d@64" and ds.info["size"] == 64
    assert ds.train.x.shape == (6, 1, 8, 8, 8)


def test_multilabel_labels_are_float(tmp_path):
    _fake_npz(tmp_path / "chestmnist.npz", label_width=14)
    ds = load_medmnist("chestmnist", data_root=tmp_path)
    assert ds.task == "multilabel" and ds.num_outputs == 14
    assert ds.train.y.shape == (6, 14) and ds.train.y.dtype == torch.float32


def test_data_root_from_environment(tmp_path, monkeypatch):
    _fake_npz(tmp_path / "breastmnist.npz")
    monkeypatch.setenv("MEDTRANSFER_DATA", str(tmp_path))
    assert len(load_medmnist("breastmnist").train) == SIZES["train"]


def test_missing_keys_named(tmp_path):
    _fake_npz(tmp_path / "pneumoniamnist.npz", keys=[k for k in KEYS if k not in {"val_labels", "test_images"}])
    with pytest.raises(MedTransferError, match=r"lacks the MedMNIST keys \['val_labels', 'test_images'\]"):
        load_medmnist("pneumoniamnist", data_root=tmp_path)


def test_unreadable_npz(tmp_path):
    (tmp_path / "pneumoniamnist.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(MedTransferError, match="not a readable .npz"):
        load_medmnist("pneumoniamnist", data_root=tmp_path)


def test_missing_file_download_fails(tmp_path, no_network):
    root = tmp_path / "nested" / "root"
    with pytest.raises(MedTransferError) as info:
        load_medmnist("pneumoniamnist", data_root=root)
    message = str(info.value)
    assert "pneumoniamnist.npz" in message and str(root) in message
    assert "--data-root" in message and "MEDTRANSFER_DATA" in message
    assert len(no_network) == 1 and "pneumoniamnist.npz" in no_network[0][0]
    assert not list(root.glob("*.part"))  # no partial file left behind


def test_missing_file_without_download(tmp_path, no_network):
    with pytest.raises(MedTransferError, match=r"breastmnist_128\.npz not found"):
        locate("breastmnist", 128, tmp_path, download=False)
    with pytest.raises(MedTransferError, match="MEDTRANSFER_DATA"):
        load_medmnist("breastmnist", data_root=tmp_path, download=False)
    assert no_network == []


def test_unknown_flag_lists_choices():
    with pytest.raises(MedTransferError, match="unknown MedMNIST dataset 'bogusmnist'") as info:
        parse_flag("bogusmnist")
    assert all(flag in str(info.value) for flag in FLAGS)
    with pytest.raises(MedTransferError, match="pneumoniamnist"):
        load_dataset("medmnist:bogus")


def test_parse_flag_sizes():
    assert parse_flag("pneumoniamnist") == ("pneumoniamnist", 28)
    assert parse_flag(" OrganMNIST3D@64") == ("organmnist3d", 64)
    with pytest.raises(MedTransferError, match="bad image size"):
        parse_flag("pneumoniamnist@big")


@pytest.mark.parametrize("spec", ["bogus", "nope:x", "medmnist:", "heart", ""])
def test_bad_dataset_spec(spec):
    with pytest.raises(MedTransferError, match="bad dataset.*medmnist:.*folder:.*csv:.*heart:"):
        load_dataset(spec)


# --- the real shared files -------------------------------------------------------------------

@pytest.mark.parametrize("flag, sizes, classes", [
    ("pneumoniamnist", (4708, 524, 624), ["normal", "pneumonia"]),
    ("breastmnist", (546, 78, 156), ["malignant", "normal, benign"]),
])
def test_real_medmnist(medmnist_root, flag, sizes, classes):
    if not (medmnist_root / f"{flag}.npz").is_file():
        pytest.skip(f"{flag}.npz not in {medmnist_root}")
    ds = load_dataset(f"medmnist:{flag}", data_root=medmnist_root)
    assert (len(ds.train), len(ds.val), len(ds.test)) == sizes
    assert ds.classes == classes and ds.task == "binary"
    assert ds.input_shape == (1, 28, 28)
    assert set(ds.train.y.tolist()) == {0, 1}
    assert 0.0 <= float(ds.train.x.min()) and float(ds.train.x.max()) <= 1.0
