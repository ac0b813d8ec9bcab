"""A run writes one directory: config.json, model.safetensors + model.json, metrics.json,
predictions.csv and log.txt. An existing run is never overwritten unless asked; with overwrite the
new run is written beside it and swapped in only once complete, so a failure loses nothing."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import MedTransferError


def clean_name(text) -> str:
    """A file-name-safe piece of a run or cell name: runs of other characters become one dash."""
    return re.sub(r"[^A-Za-z0-9.%-]+", "-", str(text)).strip("-")


def default_run_dir(*parts: str, root: str = "runs") -> Path:
    name = "_".join(clean_name(p) for p in parts if p)
    path, n = Path(root) / name, 2
    while path.exists():
        path, n = Path(root) / f"{name}-{n}", n + 1
    return path


def check_writable(out: Path, overwrite: bool) -> None:
    """Fail before any work is done, not after."""
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise MedTransferError(f"{out} already exists; choose another --out or pass --overwrite")


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
    path.write_text(json.dumps(data, indent=2, default=_plain))


def _plain(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, (Path, tuple, set)):
        return str(value) if isinstance(value, Path) else list(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def predictions_frame(split: str, y: np.ndarray, prob: np.ndarray, classes: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame(prob, columns=[f"prob_{c}" for c in classes])
    frame.insert(0, "index", np.arange(len(prob)))
    frame.insert(0, "split", split)
    if y.ndim == 1:
        frame.insert(2, "label", y)
    else:
        for j, c in enumerate(classes):
            frame.insert(2 + j, f"label_{c}", y[:, j])
    return frame
