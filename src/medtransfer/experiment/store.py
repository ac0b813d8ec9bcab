"""The experiment's records: results.csv (one row per finished cell, rebuilt from the cell folders),
environment.json, and the MLflow store (one MLflow run per finished cell)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pandas as pd

from .grid import Cell


def done(folder: Path) -> bool:
    return (folder / "metrics.json").is_file()


def row(cell: Cell, folder: Path, out: Path) -> dict:
    metrics = json.loads((folder / "metrics.json").read_text())
    config = json.loads((folder / "config.json").read_text())
    values = {"cell_id": folder.name, "target": cell.target, "source": cell.source,
              "backbone": config.get("backbone") or cell.backbone, "strategy": cell.strategy,
              "budget": cell.budget, "n_labels": config["n_train_labels"], "seed": cell.seed,
              "split_seed": config.get("split_seed", 0), "task": config["task"]}
    for name, m in metrics["test"].items():  # every registered metric the task has
        values.update({f"test_{name}": m["value"], f"test_{name}_lo": m["ci"][0], f"test_{name}_hi": m["ci"][1]})
    values["val_auc"] = metrics["val"].get("auc", {}).get("value")
    values["seconds"] = metrics["fit"].get("total_seconds")
    values["run_dir"] = str(folder.relative_to(out))
    return values


class Results:
    """The tidy table: one row per finished cell, in grid order, read from the cell folders. It is
    swapped in atomically (at most every few seconds while running, and at the end)."""

    def __init__(self, out: Path, cells: list):
        self.out, self.order = out, {folder.name: i for i, (_, folder) in enumerate(cells)}
        self.rows = {folder.name: row(cell, folder, out) for cell, folder in cells if done(folder)}
        self.written = 0.0

    def add(self, cell: Cell, folder: Path) -> None:
        self.rows[folder.name] = row(cell, folder, self.out)
        if time.monotonic() - self.written > 5:
            self.write()

    def write(self) -> pd.DataFrame:
        frame = pd.DataFrame([self.rows[k] for k in sorted(self.rows, key=self.order.get)])
        tmp = self.out / "results.csv.tmp"
        frame.to_csv(tmp, index=False)
        os.replace(tmp, self.out / "results.csv")
        self.written = time.monotonic()
        return frame


def write_environment(out: Path) -> None:
    import platform

    import torch

    from ..pipeline.run_folder import versions
    env = versions() | {"platform": platform.platform(), "cpus": os.cpu_count(),
                        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    (out / "environment.json").write_text(json.dumps(env, indent=2))


class Tracker:
    """MLflow store: one MLflow run per finished cell, tagged with its cell id. Runs that a kill left
    unfinished are deleted, and `sync` logs what is missing, so the store matches the cell folders."""

    def __init__(self, out: Path, name: str):
        try:
            import mlflow
        except ImportError:
            self.client = None
            return
        import logging
        logging.getLogger("alembic").setLevel(logging.WARNING)
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        self.client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{(out / 'mlflow.db').resolve()}")
        found = self.client.get_experiment_by_name(name)
        self.experiment = found.experiment_id if found else self.client.create_experiment(
            name, artifact_location=(out / "mlartifacts").resolve().as_uri())
        self.runs = self.finished_cells()

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
        config = json.loads((folder / "config.json").read_text())
        metrics = json.loads((folder / "metrics.json").read_text())
        if folder.name in self.runs:  # the cell was run again: its new result replaces the old
            self.client.delete_run(self.runs.pop(folder.name))
        run = self.client.create_run(self.experiment, run_name=folder.name, tags={"cell_id": folder.name})
        run_id = run.info.run_id
        params = {k: config.get(k) for k in ("data", "strategy", "source", "budget", "seed", "split_seed",
                                              "backbone", "n_train_labels", "n_val_labels", "n_test")}
        params.update({f"train.{k}": v for k, v in config["train"].items() if k != "progress"})
        values = {f"{split}_{name}{suffix}": v for split in ("val", "test")
                  for name, m in metrics.get(split, {}).items()
                  for suffix, v in (("", m["value"]), ("_ci_low", m["ci"][0]), ("_ci_high", m["ci"][1]))}
        self.client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()],
                              metrics=[Metric(k, float(v), now, 0) for k, v in values.items() if v == v])
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
