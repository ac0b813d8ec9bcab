"""Physiological signals (ECG, EEG, wearables) as (N, C, T) tensors in their recorded units.

Schemes:
- `ucr:<prefix>[@LENGTH][@pooled]`: UCR/UEA-style `<prefix>_TRAIN.tsv` / `<prefix>_TEST.tsv` (label in
  column 0, one series per row); validation is a stratified 20% of TRAIN, TEST is the test split. `@pooled`
  pools both files and draws 60/20/20 splits: for a source, whose test split nobody reads, so that all its
  labelled series train it. `ucr:ECG200` finds the files in `--data-root` or in `../shared/data/signals/ecg`.
- `npz:<file>[@LENGTH]`: arrays `x` (N, T) or (N, C, T) and `y`; optionally `split` (train/val/test per
  example), `groups` (patient/subject: never split across train/val/test), `ids`, `classes` (names of
  integer labels) and `rate` (Hz).
- `signal-folder:<dir>[@LENGTH]`: one file per recording, `<dir>/<class>/*` or
  `<dir>/<split>/<class>/*`; `.npy` holds (T,) or (C, T), `.csv`/`.tsv`/`.txt` one column per channel
  (an optional header row).
- `eeg:bonn` / `eeg:delhi` (or a path to either zip) `[@RATEhz]`: the two epilepsy EEG sets of
  `../shared/data/signals/eeg`, seizure against non-seizure. Bonn's 23.6 s recordings are cut into
  windows of 5.12 s, the length of a Delhi segment; windows of one recording stay in one split.

`@LENGTH` resamples every recording to that many samples (anti-aliased polyphase filtering; recordings of
different lengths are refused without it); `@RATEhz` resamples to a sampling rate, which the loader must
know. The rate is recorded (`info["rate"]`, the model's input spec), so a model is never run on signals
sampled at another rate. Standardisation is the model's (per channel, fitted on its training split).
"""

from __future__ import annotations

import io
import re
import zipfile
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from ..errors import MedTransferError
from .base import Split, TaskDataset
from .fingerprint import digest, file_digest, files_digest
from .schemes import LoadOptions, register_scheme

SIGNAL_SUFFIXES = (".npy", ".csv", ".tsv", ".txt")
SHARED = Path("../shared/data/signals")  # the shared data beside the repository (relative to the working folder)
VAL_FRACTION, TEST_FRACTION = 0.2, 0.2
SEIZURE = ["non-seizure", "seizure"]
WINDOW_SECONDS = 5.12  # one New Delhi segment (1,024 samples at 200 Hz); Bonn is cut into windows this long

# Class names of the UCR sets the project uses (their labels are numbers); others keep the numbers.
UCR_CLASSES = {
    "ECG200": {"-1": "myocardial infarction", "1": "normal"},
    "ECG5000": {"1": "normal", "2": "R-on-T PVC", "3": "PVC", "4": "SP or EB", "5": "unclassified beat"},
}


# ----------------------------------------------------------------------------- resampling and stacking


def parse_resampling(arg: str, scheme: str, words: tuple[str, ...] = ()) -> tuple:
    """'ECG200@140' -> ('ECG200', 140, None); 'bonn@200hz' -> ('bonn', None, 200.0); 'x' -> ('x', None, None).
    With `words` (e.g. ("pooled",)), a fourth item: the set of those words given as '@word'."""
    name, *suffixes = arg.split("@")
    length, rate, given = None, None, set()
    for suffix in suffixes:
        text = suffix.strip().lower()
        match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*hz", text)
        if match and float(match.group(1)) > 0 and rate is None:
            rate = float(match.group(1))
        elif text.isdigit() and int(text) >= 8 and length is None:
            length = int(text)
        elif text in words:
            given.add(text)
        else:
            extra = "".join(f", @{w}" for w in words)
            raise MedTransferError(f"bad modifier '@{suffix}' in {scheme}:{arg}: use @LENGTH (samples, >= 8, e.g. @140) "
                                   f"or @RATEhz (e.g. @200hz){extra}")
    return (name, length, rate, given) if words else (name, length, rate)


