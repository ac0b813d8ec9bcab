"""folder: loader on tiny generated image folders."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from medtransfer.data.folder import load_folder
from medtransfer.errors import MedTransferError


def _png(path, value=0, size=(8, 8), mode="L"):
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    Image.fromarray(np.full(shape, value, dtype=np.uint8), mode=mode).save(path)


def _class_folders(root, counts, size=(8, 8)):
    for k, (name, n) in enumerate(counts.items()):
        for i in range(n):
            _png(root / name / f"{i:03d}.png", value=(k * 50 + i) % 256, size=size)


def _dicom(path, pixels, photometric="MONOCHROME2", slope=1.0, intercept=0.0, frames=None, patient=None):
    """A small DICOM file (16-bit, one frame unless `frames`), with a PatientID when `patient` is given."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    if patient is not None:
        ds.PatientID = patient
    ds.Rows, ds.Columns = pixels.shape[-2:]
    if frames:
        ds.NumberOfFrames = frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = str(slope), str(intercept)
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def test_class_folders_stratified_and_seeded(tmp_path):
    _class_folders(tmp_path, {"benign": 20, "malignant": 10})
    (tmp_path / ".hidden").mkdir()  # ignored, not a class
    _png(tmp_path / ".hidden" / "x.png")
    (tmp_path / "benign" / "notes.txt").write_text("not an image")

    ds = load_folder(tmp_path, seed=3)
    assert ds.name == f"folder:{tmp_path.name}"
    assert (ds.modality, ds.task, ds.classes) == ("image2d", "binary", ["benign", "malignant"])
    assert ds.info.pop("fingerprint")  # what the source cache keys on (test_wrong_results.py)
    assert ds.info == {"source": str(tmp_path.resolve()), "layout": "class-folders", "n_files": 30,
                       "split_seed": 3}  # drawn here, so transfer --split-seed may redraw it
    assert (len(ds.train), len(ds.val), len(ds.test)) == (21, 3, 6)
    for split in (ds.train, ds.val, ds.test):
        assert split.x.dtype == torch.float32 and split.y.dtype == torch.int64
        assert split.x.shape[1:] == (1, 8, 8)
        assert set(split.y.tolist()) == {0, 1}  # every class in every split
    assert torch.bincount(ds.test.y).tolist() == [4, 2]

    same, other = load_folder(tmp_path, seed=3), load_folder(tmp_path, seed=4)
    assert torch.equal(same.test.x, ds.test.x) and torch.equal(same.train.y, ds.train.y)
    assert not torch.equal(other.test.x, ds.test.x)


def test_class_too_small_for_every_split_names_it(tmp_path):
    _class_folders(tmp_path, {"common": 20, "rare": 2})
    with pytest.raises(MedTransferError, match=r"'rare' has 2 image"):
        load_folder(tmp_path)


def test_tiny_classes_still_reach_every_split(tmp_path):
    _class_folders(tmp_path, {"a": 3, "b": 3, "c": 3, "d": 3})  # sklearn would refuse: 12 * 0.2 < 4 classes
    ds = load_folder(tmp_path)
    assert ds.task == "multiclass"
    for split in (ds.train, ds.val, ds.test):
        assert sorted(split.y.tolist()) == [0, 1, 2, 3]


def test_split_folders_carve_val_and_allow_class_missing_from_test(tmp_path):
    _class_folders(tmp_path / "train", {"cat": 10, "dog": 10, "owl": 10})
    _class_folders(tmp_path / "test", {"cat": 2, "dog": 2})
    ds = load_folder(tmp_path, val_fraction=0.2)
    assert ds.info["layout"] == "split-folders" and ds.info["n_files"] == 34
    assert ds.classes == ["cat", "dog", "owl"]
    assert (len(ds.train), len(ds.val), len(ds.test)) == (24, 6, 4)
    assert torch.bincount(ds.val.y).tolist() == [2, 2, 2]
    assert ds.test.y.tolist() == [0, 0, 1, 1]


