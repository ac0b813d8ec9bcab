"""The experiment's records: results.csv (one row per finished or failed cell, rebuilt from the cell
folders and their failure records), environment.json, and the MLflow store (one MLflow run per finished
cell)."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from ..errors import MedTransferError
from ..runs import read_json, write_json
from .config import DP_NONE
from .grid import Cell

FAILED = ".failed.json"  # cells/<id>.failed.json: why the cell did not finish


def done(folder: Path) -> bool:
    return (folder / "metrics.json").is_file()


def error_line(exc: BaseException) -> str:
    """An error as one line: a MedTransferError's message, else the exception's name and first line."""
    text = str(exc) if isinstance(exc, MedTransferError) else f"{exc.__class__.__name__}: {exc}"
    return (text.strip().splitlines() or [exc.__class__.__name__])[0][:500]


def failure_file(folder: Path) -> Path:
    return folder.with_name(folder.name + FAILED)


def record_failure(cell: Cell, folder: Path, error: str, stage: str, trace: str | None = None) -> None:
    """Why a cell did not finish, kept beside its folder so results.csv and the report list it and a
    re-run retries it; `stage` is "preflight" (refused before any training) or "run"."""
    data = {"cell_id": folder.name, **asdict(cell), "stage": stage, "error": error,
            "when": time.strftime("%Y-%m-%d %H:%M:%S"), "traceback": trace}
    path = failure_file(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    write_json(tmp, data)
    os.replace(tmp, path)


def failure(folder: Path) -> str | None:
    """The recorded error of a cell that failed and has not finished since, else None."""
    path = failure_file(folder)
    if done(folder) or not path.is_file():
        return None
    try:
        return json.loads(path.read_text())["error"]
    except (ValueError, KeyError):
        return f"unreadable failure record {path.name}"


def failed_row(cell: Cell, folder: Path, error: str) -> dict:
    return {"cell_id": folder.name, "target": cell.target, "source": cell.source, "backbone": cell.backbone,
            "strategy": cell.strategy, "budget": cell.budget, "seed": cell.seed, **dp_columns(cell, {}),
            "error": error}


def dp_columns(cell: Cell, metrics: dict) -> dict:
    """A DP cell's --dp value and the guarantee its accountant gave (none for the cells without DP, so a
    grid without the dp axis keeps its results.csv columns)."""
    if cell.dp == DP_NONE:
        return {}
    dp = metrics.get("dp") or {}
    return {"dp": cell.dp, "dp_epsilon_target": dp.get("epsilon_target"), "dp_epsilon": dp.get("epsilon_spent"),
            "dp_delta": dp.get("delta"), "dp_noise_multiplier": dp.get("noise_multiplier")}


def row(cell: Cell, folder: Path, out: Path) -> dict:
    """A finished cell's results.csv row: its settings, every test metric with its CI, what validation
    said (the report chooses on it, never on test), and the operating point the test decisions used."""
    metrics = read_json(folder / "metrics.json")
    config = read_json(folder / "config.json")
    values = {"cell_id": folder.name, "target": cell.target, "source": cell.source,
              "backbone": config.get("backbone") or cell.backbone, "strategy": cell.strategy,
              "budget": cell.budget, "n_labels": config["n_train_labels"], "seed": cell.seed,
              "split_seed": config.get("split_seed", 0), "task": config["task"]}
    for name, m in metrics["test"].items():  # every registered metric the task has
        values.update({f"test_{name}": m["value"], f"test_{name}_lo": m["ci"][0], f"test_{name}_hi": m["ci"][1]})
    values.update(validation_columns(metrics))
    values.update(decision_columns(metrics, config, folder))
    values.update(dp_columns(cell, metrics))
    values["seconds"] = metrics["fit"].get("total_seconds")
    values["run_dir"] = str(folder.relative_to(out))
    return values


def mlflow_name(name: str) -> str:
    """A metric name MLflow accepts (alphanumerics, _ - . space : /): a per-class metric such as
    `test_sensitivity[Common Cold]` becomes `test_sensitivity.Common Cold`, any other character `_`."""
    import re

    name = name.replace("[", ".").replace("]", "")
    return re.sub(r"[^\w\-. :/]", "_", name)


def validation_columns(metrics: dict) -> dict:
    """The validation scores a report may choose a method by (empty when validation had no labels)."""
    val = metrics.get("val") or {}
    return {f"val_{name}": (val.get(name) or {}).get("value") for name in ("auc", "log_loss", "balanced_acc")}


def decision_columns(metrics: dict, config: dict, folder: Path) -> dict:
    """How the test decisions were made and what they came to: positive class, threshold rule and value,
    calibration, test size, and whether every decision fell in one class. Empty where a run folder from
    before operating points were saved does not say, rather than a guess."""
    point = metrics.get("operating_point") or {}
    calibration = metrics.get("calibration") or {}
    counts = metrics.get("test_counts") or {}
    predicted = metrics.get("predicted_counts")
    return {"positive": point.get("positive", config.get("positive")),
            "threshold_rule": point.get("rule", config.get("threshold")),
            "threshold": point.get("threshold"),
            "calibration": calibration.get("method") or "none",
            "n_test": counts.get("n") or config.get("n_test") or _test_rows(folder),
            "degenerate": one_class(predicted) if predicted else _degenerate_from_predictions(folder)}


def one_class(counts: dict) -> bool:
    """Whether decisions counted per class fell in a single class (a degenerate operating point)."""
    return sum(1 for n in counts.values() if n) == 1


def _test_predictions(folder: Path) -> pd.DataFrame | None:
    """The test rows of a cell's predictions.csv; None when there is none to read (then: not recorded)."""
    path = folder / "predictions.csv"
    try:
        frame = pd.read_csv(path, dtype={"predicted": str})
    except (OSError, ValueError):  # missing, empty or malformed: one cell's gap must not stop results.csv
        return None
    return frame[frame["split"] == "test"] if "split" in frame else None