def resample(x: np.ndarray, length: int) -> np.ndarray:
    """(..., T) -> (..., length) by polyphase filtering (scipy's anti-aliased resample_poly)."""
    from scipy.signal import resample_poly

    t = x.shape[-1]
    if t == length:
        return x
    ratio = Fraction(length, t).limit_denominator(1000)
    out = resample_poly(x, ratio.numerator, ratio.denominator, axis=-1)
    if out.shape[-1] < length:  # a rounded ratio can fall a sample short: repeat the edge
        out = np.concatenate([out, np.repeat(out[..., -1:], length - out.shape[-1], axis=-1)], axis=-1)
    return out[..., :length]


def as_channels(array: np.ndarray, where: str) -> np.ndarray:
    """One recording as (C, T) float64: a (T,) series is one channel."""
    array = np.asarray(array)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[1] == 0:
        raise MedTransferError(f"{where}: a recording must be (T,) or (channels, T) samples, got shape "
                               f"{tuple(array.shape)}")
    try:
        return array.astype(np.float64)
    except (TypeError, ValueError):
        raise MedTransferError(f"{where}: holds non-numeric samples ({array.dtype}); a recording is numbers only") \
            from None


def stack_recordings(recordings: list[np.ndarray], where: list[str], length: int | None = None,
                     scheme_hint: str = "") -> np.ndarray:
    """Recordings (C, T) -> one (N, C, T) float32 array. Every recording must have the channels of the first
    (else one line naming the file); lengths must agree unless `length` resamples them all; every sample
    must be finite."""
    channels = recordings[0].shape[0]
    for rec, name in zip(recordings, where):
        if rec.shape[0] != channels:
            raise MedTransferError(f"{name}: has {rec.shape[0]} channel(s), but {where[0]} has {channels}; every "
                                   "recording of a dataset needs the same channels (leads), in the same order")
    if length is not None:
        recordings = [resample(rec, length) for rec in recordings]
    lengths = {rec.shape[1] for rec in recordings}
    if len(lengths) > 1:
        first = recordings[0].shape[1]
        odd = next(i for i, rec in enumerate(recordings) if rec.shape[1] != first)
        raise MedTransferError(f"ragged signals: {where[0]} has {first} samples but {where[odd]} has "
                               f"{recordings[odd].shape[1]}; resample them to one length with "
                               f"{scheme_hint or 'the dataset'}@LENGTH (e.g. @{first})")
    x = np.stack(recordings).astype(np.float32)
    bad = ~np.isfinite(x)
    if bad.any():
        i = int(np.argwhere(bad)[0][0])
        raise MedTransferError(f"{where[i]}: holds missing or infinite samples (NaN/inf); fill or trim them before "
                               "loading (a UCR file pads shorter series with NaN: give @LENGTH to resample each "
                               "series without its padding)")
    return x


def resample_to_rate(recordings: list[np.ndarray], rate: float, new_rate: float | None) -> tuple[list, float]:
    if new_rate is None or abs(new_rate - rate) < 1e-9:
        return recordings, rate
    return [resample(rec, max(8, round(rec.shape[1] * new_rate / rate))) for rec in recordings], new_rate