def test_split_folders_keep_given_val(tmp_path):
    for split, n in {"train": 4, "val": 2, "test": 3}.items():
        _class_folders(tmp_path / split, {"neg": n, "pos": n})
    ds = load_folder(tmp_path)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (8, 4, 6)


def test_split_folders_class_missing_from_train_raises(tmp_path):
    _class_folders(tmp_path / "train", {"neg": 4, "pos": 4})
    _class_folders(tmp_path / "test", {"neg": 2, "pos": 2, "other": 2})
    with pytest.raises(MedTransferError, match="other"):
        load_folder(tmp_path)


def test_split_folders_require_test(tmp_path):
    _class_folders(tmp_path / "train", {"neg": 4, "pos": 4})
    with pytest.raises(MedTransferError, match="test/"):
        load_folder(tmp_path)


def test_grayscale_png_and_rgb_jpeg_mix_gives_three_channels_and_resizes(tmp_path):
    for i in range(5):
        _png(tmp_path / "gray" / f"{i}.png", value=255, size=(10, 6))
        _png(tmp_path / "color" / f"{i}.jpg", value=128, size=(8, 8), mode="RGB")
    ds = load_folder(tmp_path, val_fraction=0.2, test_fraction=0.2)
    assert ds.input_shape == (3, 224, 224)  # sizes differ and no image_size: default square
    gray = ds.train.x[ds.train.y == ds.classes.index("gray")]
    assert torch.allclose(gray, torch.ones_like(gray))
    assert load_folder(tmp_path, image_size=16, channels=1).input_shape == (1, 16, 16)


def test_16bit_png_scaled_by_65535(tmp_path):
    for name in ("a", "b"):
        for i in range(3):
            path = tmp_path / name / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((4, 4), 65535 // 5, dtype=np.uint16)).save(path)
    ds = load_folder(tmp_path)
    assert torch.allclose(ds.train.x, torch.full_like(ds.train.x, 0.2), atol=1e-4)


def test_dicom_rescale_and_monochrome1(tmp_path):
    raw = np.arange(16, dtype=np.uint16).reshape(4, 4) * 100
    for i in range(3):
        _dicom(tmp_path / "mono2" / f"{i}.dcm", raw, slope=2.0, intercept=-1024)
        _dicom(tmp_path / "mono1" / f"{i}.dcm", raw, photometric="MONOCHROME1")
        _dicom(tmp_path / "negslope" / f"{i}.dcm", raw, slope=-1.0)  # proves the slope is applied
    ds = load_folder(tmp_path, val_fraction=0.34, test_fraction=0.33)
    assert ds.input_shape == (1, 4, 4)
    expected = torch.linspace(0, 1, 16).reshape(1, 4, 4)
    x = torch.cat([ds.train.x, ds.val.x, ds.test.x])
    y = torch.cat([ds.train.y, ds.val.y, ds.test.y])
    for name, want in {"mono2": expected, "mono1": 1 - expected, "negslope": 1 - expected}.items():
        got = x[y == ds.classes.index(name)]
        assert len(got) == 3 and torch.allclose(got, want.expand_as(got), atol=1e-6), name


def test_multiframe_dicom_is_refused(tmp_path):
    _dicom(tmp_path / "a" / "vol.dcm", np.zeros((2, 4, 4)), frames=2)
    with pytest.raises(MedTransferError, match="multi-frame DICOM is not supported"):
        load_folder(tmp_path, val_fraction=0, test_fraction=0)


@pytest.mark.parametrize("name", ["broken.png", "broken.dcm"])
def test_corrupt_file_names_the_file(tmp_path, name):
    _class_folders(tmp_path, {"a": 5, "b": 5})
    (tmp_path / "b" / name).write_bytes(b"definitely not an image")
    with pytest.raises(MedTransferError, match=rf"{name}: not a readable PNG/JPEG/DICOM image") as err:
        load_folder(tmp_path)
    assert "\n" not in str(err.value)


def test_empty_folder_explains_layout(tmp_path):
    with pytest.raises(MedTransferError, match="expected class folders"):
        load_folder(tmp_path)
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(MedTransferError, match="expected class folders"):
        load_folder(tmp_path)
