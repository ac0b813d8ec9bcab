"""The experiment folder: one writer at a time, and never another experiment's folder by mistake.

Why a lock: two processes on one folder ran the same cells twice, logged duplicates to MLflow and could
leave its SQLite store half-created, broken for every later run. The lock is an OS file lock (flock, via
`filelock`), held for the whole run from before the store is opened, so the kernel releases it when its
process ends, even on kill -9: a dead run never blocks the next. A small JSON beside it says who holds it.

Why a claim: `--out` pointed at another experiment's folder used to replace its config.yaml, results.csv
and report. A folder is resumed only when it holds this same experiment (same name, and every cell it
has is a cell of this grid: a grown grid resumes, a changed or shrunk one is another experiment, and so
is one begun under other medtransfer defaults, whose change is named).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from contextlib import contextmanager
from pathlib import Path

import yaml

from ..errors import MedTransferError
from .config import ExperimentConfig
from .grid import defaults_table, grid, settings_of

LOCK, HOLDER = "experiment.lock", "experiment.lock.json"
# What an experiment writes into its folder and --overwrite removes; anything else is left alone. The
# MLflow store stays: this process may hold it open, so its experiments are retired instead (`Tracker`).
DEFAULTS = "defaults.json"  # the defaults the grid's cells were trained under (`grid.defaults_table`)
OWN = ("config.yaml", "environment.json", DEFAULTS, "results.csv", "results.csv.tmp", "report.html", "report.md",
       "mlartifacts", "cells")


@contextmanager
def folder_lock(out: Path):
    """Hold the experiment folder's lock (created if needed) for the length of the block."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(out / LOCK), timeout=0)
    try:
        out.mkdir(parents=True, exist_ok=True)
        if not os.access(out, os.W_OK):
            raise PermissionError(13, "permission denied")
        lock.acquire()
    except Timeout:
        raise MedTransferError(busy(out)) from None
    except OSError as exc:
        raise MedTransferError(f"cannot write the experiment folder {out} ({exc.strerror or exc}); "
                               "choose another --out") from None
    try:
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        (out / HOLDER).write_text(json.dumps(holder))
        yield
    finally:
        (out / HOLDER).unlink(missing_ok=True)
        lock.release()


def busy(out: Path) -> str:
    """One line: who holds the folder, and what to do."""
    try:
        holder = json.loads((out / HOLDER).read_text())
        who = f"pid {holder['pid']} on {holder['host']}, since {holder['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        who = "a process that is just starting"
    return (f"{out} is in use by another medtransfer experiment ({who}); wait for it to finish, or stop it and run "
            "again: the lock is released as soon as its process ends (even if killed), so a lock left by a process "
            "that is gone never blocks")


def claim(out: Path, config: ExperimentConfig, overwrite: bool) -> bool:
    """Refuse a folder that holds something other than this experiment, unless `overwrite`. With `overwrite`
    the experiment files in it (another experiment's, or this one's: every cell then runs again) are removed,
    and nothing else. Returns whether something was replaced."""
    found = other_contents(out, config)
    if found is not None and not overwrite:
        raise MedTransferError(f"{out} {found}; choose another --out, or pass --overwrite to replace it")
    if found is None and not (overwrite and (out / "config.yaml").is_file()):
        return False  # an empty folder, or this experiment resumed
    for name in OWN:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    return True


def other_contents(out: Path, config: ExperimentConfig) -> str | None:
    """What in `out` is not this experiment (a phrase), or None when it is empty or holds this experiment."""
    existing = out / "config.yaml"
    if not existing.is_file():
        stray = sorted(p.name for p in out.iterdir() if p.name not in (LOCK, HOLDER) and not p.name.startswith("."))
        return f"is not empty and holds no experiment ({', '.join(stray[:3])}{', …' if len(stray) > 3 else ''})" \
            if stray else None
    rows = results_rows(out)
    try:
        old = ExperimentConfig(**yaml.safe_load(existing.read_text()))
    except Exception:  # noqa: BLE001 (any unreadable config.yaml is "not this experiment")
        return f"holds an experiment whose config.yaml cannot be read{rows}"
    if old.name != config.name:
        return f"holds another experiment, {old.name!r}{rows}"
    changed = changed_defaults(out / DEFAULTS)
    if changed:
        return f"holds experiment {old.name!r}{rows} trained under other medtransfer defaults ({changed})"
    dropped = cell_ids(old) - cell_ids(config)
    if dropped:
        return (f"holds experiment {old.name!r}{rows} with {len(dropped)} cells this config does not have "
                "(other settings, a smaller grid, or other medtransfer defaults)")
    return None


def changed_defaults(path: Path) -> str | None:
    """How the defaults recorded in `path` differ from today's ("image2d.layer_decay 0.7 -> 0.5", and how many
    more), or None when they are equal or were not recorded (then the cell ids tell)."""
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    old, new = flat(recorded), flat(defaults_table())
    differ = [k for k in sorted(old.keys() | new.keys()) if old.get(k, "unset") != new.get(k, "unset")]
    if not differ:
        return None
    first = differ[0]
    more = f", and {len(differ) - 1} more" if len(differ) > 1 else ""
    return f"{first} {old.get(first, 'unset')} -> {new.get(first, 'unset')}{more}"


def flat(table: dict, prefix: str = "") -> dict:
    """Nested dicts as one level of dotted keys (TRAINING.image2d.epochs -> its value)."""
    out = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        out |= flat(value, name + ".") if isinstance(value, dict) else {name: value}
    return out


def cell_ids(config: ExperimentConfig) -> set[str]:
    settings = settings_of(config)
    return {cell.id(settings) for cell in grid(config)}


def results_rows(out: Path) -> str:
    """' (64 rows in results.csv)', or '' when there is none."""
    path = out / "results.csv"
    if not path.is_file():
        return ""
    with path.open() as handle:
        return f" ({max(sum(1 for _ in handle) - 1, 0)} rows in results.csv)"
