"""tabular: encoder fitted on train only, JSON round-trip, clear errors, group splits, built-in heart sites."""

from __future__ import annotations

import hashlib
import json
from importlib import resources

import numpy as np
import pandas as pd
import pytest
import torch

from medtransfer.data import load_dataset
from medtransfer.data.tabular import (MISSING, TabularEncoder, frame_to_dataset, heart_frame, load_csv,
                                      load_heart)
from medtransfer.errors import MedTransferError

HEART_SHA256 = "574f2fa2b43012fa25fca4fcdb36bd7c6bccdd0af4242f6c0e4c8633c5a072ae"
HEART_SITES = {  # site -> (rows, prevalence of num > 0)
    "cleveland": (304, 0.457),
    "hungary": (293, 0.362),
    "switzerland": (123, 0.935),
    "va": (200, 0.745),
}


def _frame(n=60, seed=0):
    """A small mixed table: `rowid` (numeric, identifies each row after encoding), `v`, `c`, label `y`."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "rowid": np.arange(n, dtype=float),
        "v": rng.normal(size=n),
        "c": rng.choice(["a", "b"], size=n),
        "y": np.where(np.arange(n) % 3 == 0, "pos", "neg"),
    })


def _rowids(ds, split):
    """Recover each row's `rowid` from its standardised feature (column 0)."""
    median, mean, std = ds.encoder.numeric["rowid"]
    x = ds.split(split).x[:, 0].double().numpy()
    return np.rint(x * std + mean).astype(int)


# --- the built-in heart data -------------------------------------------------------------------

@pytest.fixture(scope="module")
def heart_sites():
    return {site: load_heart(site) for site in HEART_SITES}


def test_vendored_heart_csv_checksum():
    data = resources.files("medtransfer.data.resources").joinpath("heart_disease_uci.csv").read_bytes()
    assert hashlib.sha256(data).hexdigest() == HEART_SHA256


def test_heart_frame_has_four_sites():
    frame = heart_frame()
    assert len(frame) == sum(rows for rows, _ in HEART_SITES.values())
    assert "num" not in frame.columns and "id" not in frame.columns
    assert set(frame["disease"]) == {"disease", "no disease"}


@pytest.mark.parametrize("site", list(HEART_SITES))
def test_heart_site_rows_and_prevalence(heart_sites, site):
    ds = heart_sites[site]
    rows, prevalence = HEART_SITES[site]
    assert ds.info["rows"] == rows
    assert len(ds.train) + len(ds.val) + len(ds.test) == rows
    assert ds.classes == ["no disease", "disease"]
    assert ds.task == "binary" and ds.modality == "tabular"
    y = torch.cat([ds.train.y, ds.val.y, ds.test.y])
    assert y.dtype == torch.int64
    assert float((y == 1).float().mean()) == pytest.approx(prevalence, abs=1e-3)
    # half of each site is its test set
    assert abs(len(ds.test) - rows / 2) <= 1
    for split in (ds.train, ds.val, ds.test):
        assert split.x.dtype == torch.float32
        assert split.x.shape[1] == len(ds.info["features"])
        assert torch.isfinite(split.x).all()
        assert set(split.y.tolist()) == {0, 1}


def test_heart_target_site_reuses_source_encoding(heart_sites):
    source = heart_sites["cleveland"]
    target = load_heart("hungary", encoder=source.encoder)
    assert target.encoder is source.encoder
    assert target.info["features"] == source.info["features"]
    assert target.train.x.shape[1] == source.train.x.shape[1]
    # the same through load_dataset
    again = load_dataset("heart:hungary", encoder=source.encoder)
    assert again.info["features"] == source.info["features"]
    assert torch.equal(again.train.x, target.train.x)


def test_heart_unknown_site():
    with pytest.raises(MedTransferError, match="unknown heart site.*cleveland"):
        load_heart("mars")


def test_heart_split_seed_is_reproducible():
    a, b = load_heart("va", split_seed=3), load_heart("va", split_seed=3)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)


# --- the encoder ---------------------------------------------------------------------------------