def _test_rows(folder: Path) -> int | None:
    test = _test_predictions(folder)
    return len(test) if test is not None else None


def _degenerate_from_predictions(folder: Path) -> bool | None:
    """From predictions.csv's `predicted` column when metrics.json has no predicted_counts; None without it."""
    test = _test_predictions(folder)
    if test is None or "predicted" not in test or test.empty:
        return None
    return test["predicted"].nunique(dropna=True) == 1


class Results:
    """The tidy table: one row per finished cell, and one per failed cell with its `error`, in grid
    order, read from the cell folders. It is swapped in atomically (at most every few seconds while
    running, and at the end)."""

    def __init__(self, out: Path, cells: list):
        self.out, self.order = out, {folder.name: i for i, (_, folder) in enumerate(cells)}
        self.rows = {}
        for cell, folder in cells:
            self.set(cell, folder)
        self.written = 0.0

    def set(self, cell: Cell, folder: Path) -> None:
        """The cell's row as its folder says now: finished, failed (with its error), or none yet."""
        if done(folder):
            self.rows[folder.name] = row(cell, folder, self.out)
        elif (error := failure(folder)) is not None:
            self.rows[folder.name] = failed_row(cell, folder, error)
        else:
            self.rows.pop(folder.name, None)

    def add(self, cell: Cell, folder: Path) -> None:
        self.set(cell, folder)
        if time.monotonic() - self.written > 5:
            self.write()

    def failed(self) -> dict[str, str]:
        """cell id -> error, for the cells that failed."""
        return {name: r["error"] for name, r in self.rows.items() if "error" in r}

    def write(self) -> pd.DataFrame:
        ordered = [self.rows[k] for k in sorted(self.rows, key=self.order.get)]
        columns = dict.fromkeys(k for r in sorted(ordered, key=lambda r: "error" in r) for k in r)  # error last
        frame = pd.DataFrame(ordered, columns=list(columns))
        for name in ("n_labels", "seed", "split_seed", "n_test"):  # integers beside the empty cells of failed rows
            if name in frame:
                frame[name] = frame[name].astype("Int64")
        tmp = self.out / "results.csv.tmp"
        frame.to_csv(tmp, index=False)
        os.replace(tmp, self.out / "results.csv")
        self.written = time.monotonic()
        return frame


def forget_engine(uri: str) -> None:
    """MLflow keeps one SQLAlchemy engine per database URI for the life of the process, and its pooled
    connections would still read the file that was set aside. Private MLflow names: when they change,
    rebuilding fails with one line saying how to do it by hand (`Tracker.open`)."""
    try:
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
        from mlflow.tracking._tracking_service.utils import _tracking_store_registry
        engine = SqlAlchemyStore._engine_map.pop(uri, None)
        _tracking_store_registry._get_store_with_resolved_uri.cache_clear()
    except (ImportError, AttributeError):
        return
    if engine is not None:
        engine.dispose()


