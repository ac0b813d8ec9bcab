"""Data the clinician can act on: an id per example from every loader, `split("all")`, csv --id/--drop and the
refusal of identifier columns, manifest: and folder --group patient-level splits, evaluation-only folders,
declared positive classes, and `check_options_used` by option name."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from test_folder import _dicom as folder_dicom  # the DICOM writer the folder tests use

from medtransfer.data import (LABEL_OPTIONS, Split, TaskDataset, apply_budget, check_options_used, load_dataset,
                              require_classes)
from medtransfer.data.folder import load_folder
from medtransfer.data.manifest import load_manifest
from medtransfer.data.medmnist import FLAGS, KEYS, POSITIVE, load_medmnist
from medtransfer.data.tabular import heart_frame, load_csv, load_heart
from medtransfer.errors import MedTransferError


def _png(path, value=0, size=(4, 4)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size, value, dtype=np.uint8), mode="L").save(path)


def _dicom(path, value=0, patient: str | None = "p0"):
    """A 4x4 DICOM image whose pixels differ by `value`, with PatientID `patient` (None: no tag)."""
    folder_dicom(path, np.arange(16).reshape(4, 4) * (value + 1), patient=patient)


def _fake_npz(path, image_shape=(28, 28), sizes=(6, 3, 4)):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in zip(("train", "val", "test"), sizes):
        arrays[f"{split}_images"] = rng.integers(0, 256, size=(n, *image_shape), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).astype(np.uint8)[:, None]
    np.savez_compressed(path, **{k: arrays[k] for k in KEYS})


def _patient_of(ds, split):
    return [i.split("/")[-1].split("_")[0] for i in ds.split(split).ids]


def _assert_no_patient_in_two_splits(patient_by_split):
    seen = {}
    for split, patients in patient_by_split.items():
        for p in patients:
            assert seen.setdefault(p, split) == split, f"{p} in {seen[p]} and {split}"
    return seen


# --- Split ids, split("all") ------------------------------------------------------------------------

def _toy(n=(4, 2, 3), ids=True):
    def split(name, k):
        return Split(torch.arange(k, dtype=torch.float32)[:, None], torch.arange(k) % 2,
                     [f"{name}-{i}" for i in range(k)] if ids else None)
    splits = (split(name, k) for name, k in zip(("train", "val", "test"), n))
    return TaskDataset("toy", "tabular", "binary", ["a", "b"], *splits)


def test_subset_keeps_ids_and_id_list_falls_back_to_positions():
    ds = _toy()
    assert ds.train.subset([2, 0]).ids == ["train-2", "train-0"]
    assert ds.train.subset([]).ids == []
    bare = Split(torch.zeros(3, 1), torch.zeros(3, dtype=torch.long))
    assert bare.ids is None and bare.id_list("test") == ["test/0", "test/1", "test/2"]
    assert bare.subset([1]).ids is None
    assert ds.val.id_list("val") == ["val-0", "val-1"]


def test_split_all_concatenates_train_val_test_with_ids():
    ds = _toy()
    everything = ds.split("all")
    assert len(everything) == 9 and everything.x.shape == (9, 1)
    assert torch.equal(everything.y, torch.cat([ds.train.y, ds.val.y, ds.test.y]))
    assert everything.ids == [*ds.train.ids, *ds.val.ids, *ds.test.ids]
    # without loader ids, each example still says where it came from
    assert _toy(ids=False).split("all").ids[3:6] == ["train/3", "val/0", "val/1"]
    for name in ("train", "val", "test"):
        assert ds.split(name) is getattr(ds, name)


def test_unknown_split_name_lists_the_choices():
    with pytest.raises(MedTransferError, match="unknown split 'dev'; choose train, val, test or all"):
        _toy().split("dev")


def test_apply_budget_keeps_ids():
    ds = _toy(n=(20, 10, 4))
    out = apply_budget(ds, 6, seed=1)
    assert len(out.train.ids) == 6 and set(out.train.ids) <= set(ds.train.ids)
    for split in (out.train, out.val):
        assert [int(i.split("-")[1]) for i in split.ids] == split.x[:, 0].long().tolist()  # id follows its row


# --- ids of every loader --------------------------------------------------------------------------

def test_folder_ids_are_paths_relative_to_the_folder(tmp_path):
    for name in ("neg", "pos"):
        for i in range(10):
            _png(tmp_path / name / "sub" / f"{i}.png", value=i * 20 + (name == "pos"))
    ds = load_folder(tmp_path, seed=1)
    every = ds.split("all").ids
    assert sorted(every) == sorted(f"{c}/sub/{i}.png" for c in ("neg", "pos") for i in range(10))
    for split in ("train", "val", "test"):  # the id names the very image and class
        s = ds.split(split)
        for x, y, i in zip(s.x, s.y, s.ids):
            assert i.startswith(ds.classes[int(y)] + "/")
            k = int(i.split("/")[-1][:-4])
            assert round(float(x[0, 0, 0]) * 255) == k * 20 + (i.startswith("pos"))


def test_split_folder_ids_keep_the_split_folder(tmp_path):
    for split, n in {"train": 4, "val": 2, "test": 2}.items():
        for c in ("a", "b"):
            for i in range(n):
                _png(tmp_path / split / c / f"{i}.png")
    ds = load_folder(tmp_path)
    assert ds.test.ids == ["test/a/0.png", "test/a/1.png", "test/b/0.png", "test/b/1.png"]
    assert all(i.startswith("train/") for i in ds.train.ids)


def test_medmnist_ids_are_the_index_in_the_file_and_positive_is_declared(tmp_path):
    _fake_npz(tmp_path / "pneumoniamnist.npz")
    ds = load_medmnist("pneumoniamnist", data_root=tmp_path)
    assert ds.train.ids == [f"train/{i}" for i in range(6)] and ds.test.ids == [f"test/{i}" for i in range(4)]
    assert ds.info["positive"] == "pneumonia"
    _fake_npz(tmp_path / "pathmnist.npz", image_shape=(28, 28, 3))
    assert "positive" not in load_medmnist("pathmnist", data_root=tmp_path).info  # no clinical positive


def test_real_medmnist_ids_and_positive(medmnist_root):
    ds = load_dataset("medmnist:breastmnist", data_root=medmnist_root)
    assert ds.info["positive"] == "malignant"
    everything = ds.split("all")
    assert len(everything.ids) == len(set(everything.ids)) == len(ds.train) + len(ds.val) + len(ds.test)
    assert ds.val.ids[-1] == f"val/{len(ds.val) - 1}"


def test_declared_medmnist_positives_are_classes_of_binary_flags():
    assert POSITIVE == {"pneumoniamnist": "pneumonia", "breastmnist": "malignant", "nodulemnist3d": "malignant",
                        "adrenalmnist3d": "hyperplasia", "vesselmnist3d": "aneurysm"}
    for flag, name in POSITIVE.items():
        task, classes = FLAGS[flag]
        assert task == "binary" and name in classes


def test_shift_and_budget_keep_the_wrapped_ids(tmp_path):
    _fake_npz(tmp_path / "pneumoniamnist.npz")
    plain = load_dataset("medmnist:pneumoniamnist", data_root=tmp_path)
    shifted = load_dataset("shift:blur:medmnist:pneumoniamnist", data_root=tmp_path)
    for split in ("train", "val", "test"):
        assert shifted.split(split).ids == plain.split(split).ids
    assert shifted.info["positive"] == "pneumonia"
    assert set(apply_budget(shifted, 2).train.ids) <= set(plain.train.ids)


def test_heart_ids_are_site_and_uci_id_and_positive_is_disease():
    ds = load_heart("switzerland")
    uci = heart_frame(with_id=True)
    site_ids = uci.loc[uci["dataset"] == "Switzerland", "id"]
    every = ds.split("all").ids
    assert sorted(every) == sorted(f"switzerland:{i}" for i in site_ids)
    assert ds.info["positive"] == "disease"
    assert "id" not in ds.info["features"] and "id" not in heart_frame().columns
    # the id names the patient: its label is that patient's label
    disease = dict(zip(uci["id"], uci["disease"]))
    for split in ("train", "test"):
        s = ds.split(split)
        assert [ds.classes[int(y)] for y in s.y] == [disease[int(i.split(":")[1])] for i in s.ids]


def _table(n=40, seed=0, **extra):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"lab": rng.normal(size=n).round(3), "grade": rng.integers(1, 4, n),
                         "y": np.where(np.arange(n) % 3 == 0, "pos", "neg"), **extra})


def test_csv_ids_are_row_numbers_or_the_id_column(tmp_path):
    n = 40
    mrn = [f"MRN{k:05d}" for k in np.random.default_rng(1).permutation(n)]
    frame = _table(n, mrn=mrn, rowid=np.arange(n, dtype=float))  # rowid (float) identifies rows after encoding
    frame.to_csv(tmp_path / "t.csv", index=False)
    plain = load_csv(tmp_path / "t.csv", "y", drop=("mrn",))
    named = load_dataset(f"csv:{tmp_path / 't.csv'}", target="y", id="mrn")
    assert sorted(map(int, plain.split("all").ids)) == list(range(n))
    assert named.info["id_column"] == "mrn" and "id_column" not in plain.info
    assert not any(f.startswith("mrn") for f in named.info["features"])
    median, mean, std = named.encoder.numeric["rowid"]
    for split in ("train", "val", "test"):
        s = named.split(split)
        rows = np.rint(s.x[:, named.info["features"].index("rowid")].double().numpy() * std + mean).astype(int)
        assert s.ids == [mrn[r] for r in rows]  # each id is its own row's
        assert plain.split(split).ids == [str(r) for r in rows]  # same seed, same split: the row numbers


def test_csv_numeric_id_column_keeps_whole_numbers(tmp_path):
    frame = _table(30, pid=[float(i) if i != 104 else np.nan for i in range(100, 130)])  # one missing: read as float
    frame.to_csv(tmp_path / "t.csv", index=False)
    ids = load_csv(tmp_path / "t.csv", "y", id="pid").split("all").ids
    assert "101" in ids and "" in ids and not any(i.endswith(".0") for i in ids)


# --- csv --id / --drop / identifier columns -------------------------------------------------------

def test_drop_removes_columns_from_the_features(tmp_path):
    _table(note=[f"n{i % 5}" for i in range(40)]).to_csv(tmp_path / "t.csv", index=False)
    kept = load_csv(tmp_path / "t.csv", "y")
    dropped = load_dataset(f"csv:{tmp_path / 't.csv'}", target="y", drop=["note", "grade"])
    assert any(f.startswith("note=") for f in kept.info["features"])
    assert dropped.info["features"] == ["lab"]
    assert load_dataset(f"csv:{tmp_path / 't.csv'}", target="y", drop="note").info["features"] == ["lab", "grade"]
    assert dropped.info["fingerprint"] != kept.info["fingerprint"]


@pytest.mark.parametrize("option", [dict(id="nope"), dict(drop=("lab", "nope"))])
def test_unknown_id_or_drop_column_lists_the_columns(tmp_path, option):
    _table().to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(MedTransferError, match=r"'nope' not in \S*t\.csv; columns are: lab, grade, y"):
        load_dataset(f"csv:{tmp_path / 't.csv'}", target="y", **option)


@pytest.mark.parametrize("option, flag", [(dict(id="y"), "--id"), (dict(drop=("y",)), "--drop")])
def test_the_label_column_is_neither_id_nor_dropped(tmp_path, option, flag):
    _table().to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(MedTransferError, match=f"{flag} y names the label column"):
        load_csv(tmp_path / "t.csv", "y", **option)


@pytest.mark.parametrize("column", [
    [f"P{i:04d}" for i in np.random.default_rng(0).permutation(40)],  # text, all distinct
    list(np.random.default_rng(0).permutation(40) + 1000),  # integers 1000..1039, shuffled: consecutive
    list(np.cumsum(np.random.default_rng(0).integers(1, 9, 40))),  # integers growing down the file
])
def test_identifier_like_feature_is_refused_naming_it(tmp_path, column):
    _table(code=column).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(MedTransferError, match=r"column 'code' .*--id code .*--drop code") as err:
        load_csv(tmp_path / "t.csv", "y")
    assert "\n" not in str(err.value)
    assert load_csv(tmp_path / "t.csv", "y", id="code").split("all").ids  # named as the id: accepted
    assert "code" not in load_csv(tmp_path / "t.csv", "y", drop=("code",)).encoder.numeric


@pytest.mark.parametrize("column", [
    list(np.arange(40, dtype=float)),  # float: never refused, even counting 0, 1, 2…
    list(np.random.default_rng(0).normal(size=40)),  # distinct measurements
    list(np.random.default_rng(0).choice(10_000, 40, replace=False)),  # distinct integers, neither run nor sorted
    [f"P{i % 20}" for i in range(40)],  # text with repeats
])
def test_measurement_like_columns_are_kept(tmp_path, column):
    _table(code=column).to_csv(tmp_path / "t.csv", index=False)
    features = load_csv(tmp_path / "t.csv", "y").info["features"]
    assert "code" in features or any(f.startswith("code=") for f in features)


def test_small_tables_are_not_judged(tmp_path):
    from medtransfer.data.tabular import is_identifier

    assert not is_identifier(pd.Series(list(range(9))))
    assert is_identifier(pd.Series(list(range(10))))
    assert not is_identifier(pd.Series([True, False] * 6))


# --- manifest: -----------------------------------------------------------------------------------

def _manifest(tmp_path, n_patients=24, per_patient=2, split=None, extra=None, name="m.csv"):
    """Images of patients p00..; patient k has label 'pos' when k is odd. Returns the manifest frame."""
    rows = []
    for k in range(n_patients):
        for j in range(per_patient):
            rel = f"img/p{k:02d}_{j}.png"
            _png(tmp_path / rel, value=(k * 7 + j) % 256)
            rows.append({"path": rel, "label": "pos" if k % 2 else "neg", "patient": f"p{k:02d}",
                         **({"split": split(k)} if split else {})})
    frame = pd.DataFrame(rows)
    for col, values in (extra or {}).items():
        frame[col] = values
    frame.to_csv(tmp_path / name, index=False)
    return frame


def test_manifest_draws_a_patient_level_seeded_split(tmp_path):
    _manifest(tmp_path)
    ds = load_dataset(f"manifest:{tmp_path / 'm.csv'}", split_seed=3)
    assert ds.name == "manifest:m.csv" and ds.classes == ["neg", "pos"] and ds.task == "binary"
    assert ds.info["split_seed"] == 3 and ds.info["group"] == "patient" and ds.info["fingerprint"]
    assert ds.input_shape == (1, 4, 4)
    seen = _assert_no_patient_in_two_splits({s: _patient_of(ds, s) for s in ("train", "val", "test")})
    assert len(seen) == 24 and len(ds.split("all")) == 48
    for split in ("train", "val", "test"):
        s = ds.split(split)
        assert set(s.y.tolist()) == {0, 1}
        assert all(i.startswith("img/p") for i in s.ids)  # the path as written
        assert [ds.classes[int(y)] for y in s.y] == ["pos" if int(p[1:]) % 2 else "neg" for p in _patient_of(ds, split)]
    again, other = (load_manifest(tmp_path / "m.csv", seed=k) for k in (3, 4))
    assert again.test.ids == ds.test.ids and other.test.ids != ds.test.ids
    assert other.info["fingerprint"] != ds.info["fingerprint"]


def test_manifest_without_patients_splits_by_image(tmp_path):
    frame = _manifest(tmp_path, n_patients=10, per_patient=3)
    frame.drop(columns=["patient"]).to_csv(tmp_path / "m.csv", index=False)
    ds = load_manifest(tmp_path / "m.csv")
    assert "group" not in ds.info and len(ds.split("all")) == 30
    assert sorted(ds.split("all").ids) == sorted(frame["path"])


def test_manifest_target_and_group_name_other_columns(tmp_path):
    frame = _manifest(tmp_path, extra={"finding": None, "mrn": None})
    frame["finding"], frame["mrn"] = frame.pop("label"), frame.pop("patient")
    frame.to_csv(tmp_path / "m.csv", index=False)
    ds = load_dataset(f"manifest:{tmp_path / 'm.csv'}", target="finding", group="mrn")
    assert ds.classes == ["neg", "pos"] and ds.info["group"] == "mrn"
    _assert_no_patient_in_two_splits({s: _patient_of(ds, s) for s in ("train", "val", "test")})
    with pytest.raises(MedTransferError, match=r"no label column \(--target\) 'label'.*columns found: path, "):
        load_manifest(tmp_path / "m.csv")


def test_manifest_keeps_a_given_split_and_absolute_paths(tmp_path):
    frame = _manifest(tmp_path, n_patients=12, split=lambda k: ("test", "val", "train", "train")[k % 4])
    frame.loc[0, "path"] = str((tmp_path / frame.loc[0, "path"]).resolve())
    frame.to_csv(tmp_path / "m.csv", index=False)
    ds = load_manifest(tmp_path / "m.csv", seed=5)
    assert "split_seed" not in ds.info  # the user's split
    for split in ("train", "val", "test"):
        assert ds.split(split).ids == list(frame.loc[frame["split"] == split, "path"])


def test_manifest_given_split_without_val_carves_it_by_patient(tmp_path):
    _manifest(tmp_path, n_patients=30, split=lambda k: "test" if k < 6 else "train")
    ds = load_manifest(tmp_path / "m.csv")
    assert len(ds.val) > 0
    _assert_no_patient_in_two_splits({s: _patient_of(ds, s) for s in ("train", "val", "test")})


def test_manifest_patient_in_two_given_splits_is_refused(tmp_path):
    frame = _manifest(tmp_path, n_patients=12, split=lambda k: "train" if k < 8 else "test")
    frame.loc[frame["path"] == "img/p09_1.png", "split"] = "val"
    frame.to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(MedTransferError, match=r"patient 'p09' \(patient column 'patient'\) has images in val and "
                                               r"test") as err:
        load_manifest(tmp_path / "m.csv")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("change, message", [
    (lambda f: f.assign(split=["training"] + ["train"] * (len(f) - 1)), r"column 'split' holds 'training' on line 2; "
                                                                        "use train, val or test"),
    (lambda f: f.drop(columns=["path"]), r"no path column 'path'; the manifest needs columns path, label"),
    (lambda f: f.assign(path=f["path"].where(f.index != 3, "img/nope.png")), r"1 listed image\(s\) not found "
                                                                              r"\('img/nope.png' on line 5\)"),
    (lambda f: f.assign(label=f["label"].where(f.index != 2, "")), r"column 'label' is empty on line 4"),
    (lambda f: f.assign(path=f["path"].where(f.index != 1, f["path"][0])), r"lines 2, 3 list the same image"),
])
def test_manifest_mistakes_are_one_clear_line(tmp_path, change, message):
    change(_manifest(tmp_path)).to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(MedTransferError, match=message) as err:
        load_manifest(tmp_path / "m.csv")
    assert "\n" not in str(err.value)


def test_manifest_missing_file_and_missing_group_column(tmp_path):
    with pytest.raises(MedTransferError, match="file not found"):
        load_dataset(f"manifest:{tmp_path / 'absent.csv'}")
    _manifest(tmp_path)
    with pytest.raises(MedTransferError, match=r"no patient column \(--group\) 'subject'"):
        load_dataset(f"manifest:{tmp_path / 'm.csv'}", group="subject")


def test_manifest_with_only_test_rows_is_for_evaluation_only(tmp_path):
    _manifest(tmp_path, n_patients=6, split=lambda k: "test")
    ds = load_dataset(f"manifest:{tmp_path / 'm.csv'}")
    assert ds.info["evaluation_only"] and len(ds.train) == 0 and len(ds.test) == 12
    with pytest.raises(MedTransferError, match="can be evaluated on"):
        require_classes(ds, f"manifest:{tmp_path / 'm.csv'}")


# --- folder --group PatientID ----------------------------------------------------------------------

def _dicom_folders(root, n_patients=24, per_patient=2, split=None):
    for k in range(n_patients):
        label = "pos" if k % 2 else "neg"
        for j in range(per_patient):
            where = root / (split(k) if split else "") / label / f"p{k:02d}_{j}.dcm"
            _dicom(where, value=k, patient=f"P{k:02d}")


def test_folder_group_makes_the_split_patient_level(tmp_path):
    _dicom_folders(tmp_path)
    ds = load_dataset(f"folder:{tmp_path}", group="PatientID", split_seed=2)
    assert ds.info["group"] == "PatientID" and ds.info["split_seed"] == 2
    seen = _assert_no_patient_in_two_splits({s: _patient_of(ds, s) for s in ("train", "val", "test")})
    assert len(seen) == 24
    for split in ("train", "val", "test"):
        assert set(ds.split(split).y.tolist()) == {0, 1}
    plain = load_folder(tmp_path, seed=2)
    assert plain.info["fingerprint"] != ds.info["fingerprint"]  # the group shapes the split: another dataset
    assert "group" not in plain.info


def test_folder_group_refuses_a_patient_across_split_folders(tmp_path):
    _dicom_folders(tmp_path, n_patients=12, split=lambda k: "test" if k < 4 else "train")
    _dicom(tmp_path / "test" / "pos" / "again.dcm", patient="P07")  # P07 is a training patient
    with pytest.raises(MedTransferError, match=r"patient 'P07' \(--group PatientID\) has images in train and test"):
        load_folder(tmp_path, group="PatientID")


@pytest.mark.parametrize("make, message", [
    (lambda root: _png(root / "neg" / "x.png"), r"x\.png: not a DICOM file \(\.dcm\), so it has no PatientID"),
    (lambda root: _dicom(root / "neg" / "anon.dcm", patient=None), r"anon\.dcm: has no PatientID"),
    (lambda root: _dicom(root / "neg" / "blank.dcm", patient=""), r"blank\.dcm: has no PatientID"),
])
def test_folder_group_needs_the_tag_on_every_image(tmp_path, make, message):
    _dicom_folders(tmp_path, n_patients=12)
    make(tmp_path)
    with pytest.raises(MedTransferError, match=message) as err:
        load_folder(tmp_path, group="PatientID")
    assert "\n" not in str(err.value)


def test_folder_group_must_be_a_dicom_keyword_and_enough_patients(tmp_path):
    _dicom_folders(tmp_path, n_patients=4)
    with pytest.raises(MedTransferError, match="--group Patient is not a DICOM keyword"):
        load_folder(tmp_path, group="Patient")
    with pytest.raises(MedTransferError, match=r"4 patient\(s\) \(--group PatientID\) are too few"):
        load_folder(tmp_path, group="PatientID")


# --- test-only folders: evaluation only ----------------------------------------------------------

def test_test_only_folder_is_for_evaluation_only(tmp_path):
    for c, n in (("neg", 3), ("pos", 2)):
        for i in range(n):
            _png(tmp_path / "test" / c / f"{i}.png", value=i)
    _png(tmp_path / "val" / "neg" / "0.png")
    spec = f"folder:{tmp_path}"
    ds = load_dataset(spec)
    assert ds.info["evaluation_only"] and ds.info["layout"] == "split-folders"
    assert ds.classes == ["neg", "pos"] and (len(ds.train), len(ds.val), len(ds.test)) == (0, 1, 5)
    assert ds.train.x.shape == (0, 1, 4, 4) and ds.train.ids == [] and ds.input_shape == (1, 4, 4)
    assert ds.split("all").ids == ["val/neg/0.png", "test/neg/0.png", "test/neg/1.png", "test/neg/2.png",
                                   "test/pos/0.png", "test/pos/1.png"]
    with pytest.raises(MedTransferError, match=rf"can be evaluated on \(medtransfer evaluate RUN --data {spec}\) "
                                               "but not trained on") as err:
        require_classes(ds, spec)
    assert "\n" not in str(err.value)


def test_empty_train_folder_is_still_a_mistake(tmp_path):
    _png(tmp_path / "test" / "a" / "0.png")
    (tmp_path / "train").mkdir()
    with pytest.raises(MedTransferError, match=r"needs images in train/<class>/"):
        load_folder(tmp_path)


def test_folders_with_train_are_not_evaluation_only(tmp_path):
    for split in ("train", "test"):
        for c in ("a", "b"):
            for i in range(3):
                _png(tmp_path / split / c / f"{i}.png")
    ds = load_folder(tmp_path)
    assert "evaluation_only" not in ds.info
    require_classes(ds, f"folder:{tmp_path}")


# --- check_options_used -------------------------------------------------------------------------

def test_label_options_are_every_option_a_scheme_may_read():
    assert LABEL_OPTIONS == ("target", "group", "id", "drop", "text")


@pytest.mark.parametrize("specs, values", [
    (["csv:a.csv"], dict(target="y", group="p", id="mrn", drop=("note",))),
    (["folder:x"], dict(group="PatientID")),
    (["manifest:m.csv"], dict(target="finding", group="mrn")),
    (["heart:va", "csv:a.csv"], dict(id="mrn")),  # read by one of the datasets
    (["shift:blur:folder:x"], dict(group="PatientID")),  # a wrapper reads what it wraps
    (["heart:va"], dict(target=None, group=None, id=None, drop=())),  # not given
    ([], dict(id="mrn")),  # no dataset to judge
])
def test_options_some_dataset_reads_are_accepted(specs, values):
    check_options_used(specs, **values)


@pytest.mark.parametrize("specs, values, message", [
    (["heart:va"], dict(id="mrn"), r"--id mrn would be ignored: heart:va takes no id option.*read by csv: and text-csv: datasets"),
    (["folder:x"], dict(drop=("a", "b")), r"--drop a b would be ignored: folder:x .*read by csv: datasets"),
    (["folder:x"], dict(target="y"), r"--target y would be ignored.*read by manifest:, csv: and text-csv: datasets"),
    (["medmnist:pneumoniamnist"], dict(group="PatientID"), r"--group PatientID would be ignored.*folder:, "
                                                           r"manifest:, csv: and text-csv: datasets"),
    (["shift:blur:medmnist:pneumoniamnist"], dict(group="PatientID"), "--group"),
])
def test_options_no_dataset_reads_are_refused(specs, values, message):
    with pytest.raises(MedTransferError, match=message) as err:
        check_options_used(specs, **values)
    assert "\n" not in str(err.value)


def test_check_options_used_keeps_the_positional_form():
    check_options_used(["csv:a.csv"], "y", "p")
    with pytest.raises(MedTransferError, match="--group p would be ignored"):
        check_options_used(["heart:va"], None, "p")
    with pytest.raises(TypeError, match="unknown option"):
        check_options_used(["heart:va"], colour="red")