def class_indices(labels: list, names: dict | None = None) -> tuple[np.ndarray, list[str]]:
    """Labels (numbers or names) -> (indices, class names): numbers in numeric order, names sorted."""
    texts = [str(v) for v in labels]
    unique = sorted(set(texts), key=lambda v: (0, float(v), v) if _is_number(v) else (1, 0.0, v))
    index = {v: i for i, v in enumerate(unique)}
    classes = [names.get(v, v) if names else v for v in unique]
    return np.array([index[v] for v in texts], dtype=np.int64), classes


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def split_three(y: np.ndarray, groups: np.ndarray | None, seed: int, where: str) -> dict[str, np.ndarray]:
    """Stratified (and, with groups, grouped) train/val/test indices, seeded."""
    from .tabular import split_indices

    try:
        train, val, test = split_indices(y, groups, seed, VAL_FRACTION, TEST_FRACTION)
    except ValueError as exc:
        raise MedTransferError(f"{where}: cannot split {len(y)} recordings into stratified train/val/test "
                               f"({str(exc).splitlines()[0]}); give more recordings per class, or the splits "
                               "yourself") from None
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def holdout(y: np.ndarray, fraction: float, seed: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held out) indices: a stratified, seeded `fraction` held out (a UCR TRAIN file's validation split)."""
    from sklearn.model_selection import train_test_split

    try:
        kept, held = train_test_split(np.arange(len(y)), test_size=fraction, stratify=y, random_state=seed)
    except ValueError as exc:
        raise MedTransferError(f"{where}: cannot hold out a stratified validation split from {len(y)} series "
                               f"({str(exc).splitlines()[0]}); every class needs at least 2 series") from None
    return np.sort(kept), np.sort(held)


def signal_dataset(name: str, x: np.ndarray, y: np.ndarray, ids: list[str], parts: dict[str, np.ndarray],
                   classes: list[str], info: dict) -> TaskDataset:
    """The TaskDataset of stacked signals `x` (N, C, T), labels and ids, split by index arrays."""
    splits = {part: Split(torch.from_numpy(x[index]), torch.from_numpy(y[index]), [ids[i] for i in index])
              for part, index in parts.items()}
    return TaskDataset(name=name, modality="signal", task="binary" if len(classes) == 2 else "multiclass",
                       classes=list(classes), info=info, **splits)


def locate(name: str, scheme: str, folder: str, suffixes: tuple[str, ...], data_root) -> Path:
    """A path as given, else a bare name looked up in --data-root, then in ../shared/data/signals/<folder>."""
    given = Path(name).expanduser()
    if any(given.with_name(given.name + s).exists() for s in suffixes) or given.exists():
        return given
    roots = ([Path(data_root).expanduser()] if data_root else []) + [SHARED / folder]
    for root in roots:
        candidate = root / name
        if candidate.exists() or any(candidate.with_name(candidate.name + s).exists() for s in suffixes):
            return candidate
    looked = ", ".join(str(r) for r in roots)
    raise MedTransferError(f"{scheme}:{name}: no such file (looked as given and in {looked}); give the path, or "
                           "point --data-root at the folder holding it")


# ----------------------------------------------------------------------------- ucr:


def read_ucr(path: Path) -> tuple[list[str], list[np.ndarray]]:
    """(labels, series) of one UCR TSV file; trailing NaN (the archive's padding of shorter series) dropped."""
    import pandas as pd

    try:
        frame = pd.read_csv(path, sep="\t", header=None, dtype=str, encoding="utf-8")
    except UnicodeDecodeError:
        raise MedTransferError(f"{path}: is not UTF-8 text; a UCR file is tab-separated numbers") from None
    except pd.errors.EmptyDataError:
        raise MedTransferError(f"{path}: is empty; a UCR file has one series per row, its label first") from None
    if frame.shape[1] < 2:
        raise MedTransferError(f"{path}: has {frame.shape[1]} column(s); a UCR file has the label in column 0 and "
                               "the samples after it, tab-separated")
    try:
        values = frame.iloc[:, 1:].astype(np.float64).to_numpy()
    except ValueError as exc:
        raise MedTransferError(f"{path}: holds a non-numeric sample ({exc}); a UCR file is numbers only") from None
    labels = [_label_text(v) for v in frame.iloc[:, 0]]
    series = []
    for row in values:
        finite = np.flatnonzero(~np.isnan(row))
        series.append(row[: finite[-1] + 1 if len(finite) else 0])
    return labels, series


def _label_text(value: str) -> str:
    """'1.0000000e+00' and '1' are one class: numeric labels as their shortest number."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value).strip()
    return str(int(number)) if number.is_integer() else repr(number)


@register_scheme("ucr", help="UCR/UEA-style series, <prefix>_TRAIN.tsv and <prefix>_TEST.tsv, label in column 0, e.g. "
                             "ucr:ECG200 or ucr:path/to/ECG200@140 (@LENGTH resamples; @pooled pools TRAIN and TEST "
                             "and draws the splits, for a source)", reads=())
def load_ucr(arg: str, options: LoadOptions) -> TaskDataset:
    name, length, rate, words = parse_resampling(arg, "ucr", ("pooled",))
    if rate is not None:
        raise MedTransferError(f"ucr:{arg}: UCR files do not state their sampling rate, so @{rate:g}hz cannot apply; "
                               "resample to a length instead (@LENGTH)")
    prefix = locate(name, "ucr", "ecg", ("_TRAIN.tsv",), options.data_root)
    files = {part: prefix.with_name(f"{prefix.name}_{part.upper()}.tsv") for part in ("train", "test")}
    for part, file in files.items():
        if not file.is_file():
            raise MedTransferError(f"ucr:{arg}: {file} not found; a UCR dataset is two files, "
                                   f"{prefix.name}_TRAIN.tsv and {prefix.name}_TEST.tsv")
    read = {part: read_ucr(file) for part, file in files.items()}
    labels = read["train"][0] + read["test"][0]
    series = read["train"][1] + read["test"][1]
    ids = [f"train/{i}" for i in range(len(read["train"][0]))] + [f"test/{i}" for i in range(len(read["test"][0]))]
    x = stack_recordings([as_channels(s, i) for s, i in zip(series, ids)], [f"{files[i.split('/')[0]]} row "
                         f"{int(i.split('/')[1]) + 1}" for i in ids], length, f"ucr:{name}")
    y, classes = class_indices(labels, UCR_CLASSES.get(prefix.name))
    n_train = len(read["train"][0])
    if "pooled" in words:  # a source: every labelled series counts (ECG5000's TEST file holds 4,500 of its 5,000)
        parts = split_three(y, None, options.split_seed, f"ucr:{arg}")
    else:
        train, val = holdout(y[:n_train], VAL_FRACTION, options.split_seed, str(files["train"]))
        parts = {"train": train, "val": val, "test": np.arange(n_train, len(y))}
    info = {"file": str(files["train"]), "split_seed": options.split_seed, "rate": None,
            "fingerprint": digest("ucr", file_digest(files["train"]), file_digest(files["test"]), length,
                                  sorted(words), options.split_seed)}
    suffix = "".join(f"@{w}" for w in sorted(words)) + (f"@{length}" if length else "")
    return signal_dataset(f"ucr:{name}{suffix}", x, y, ids, parts, classes, info)


# ----------------------------------------------------------------------------- npz:


@register_scheme("npz", help="signals as arrays in a .npz: x (N, T) or (N, C, T) and y; optional split, groups, ids, "
                             "classes, rate; e.g. npz:ecg.npz", reads=())
def load_npz(arg: str, options: LoadOptions) -> TaskDataset:
    name, length, new_rate = parse_resampling(arg, "npz")
    path = Path(name).expanduser()
    if not path.is_file():
        raise MedTransferError(f"npz:{arg}: {path} not found")
    try:
        arrays = dict(np.load(path, allow_pickle=False))
    except Exception as exc:
        raise MedTransferError(f"{path}: is not a readable .npz of plain arrays ({exc.__class__.__name__}); save it "
                               "with numpy.savez(path, x=..., y=...)") from None
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        raise MedTransferError(f"{path}: lacks the array(s) {missing}; a signal .npz holds x (N, T) or (N, C, T) and "
                               f"y (N,); it has {sorted(arrays)}")
    x, labels = arrays["x"], arrays["y"].reshape(-1)
    if x.ndim not in (2, 3) or len(x) != len(labels):
        raise MedTransferError(f"{path}: x has shape {tuple(x.shape)} and y {len(labels)} labels; x must be (N, T) or "
                               "(N, C, T) with one label per recording")
    ids = [str(i) for i in arrays["ids"]] if "ids" in arrays else [f"{path.name}/{i}" for i in range(len(x))]
    recordings = [as_channels(rec, f"{path} recording {i}") for i, rec in enumerate(x)]
    rate = float(arrays["rate"]) if "rate" in arrays else None
    if new_rate is not None:
        if rate is None:
            raise MedTransferError(f"npz:{arg}: {path} has no 'rate' array, so @{new_rate:g}hz cannot apply; store "
                                   "the sampling rate (numpy.savez(..., rate=500)) or resample to a length")
        recordings, rate = resample_to_rate(recordings, rate, new_rate)
    stacked = stack_recordings(recordings, ids, length, f"npz:{name}")
    names = {str(i): str(n) for i, n in enumerate(arrays["classes"])} if "classes" in arrays else None
    y, classes = class_indices(list(labels), names)
    groups = arrays["groups"].astype(str) if "groups" in arrays else None
    if "split" in arrays:
        split = arrays["split"].astype(str)
        unknown = sorted(set(split) - {"train", "val", "test"})
        if unknown:
            raise MedTransferError(f"{path}: split holds {unknown}; use train, val and test")
        parts = {part: np.flatnonzero(split == part) for part in ("train", "val", "test")}
    else:
        parts = split_three(y, groups, options.split_seed, str(path))
    info = {"file": str(path), "rate": rate, "fingerprint": digest("npz", file_digest(path), length, new_rate,
                                                                   options.split_seed)}
    if "split" not in arrays:
        info["split_seed"] = options.split_seed
    return signal_dataset(f"npz:{name}", stacked, y, ids, parts, classes, info)


# ----------------------------------------------------------------------------- signal-folder:


def read_signal_file(path: Path, data: bytes | None = None) -> np.ndarray:
    """One recording file -> (C, T): .npy as (T,) or (C, T); a text table as one column per channel.
    `data`: the file's bytes already in memory (an upload to `medtransfer serve`; then `path` is only its name)."""
    where = str(path)
    if path.suffix.lower() == ".npy":
        try:
            return as_channels(np.load(path if data is None else io.BytesIO(data), allow_pickle=False), where)
        except MedTransferError:
            raise
        except Exception as exc:
            raise MedTransferError(f"{where}: is not a readable .npy array ({exc.__class__.__name__})") from None
    import pandas as pd

    sep = {".tsv": "\t", ".csv": ","}.get(path.suffix.lower(), r"\s+")  # .txt: whitespace, as Bonn's files
    try:
        text = (path.read_bytes() if data is None else data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MedTransferError(f"{where}: is not UTF-8 text (byte {exc.start}); save it as UTF-8 numbers, one column "
                               "per channel") from None
    if not text.strip():
        raise MedTransferError(f"{where}: is empty; a recording file holds one column of samples per channel")
    frame = pd.read_csv(io.StringIO(text), sep=sep, engine="python", header=None, dtype=str)
    first = frame.iloc[0].tolist()
    if not all(_is_number(str(v)) for v in first):  # a header row
        frame = frame.iloc[1:]
    try:
        values = frame.astype(np.float64).to_numpy()
    except ValueError as exc:
        raise MedTransferError(f"{where}: holds a non-numeric sample ({exc}); a recording is numbers only, one "
                               "column per channel") from None
    return as_channels(values.T, where)


def signal_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in SIGNAL_SUFFIXES)


@register_scheme("signal-folder", help="one recording file per example in <folder>/<class>/ (or <folder>/<split>/<class>/): "
                                       ".npy (T,) or (C, T), .csv/.tsv/.txt one column per channel", reads=())
def load_signal_folder(arg: str, options: LoadOptions) -> TaskDataset:
    name, length, rate = parse_resampling(arg, "signal-folder")
    if rate is not None:
        raise MedTransferError(f"signal-folder:{arg}: a folder of files does not state its sampling rate, so "
                               f"@{rate:g}hz cannot apply; resample to a length instead (@LENGTH)")
    root = Path(name).expanduser()
    if not root.is_dir():
        raise MedTransferError(f"signal-folder:{arg}: {root} is not a folder")
    files = signal_files(root)
    if not files:
        raise MedTransferError(f"{root}: holds no .npy/.csv/.tsv/.txt recordings in class sub-folders "
                               f"(<folder>/<class>/recording.csv)")
    relative = [f.relative_to(root).parts for f in files]
    given_splits = all(len(p) == 3 and p[0] in ("train", "val", "test") for p in relative)
    if not given_splits and not all(len(p) == 2 for p in relative):
        odd = next(f for f, p in zip(files, relative) if len(p) != 2)
        raise MedTransferError(f"{odd}: recordings go one folder deep, <folder>/<class>/file (or "
                               "<folder>/train|val|test/<class>/file)")
    ids = [f.relative_to(root).as_posix() for f in files]
    x = stack_recordings([read_signal_file(f) for f in files], [str(f) for f in files], length,
                         f"signal-folder:{name}")
    y, classes = class_indices([p[-2] for p in relative])
    if given_splits:
        split = np.array([p[0] for p in relative])
        parts = {part: np.flatnonzero(split == part) for part in ("train", "val", "test")}
    else:
        parts = split_three(y, None, options.split_seed, str(root))
    info = {"file": str(root), "rate": None, "fingerprint": digest("signal-folder", files_digest(files, root),
                                                                   length, options.split_seed)}
    if not given_splits:
        info["split_seed"] = options.split_seed
    return signal_dataset(f"signal-folder:{name}", x, y, ids, parts, classes, info)


# ----------------------------------------------------------------------------- eeg: (Bonn, New Delhi)


def read_bonn(archive: zipfile.ZipFile) -> tuple[list[np.ndarray], list[str], list[str]]:
    """Sets Z, O, N, F (non-seizure) and S (seizure): 100 recordings each, 4,097 samples at 173.61 Hz."""
    recordings, labels, ids = [], [], []
    for member in sorted(n for n in archive.namelist() if n.lower().endswith(".txt")):
        letter = Path(member).name[0].upper()
        if letter not in "ZONFS":
            continue
        recordings.append(np.loadtxt(io.BytesIO(archive.read(member)))[None, :])
        labels.append(SEIZURE[letter == "S"])
        ids.append(member)
    return recordings, labels, ids


def read_delhi(archive: zipfile.ZipFile) -> tuple[list[np.ndarray], list[str], list[str]]:
    """ictal (seizure), interictal and preictal (non-seizure): 50 segments each, 1,024 samples at 200 Hz."""
    from scipy.io import loadmat

    recordings, labels, ids = [], [], []
    for member in sorted(n for n in archive.namelist() if n.lower().endswith(".mat")):
        stage = Path(member).parent.name.lower()
        arrays = {k: v for k, v in loadmat(io.BytesIO(archive.read(member))).items() if not k.startswith("__")}
        recordings.append(np.asarray(next(iter(arrays.values())), dtype=np.float64).reshape(1, -1))
        labels.append(SEIZURE[stage == "ictal"])
        ids.append(member)
    return recordings, labels, ids


EEG_SETS = {"bonn": (read_bonn, 173.61), "delhi": (read_delhi, 200.0)}


def windows(recordings: list[np.ndarray], labels: list[str], ids: list[str], size: int):
    """Non-overlapping windows of `size` samples; each keeps its recording as its group."""
    out, out_labels, out_ids, groups = [], [], [], []
    for rec, label, rid in zip(recordings, labels, ids):
        for k in range(rec.shape[1] // size):
            out.append(rec[:, k * size:(k + 1) * size])
            out_labels.append(label)
            out_ids.append(f"{rid}#{k}")
            groups.append(rid)
    return out, out_labels, out_ids, np.array(groups)


@register_scheme("eeg", help="epilepsy EEG, seizure vs non-seizure: eeg:bonn or eeg:delhi (the zips of "
                             "../shared/data/signals/eeg, or a path to one), @RATEhz resamples, e.g. eeg:bonn@200hz",
                 reads=())
def load_eeg(arg: str, options: LoadOptions) -> TaskDataset:
    name, length, new_rate = parse_resampling(arg, "eeg")
    if length is not None:
        raise MedTransferError(f"eeg:{arg}: EEG is resampled by rate, not length (the windows are {WINDOW_SECONDS} s): "
                               "use @RATEhz, e.g. eeg:bonn@200hz")
    stem = Path(name).stem.lower()
    if stem not in EEG_SETS:
        raise MedTransferError(f"eeg:{arg}: unknown EEG set {stem!r}; choose bonn or delhi (or a path to bonn.zip or "
                               "delhi.zip)")
    path = locate(name if name.endswith(".zip") else f"{name}.zip", "eeg", "eeg", (), options.data_root)
    reader, rate = EEG_SETS[stem]
    try:
        with zipfile.ZipFile(path) as archive:
            recordings, labels, ids = reader(archive)
    except zipfile.BadZipFile:
        raise MedTransferError(f"{path}: is not a readable zip archive; replace it with the original file") from None
    if not recordings:
        raise MedTransferError(f"{path}: holds no {stem} EEG recordings; is it the file it is named after?")
    recordings, rate = resample_to_rate(recordings, rate, new_rate)
    groups = None
    if stem == "bonn":
        recordings, labels, ids, groups = windows(recordings, labels, ids, round(WINDOW_SECONDS * rate))
    x = stack_recordings(recordings, ids, None, f"eeg:{name}")
    y, classes = class_indices(labels)
    parts = split_three(y, groups, options.split_seed, str(path))
    info = {"file": str(path), "rate": rate, "positive": "seizure", "split_seed": options.split_seed,
            "fingerprint": digest("eeg", file_digest(path), rate, options.split_seed)}
    return signal_dataset(f"eeg:{stem}" + (f"@{rate:g}hz" if new_rate else ""), x, y, ids, parts, classes, info)