def test_encoder_fitted_on_train_split_only():
    frame = _frame()
    first = frame_to_dataset(frame, "y", "t", split_seed=0)
    train_rows = set(_rowids(first, "train"))
    other_rows = sorted(set(range(len(frame))) - train_rows)
    assert len(train_rows) == len(first.train) and len(other_rows) == len(first.val) + len(first.test)

    # Values that differ between train and the rest; the split depends only on labels and seed.
    frame["v"] = 0.0
    frame.loc[other_rows, "v"] = 100.0
    frame.loc[sorted(train_rows)[0], "v"] = 4.0  # train mean 4/n_train, full mean far larger
    frame.loc[other_rows[0], "c"] = "only-outside-train"
    ds = frame_to_dataset(frame, "y", "t", split_seed=0)
    assert set(_rowids(ds, "train")) == train_rows

    median, mean, std = ds.encoder.numeric["v"]
    train_v = frame.loc[sorted(train_rows), "v"]
    assert mean == pytest.approx(train_v.mean())
    assert median == pytest.approx(train_v.median())
    assert std == pytest.approx(train_v.std(ddof=0))
    assert mean != pytest.approx(frame["v"].mean())
    rowid_mean = ds.encoder.numeric["rowid"][1]
    assert rowid_mean == pytest.approx(np.mean(sorted(train_rows)))

    # the level never seen in train is not a level; its row is encoded as <missing>
    assert ds.encoder.categorical["c"] == ["a", "b", MISSING]
    names = ds.info["features"]
    assert names == ["rowid", "v", "c=a", "c=b", f"c={MISSING}"]
    for split in ("val", "test"):
        ids = list(_rowids(ds, split))
        if other_rows[0] in ids:
            row = ds.split(split).x[ids.index(other_rows[0])]
            assert row[names.index(f"c={MISSING}")] == 1
            assert row[names.index("c=a")] == 0 and row[names.index("c=b")] == 0
            break
    else:
        pytest.fail("row with the unseen level not found outside train")


def test_encoder_imputes_and_one_hots():
    train = pd.DataFrame({"n": [1.0, np.nan, 3.0, 5.0], "c": ["x", None, "y", "x"], "flag": [True, False, True, True]})
    enc = TabularEncoder.fit(train, ["n", "c", "flag"])
    assert enc.numeric["n"][0] == 3.0  # median of observed values imputes the gap
    assert enc.categorical["c"] == ["x", "y", MISSING]
    assert enc.categorical["flag"] == ["False", "True", MISSING]  # booleans are categories
    out = enc.transform(pd.DataFrame({"n": [np.nan], "c": ["unseen"], "flag": [False]}))
    assert out.dtype == np.float32 and out.shape == (1, len(enc.feature_names))
    median, mean, std = enc.numeric["n"]
    assert out[0, 0] == pytest.approx((median - mean) / std)
    assert list(out[0, 1:4]) == [0, 0, 1]  # unseen level -> <missing>
    with pytest.raises(MedTransferError, match="'c'"):
        enc.transform(pd.DataFrame({"n": [1.0], "flag": [True]}))


def test_encoder_json_round_trip():
    frame = _frame(seed=1)
    frame.loc[3, "c"] = None
    frame.loc[4, "v"] = np.nan
    ds = frame_to_dataset(frame, "y", "t")
    enc = ds.encoder
    restored = TabularEncoder.from_dict(json.loads(json.dumps(enc.to_dict())))
    assert restored == enc
    assert restored.feature_names == enc.feature_names
    np.testing.assert_array_equal(restored.transform(frame), enc.transform(frame))
    # reusing it gives the same dataset
    again = frame_to_dataset(frame, "y", "t", encoder=restored)
    assert torch.equal(again.train.x, ds.train.x) and torch.equal(again.test.x, ds.test.x)


# --- errors ----------------------------------------------------------------------------------------

def test_unknown_target_column():
    with pytest.raises(MedTransferError, match=r"'nope' not in t.*rowid"):
        frame_to_dataset(_frame(), "nope", "t")


def test_unknown_group_column():
    with pytest.raises(MedTransferError, match="'patient'"):
        frame_to_dataset(_frame(), "y", "t", group="patient")


def test_nan_labels():
    frame = _frame()
    frame.loc[[2, 7], "y"] = np.nan
    with pytest.raises(MedTransferError, match=r"'y' has missing labels \(rows \[2, 7\]\)"):
        frame_to_dataset(frame, "y", "t")


