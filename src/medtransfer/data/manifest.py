"""`manifest:<file.csv>`: images listed in a table, one row per image, with their patients and splits.

Why: a hospital export rarely sorts images into class folders, and a split that is honest about new
patients must know whose each image is. Columns:

* `path`: the image file, relative to the CSV's folder or absolute (PNG/JPEG/BMP/TIFF/DICOM);
* `label`: its class (`--target COL` names another column);
* `patient` (optional; `--group COL` names another column): no patient's images straddle two splits;
* `split` (optional): train, val or test, kept as given (val carved from train when no row says val;
  no train row at all: evaluation only). Without it the split is drawn here, seeded and stratified,
  0.1 val and 0.2 test like folder:, by patient when patients are known.

Images are decoded as folder: decodes them (channels and size settled from the files); each keeps
its path as written in the manifest as its id.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from medtransfer.data.base import TaskDataset
from medtransfer.data.fingerprint import digest, file_digest
from medtransfer.data.folder import SPLIT_NAMES, decode_images, draw_split, image_dataset, keep_split
from medtransfer.data.schemes import LoadOptions, register_scheme
from medtransfer.errors import MedTransferError

PATH, LABEL, PATIENT, SPLIT = "path", "label", "patient", "split"
VAL_FRACTION, TEST_FRACTION = 0.1, 0.2  # as folder:
COLUMNS_HELP = "columns path, label, and optionally patient and split (train/val/test)"
FIX = "or give a split column"  # what else fixes a split drawn here


@register_scheme("manifest", help="a CSV listing images: columns path (relative to the CSV), label, optional "
                                  "patient (no patient in two splits) and split (train/val/test); --target and "
                                  "--group name other label and patient columns, e.g. manifest:./images.csv",
                 reads=("target", "group"))
def load_scheme(arg: str, options: LoadOptions) -> TaskDataset:
    return load_manifest(arg, seed=options.split_seed, label=options.target, patient=options.group)


def load_manifest(path: str | Path, seed: int = 0, label: str | None = None,
                  patient: str | None = None) -> TaskDataset:
    """The images a manifest CSV lists. label / patient: the label and patient column names (default
    `label`, and `patient` when the table has one)."""
    csv = Path(path).expanduser()
    where = f"manifest:{path}"
    if not csv.is_file():
        raise MedTransferError(f"{where}: file not found; give a CSV with {COLUMNS_HELP}")
    from medtransfer.data.tabular import read_csv  # here: the image schemes are listed before the table ones

    frame = read_csv(csv, dtype=str, keep_default_na=False)
    label = label or LABEL
    patient = patient or (PATIENT if PATIENT in frame.columns else None)
    table = _columns(frame, where, label, patient)
    written = table[PATH]
    files = _files(written, csv, where)
    classes = sorted(set(table[label]))
    labels = np.array([classes.index(v) for v in table[label]], dtype=np.int64)
    patients = np.array(table[patient], dtype=object) if patient else None
    source, drawn = f"patient column {patient!r}", SPLIT not in table
    if drawn:
        split_of = draw_split(labels, classes, patients, VAL_FRACTION, TEST_FRACTION, seed, strict=True,
                              where=where, source=source, fix=FIX)
    else:
        split_of = keep_split(labels, classes, _given_split(table[SPLIT], where), patients, VAL_FRACTION, seed,
                              where=where, source=source, fix=FIX)
        _check_train_classes(labels, classes, split_of, where)

    return image_dataset(
        f"manifest:{csv.name}", classes, decode_images(files, None, None), labels, split_of, written,
        info={"source": str(csv.resolve()), "layout": "manifest", "n_files": len(files),
              "fingerprint": digest("manifest", file_digest(csv), _files_digest(written, files), label, patient,
                                    seed if drawn else None),
              **({"group": patient} if patient else {}),
              **({"evaluation_only": True} if not (split_of == "train").any() else {}),
              **({"split_seed": seed} if drawn else {})},  # the test split was drawn here
    )


def _columns(frame, where: str, label: str, patient: str | None) -> dict[str, list[str]]:
    """The columns used, as stripped text; a missing column or an empty cell is refused."""
    named = {PATH: "path column", label: "label column (--target)",
             **({patient: "patient column (--group)"} if patient else {})}
    for col, what in named.items():
        if col not in frame.columns:
            raise MedTransferError(f"{where}: no {what} {col!r}; the manifest needs {COLUMNS_HELP} (columns found: "
                                   f"{', '.join(map(str, frame.columns))})")
    used = [*named, *([SPLIT] if SPLIT in frame.columns else [])]
    table = {col: [str(v).strip() for v in frame[col]] for col in used}
    for col, values in table.items():
        empty = [i for i, v in enumerate(values) if not v]
        if empty:
            raise MedTransferError(f"{where}: column {col!r} is empty on {_lines(empty)}; fill it or remove those "
                                   "rows")
    return table


def _files(written: list[str], csv: Path, where: str) -> list[Path]:
    """The listed files, relative paths from the manifest's folder; missing or repeated files refused."""
    files = [p if p.is_absolute() else csv.parent / p for p in (Path(w).expanduser() for w in written)]
    missing = [i for i, f in enumerate(files) if not f.is_file()]
    if missing:
        names = list(dict.fromkeys(written[i] for i in missing))
        shown = ", ".join(map(repr, names[:3])) + (", …" if len(names) > 3 else "")
        raise MedTransferError(f"{where}: {len(missing)} listed image(s) not found ({shown} on {_lines(missing)}); "
                               f"paths are relative to {csv.parent.resolve()} (or absolute): fix them or remove "
                               "those rows")
    first: dict[Path, int] = {}
    for i, f in enumerate(files):
        j = first.setdefault(f.resolve(), i)
        if j != i:
            raise MedTransferError(f"{where}: {_lines([j, i])} list the same image {written[i]!r}; list each image "
                                   "once (twice, it could be trained on and tested on)")
    return files


def _given_split(values: list[str], where: str) -> np.ndarray:
    names = [v.lower() for v in values]
    bad = [i for i, v in enumerate(names) if v not in SPLIT_NAMES]
    if bad:
        shown = ", ".join(sorted({repr(values[i]) for i in bad})[:5])
        raise MedTransferError(f"{where}: column 'split' holds {shown} on {_lines(bad)}; use train, val or test")
    return np.array(names, dtype=object)


def _check_train_classes(labels, classes, split_of, where: str) -> None:
    """With training rows, every class has some (a class seen only in test could never be predicted)."""
    trained = set(labels[split_of == "train"].tolist())
    missing = [c for k, c in enumerate(classes) if k not in trained]
    if trained and missing:
        raise MedTransferError(f"{where}: class {', '.join(map(repr, missing))} has val or test rows but no train "
                               "row; add training images of it or remove it")


def _lines(rows: list[int], k: int = 5) -> str:
    """'line 4' / 'lines 4, 9, … (12 rows)': CSV lines of 0-based data rows (line 1 is the header)."""
    shown = ", ".join(str(i + 2) for i in rows[:k])
    if len(rows) == 1:
        return f"line {shown}"
    return f"lines {shown}" + (f", … ({len(rows)} rows)" if len(rows) > k else "")


def _files_digest(written: list[str], files: list[Path]) -> str:
    """Each listed file as written, with its size and mtime: an image rewritten or relisted changes it."""
    sha = hashlib.sha256()
    for text, file in zip(written, files):
        st = os.stat(file)
        sha.update(f"{text}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return sha.hexdigest()