def write_environment(out: Path) -> None:
    import platform

    import torch

    from ..pipeline.run_folder import versions
    env = versions() | {"platform": platform.platform(), "cpus": os.cpu_count(),
                        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    write_json(out / "environment.json", env)


class Tracker:
    """MLflow store: one MLflow run per finished cell, tagged with its cell id. Runs that a kill left
    unfinished are deleted, and `sync` logs what is missing, so the store matches the cell folders."""

    def __init__(self, out: Path, name: str, replace: bool = False):
        try:
            import mlflow
        except ImportError:
            self.client = None
            return
        import logging
        logging.getLogger("alembic").setLevel(logging.WARNING)
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        self.client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{(out / 'mlflow.db').resolve()}")
        if replace:
            self.retire()
        found = self.client.get_experiment_by_name(name)
        self.experiment = found.experiment_id if found else self.client.create_experiment(
            name, artifact_location=(out / "mlartifacts").resolve().as_uri())
        self.runs = self.finished_cells()

    @classmethod
    def open(cls, out: Path, name: str, replace: bool = False, say=print) -> "Tracker":
        """The store, or a fresh one when the file cannot be opened (e.g. half-created by two processes
        before the folder lock existed): it only mirrors the cell folders, so the unreadable file is set
        aside, kept, and the store is rebuilt, instead of failing every later run until deleted by hand."""
        db = out / "mlflow.db"
        try:
            return cls(out, name, replace)
        except Exception as exc:  # noqa: BLE001 (SQLAlchemy, alembic and MLflow errors alike)
            if not db.is_file():
                raise
            aside = db.with_name(f"mlflow.db.unreadable-{time.strftime('%Y%m%d-%H%M%S')}")
            db.rename(aside)
            forget_engine(f"sqlite:///{db.resolve()}")
            say(f"MLflow store {db} could not be opened ({error_line(exc)[:160]}); kept as {aside.name}, "
                "rebuilding the store from the cell folders")
        try:
            return cls(out, name)
        except Exception as exc:  # noqa: BLE001
            raise MedTransferError(f"MLflow store {db} cannot be opened ({error_line(exc)[:160]}); results.csv and "
                                   f"the cells are intact, and the store only mirrors them: move {db.name} away and "
                                   "run again to rebuild it") from None

    def retire(self) -> None:
        """--overwrite: the store's experiments are renamed and deleted (MLflow keeps deleted ones, hidden),
        so the new experiment starts empty without removing a database file this process may hold open."""
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        for experiment in self.client.search_experiments():  # the active ones
            if experiment.experiment_id != "0":  # MLflow's "Default" experiment stays
                self.client.rename_experiment(experiment.experiment_id,  # names stay unique, deleted ones too
                                              f"{experiment.name} (replaced {stamp}, id {experiment.experiment_id})")
                self.client.delete_experiment(experiment.experiment_id)

    def finished_cells(self) -> dict[str, str]:
        """cell id -> MLflow run id of the finished runs; unfinished ones are deleted."""
        runs = self.client.search_runs([self.experiment], max_results=50000)
        finished = {}
        for run in runs:
            if run.info.status == "FINISHED" and "cell_id" in run.data.tags:
                finished[run.data.tags["cell_id"]] = run.info.run_id
            else:
                self.client.delete_run(run.info.run_id)
        return finished

    def log(self, folder: Path) -> None:
        if self.client is None:
            return
        from mlflow.entities import Metric, Param
        now = int(time.time() * 1000)
        config = read_json(folder / "config.json")
        metrics = read_json(folder / "metrics.json")
        if folder.name in self.runs:  # the cell was run again: its new result replaces the old
            self.client.delete_run(self.runs.pop(folder.name))
        run = self.client.create_run(self.experiment, run_name=folder.name, tags={"cell_id": folder.name})
        run_id = run.info.run_id
        params = {k: config.get(k) for k in ("data", "strategy", "source", "budget", "seed", "split_seed",
                                              "backbone", "n_train_labels", "n_val_labels", "n_test")}
        params.update({f"train.{k}": v for k, v in config["train"].items() if k != "progress"})
        params.update({f"dp.{k}": v for k, v in (config.get("dp") or {}).items()})  # a --dp cell's request
        dp = {f"dp_{k}": v for k, v in (metrics.get("dp") or {}).items() if k in ("epsilon_spent", "noise_multiplier")}
        values = {mlflow_name(f"{split}_{name}{suffix}"): v for split in ("val", "test")
                  for name, m in metrics.get(split, {}).items()
                  for suffix, v in (("", m["value"]), ("_ci_low", m["ci"][0]), ("_ci_high", m["ci"][1]))} | dp
        self.client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()],
                              metrics=[Metric(k, float(v), now, 0) for k, v in values.items()
                                       if v is not None and v == v])  # undefined metrics are null or NaN
        self.client.log_artifacts(run_id, str(folder))
        self.client.set_terminated(run_id, "FINISHED")
        self.runs[folder.name] = run_id

    def sync(self, cells: list) -> None:
        """Log every finished cell that the store lacks (e.g. killed between the two writes)."""
        if self.client is None:
            return
        for _, folder in cells:
            if done(folder) and folder.name not in self.runs:
                self.log(folder)