def test_single_class_target():
    frame = _frame().assign(y="neg")
    with pytest.raises(MedTransferError, match="single class"):
        frame_to_dataset(frame, "y", "t")


def test_class_too_rare_to_split():
    frame = _frame()
    frame.loc[0, "y"] = "rare"  # one row: cannot be stratified into three splits
    with pytest.raises(MedTransferError, match="cannot make a stratified split"):
        frame_to_dataset(frame, "y", "t")


def test_class_missing_from_a_split():
    with pytest.raises(MedTransferError, match=r"class \['zzz'\] missing from the train split"):
        frame_to_dataset(_frame(), "y", "t", classes=["neg", "pos", "zzz"])


def test_labels_outside_given_classes():
    with pytest.raises(MedTransferError, match=r"labels \['pos'\] are not among the classes"):
        frame_to_dataset(_frame(), "y", "t", classes=["neg", "other"])


# --- csv files -------------------------------------------------------------------------------------

def _patients_csv(path, n_patients=40, rows_each=3):
    rng = np.random.default_rng(0)
    pid = np.repeat(np.arange(n_patients), rows_each)
    frame = pd.DataFrame({
        "rowid": np.arange(len(pid), dtype=float),
        "lab": rng.normal(size=len(pid)).round(3),
        "patient": [f"p{p:03d}" for p in pid],
        "label": np.where(pid % 2 == 0, "yes", "no"),
    })
    frame.to_csv(path, index=False)
    return frame


def test_csv_group_split_keeps_patients_together(tmp_path):
    frame = _patients_csv(tmp_path / "labs.csv")
    ds = load_dataset(f"csv:{tmp_path / 'labs.csv'}", target="label", group="patient")
    assert ds.name == "csv:labs.csv" and ds.classes == ["no", "yes"]
    assert "patient" not in ds.encoder.numeric and "patient" not in ds.encoder.categorical
    seen = {}
    total = 0
    for split in ("train", "val", "test"):
        rows = _rowids(ds, split)
        total += len(rows)
        for patient in frame.loc[rows, "patient"]:
            assert seen.setdefault(patient, split) == split, f"{patient} spans two splits"
    assert total == len(frame) and len(seen) == 40


def test_csv_split_reproducible_for_seed(tmp_path):
    _patients_csv(tmp_path / "labs.csv")
    path = tmp_path / "labs.csv"
    a = load_csv(path, "label", split_seed=5)
    b = load_csv(path, "label", split_seed=5)
    c = load_csv(path, "label", split_seed=6)
    for split in ("train", "val", "test"):
        assert torch.equal(a.split(split).x, b.split(split).x)
        assert torch.equal(a.split(split).y, b.split(split).y)
    assert set(_rowids(a, "train")) != set(_rowids(c, "train"))
    g1 = load_csv(path, "label", group="patient", split_seed=5)
    g2 = load_csv(path, "label", group="patient", split_seed=5)
    assert torch.equal(g1.train.x, g2.train.x) and torch.equal(g1.test.x, g2.test.x)


def test_csv_missing_file(tmp_path):
    path = tmp_path / "absent.csv"
    with pytest.raises(MedTransferError, match=r"CSV file .*absent\.csv not found"):
        load_csv(path, "label")
    with pytest.raises(MedTransferError, match="not found"):
        load_dataset(f"csv:{path}", target="label")


def test_csv_without_target(tmp_path):
    _patients_csv(tmp_path / "labs.csv")
    with pytest.raises(MedTransferError, match="needs --target COLUMN"):
        load_csv(tmp_path / "labs.csv", None)
    with pytest.raises(MedTransferError, match="--target"):
        load_dataset(f"csv:{tmp_path / 'labs.csv'}")


def test_csv_unknown_target(tmp_path):
    _patients_csv(tmp_path / "labs.csv")
    with pytest.raises(MedTransferError, match=r"'diagnosis' not in \S*labs\.csv; columns are: rowid, lab"):
        load_csv(tmp_path / "labs.csv", "diagnosis")


def test_csv_unreadable(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_bytes(b"")
    with pytest.raises(MedTransferError, match="bad.csv is empty"):
        load_csv(path, "label")
