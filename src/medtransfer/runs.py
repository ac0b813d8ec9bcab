"""A run writes one directory: config.json, model.safetensors + model.json, metrics.json,
predictions.csv and log.txt. An existing run is never overwritten unless asked; with overwrite the
new run is written beside it and swapped in only once complete, so a failure loses nothing."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import MedTransferError


def clean_name(text) -> str:
    """A file-name-safe piece of a run or cell name: runs of other characters become one dash."""
    return re.sub(r"[^A-Za-z0-9.%-]+", "-", str(text)).strip("-")


def file_digest(path: str | Path) -> str:
    """sha256 (hex) of a file's bytes, read in 1 MB blocks: what a file holds, wherever it lives (dataset
    fingerprints, the feature cache's code key, `code_digest`)."""
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def code_digest() -> str:
    """16 hex of the sha256 of every .py file of the installed medtransfer package (with its path inside it):
    which code a run ran, whatever the version string says (an editable install keeps its version across
    edits). Recorded in every run's config.json (`versions`); a grid's cells check it (`experiment.runner`).
    About 6 ms: read again at each call, so an edit on disk is seen."""
    root = Path(__file__).resolve().parent
    sha = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        sha.update(f"{path.relative_to(root).as_posix()}\0{file_digest(path)}\0".encode())
    return sha.hexdigest()[:16]


def default_run_dir(*parts: str, root: str = "runs") -> Path:
    name = "_".join(clean_name(p) for p in parts if p)
    path, n = Path(root) / name, 2
    while path.exists():
        path, n = Path(root) / f"{name}-{n}", n + 1
    return path


def check_writable(out: Path, overwrite: bool) -> None:
    """Fail before any work is done, not after: `out` must not hold an earlier run (unless overwriting)
    and the folder it goes in must be writable (a probe folder is created there and removed), since a
    run is staged beside `out` and renamed into place only at the end."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise MedTransferError(f"output {out} is a file, not a folder; choose another --out")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise MedTransferError(f"{out} already exists; choose another --out or pass --overwrite")
    probe_parent(out)


def check_file_writable(path: Path, option: str, overwrite: bool = False) -> None:
    """Refuse an output file that exists (unless `overwrite`) or cannot be written, before any work."""
    if path.exists() and not (overwrite and path.is_file()):
        how = "pass --overwrite or choose" if path.is_file() and option == "--out" else "choose"
        raise MedTransferError(f"{path} already exists; {how} another {option} path")
    folder = path.parent
    if not folder.is_dir():
        raise MedTransferError(f"cannot write {path}: {folder} is not a folder; create it or choose another {option}")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise MedTransferError(f"cannot write {path}: {folder} is not writable ({exc.strerror}); "
                               f"choose another {option}") from None


def probe_parent(out: Path) -> None:
    """Create and remove a probe folder where `out` will be created (its nearest existing ancestor)."""
    parent = Path(os.path.abspath(out)).parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise MedTransferError(f"cannot write {out}: {parent} is a file, not a folder; choose another --out")
    try:
        probe = Path(tempfile.mkdtemp(prefix=".medtransfer-probe-", dir=parent))
    except OSError as exc:
        raise MedTransferError(f"cannot write {out}: folder {parent} is not writable ({exc.strerror or exc}); "
                               "choose another --out or fix the folder's permissions") from None
    probe.rmdir()


def staging_dir(out: Path) -> Path:
    stage = out.with_name(out.name + ".partial")
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    return stage


def commit_dir(stage: Path, out: Path) -> None:
    """Swap the finished run in; the old one (when overwriting) is removed only afterwards."""
    old = out.with_name(out.name + ".old")
    if out.exists():
        out.rename(old)
    stage.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def write_json(path: Path, data) -> None:
    """Strict JSON (no NaN / Infinity tokens, which JSON does not have and strict readers refuse). An
    undefined value (nan: a metric with no positives, a CI without bootstrap) is written as null and
    `read_json` restores it in metric entries; an infinite value is a bug upstream and raises ValueError."""
    Path(path).write_text(dumps(data, indent=2, where=Path(path).stem))


def dumps(data, where: str = "value", **kwargs) -> str:
    """`json.dumps` as every file of the package is written: nan -> null, numpy scalars and arrays as
    numbers and lists, paths as text, and never NaN / Infinity (ValueError)."""
    return json.dumps(strict(data, where), allow_nan=False, **kwargs)


def strict(value, where: str = "value"):
    """`value` with every float nan replaced by None (recursively); other values as JSON takes them.
    An infinite number raises ValueError naming where it is (e.g. `metrics.test.auc.value`)."""
    if isinstance(value, dict):
        return {k: strict(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [strict(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, np.ndarray):
        return strict(value.tolist(), where)
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, float) and math.isinf(value):
        raise ValueError(f"{where} is {value}, which JSON cannot hold; an infinite number here is a bug")
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def read_json(path: Path):
    """A JSON file the package wrote. Metric entries ({"value": ..., "ci": [...]}) get nan back where
    an undefined value was written as null, so arithmetic on them works as before; older files with
    NaN tokens read as they always did."""
    return json.loads(Path(path).read_text(), object_hook=_metric_nan)


def _metric_nan(entry: dict) -> dict:
    if "value" in entry and "ci" in entry:
        nan = float("nan")
        entry = dict(entry, value=nan if entry["value"] is None else entry["value"])
        if isinstance(entry["ci"], list):
            entry["ci"] = [nan if v is None else v for v in entry["ci"]]
    return entry


def predictions_frame(split: str, y: np.ndarray, prob: np.ndarray, classes: list[str], ids: list[str] | None = None,
                      predicted: list[str] | None = None) -> pd.DataFrame:
    """One row per example: split, index, id (file path, row id), label(s), one probability per class and
    the class decided at the run's operating point."""
    frame = pd.DataFrame(prob, columns=[f"prob_{c}" for c in classes])
    frame.insert(0, "id", list(ids) if ids is not None else [f"{split}/{i}" for i in range(len(prob))])
    frame.insert(0, "index", np.arange(len(prob)))
    frame.insert(0, "split", split)
    if y.ndim == 1:
        frame.insert(3, "label", y)
    else:
        for j, c in enumerate(classes):
            frame.insert(3 + j, f"label_{c}", y[:, j])
    if predicted is not None:
        frame["predicted"] = list(predicted)
    return frame


@contextlib.contextmanager
def temporary_environ(values: dict[str, str]):
    """`values` in os.environ (so in the processes started meanwhile) for the duration, then as they were."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
