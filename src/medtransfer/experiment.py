"""`medtransfer experiment CONFIG.yaml`: targets x sources x backbones x strategies x budgets x seeds.

Every cell is an ordinary run directory, `EXP/cells/<cell id>/`, written by `api.transfer` and swapped
in only when complete. A re-run skips the cells that exist, so an interrupted experiment (Ctrl-C,
kill -9) loses at most the cells in flight. `results.csv` is rebuilt from the cell directories, never
appended to, so it cannot lose or repeat a row. Each finished cell is also an MLflow run (SQLite
file `EXP/mlflow.db`, artifacts in `EXP/mlartifacts/`: `mlflow ui --backend-store-uri sqlite:///mlflow.db`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .data import parse_budget
from .errors import MedTransferError

NO_SOURCE = "none"
SOURCELESS = {"scratch", "target-only"}  # run once per cell, whatever the sources
METRICS = ["auc", "acc", "balanced_acc", "sensitivity", "specificity", "f1", "brier", "ece"]


class TrainSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    epochs: int | None = Field(None, ge=1)
    lr: float | None = Field(None, gt=0)
    batch_size: int | None = Field(None, ge=1)
    patience: int | None = Field(None, ge=1)
    augment: bool | None = None
    image_size: int | None = Field(None, ge=8)
    source_epochs: int | None = Field(None, ge=1)


class ExperimentConfig(BaseModel):
    """The YAML file, validated: unknown keys and bad values are named with what is allowed."""
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    targets: list[str] = Field(min_length=1)
    sources: list[str] = [NO_SOURCE]
    backbones: list[str | None] = [None]
    strategies: list[str] = Field(min_length=1)
    budgets: list[str | int] = ["all"]
    seeds: int | list[int] = 3
    # Each seed also redraws the target's train/val/test split (repeated hold-out): for cohorts so
    # small that one fixed test split decides the comparison (Switzerland has 4 test patients without disease).
    resplit: bool = False
    train: TrainSettings = TrainSettings()
    data_root: str | None = None
    target_column: str | None = None  # csv: targets
    group_column: str | None = None
    keep_weights: bool = False  # cells keep predictions and metrics; weights only on request
    n_boot: int = Field(1000, ge=0)

    @field_validator("strategies")
    @classmethod
    def known_strategies(cls, names: list[str]) -> list[str]:
        from .strategies import STRATEGIES
        bad = [n for n in names if n not in STRATEGIES]
        if bad:
            raise ValueError(f"unknown strategy {bad[0]!r}; choose from {', '.join(sorted(STRATEGIES))}")
        return names

    @field_validator("budgets")
    @classmethod
    def valid_budgets(cls, budgets: list) -> list[str]:
        for b in budgets:
            try:
                parse_budget(str(b))
            except MedTransferError as exc:
                raise ValueError(str(exc)) from None
        return [str(b) for b in budgets]

    @field_validator("seeds")
    @classmethod
    def seed_list(cls, seeds) -> list[int]:
        if isinstance(seeds, int):
            if seeds < 1:
                raise ValueError("seeds must be at least 1 (a count) or a list of seeds")
            return list(range(seeds))
        return seeds

    @model_validator(mode="after")
    def sources_for_transfer(self):
        needs = [s for s in self.strategies if s not in SOURCELESS]
        if needs and all(s == NO_SOURCE for s in self.sources):
            raise ValueError(f"strategy {needs[0]!r} needs a source: list one under sources")
        return self


@dataclass(frozen=True)
class Cell:
    target: str
    source: str
    backbone: str | None
    strategy: str
    budget: str
    seed: int

    def id(self, settings: dict) -> str:
        """Readable, and unique for the cell *and* its settings: a changed setting is a new cell."""
        parts = [short(self.target), short(self.source), self.backbone or "default", self.strategy, self.budget,
                 f"s{self.seed}"]
        name = "_".join(re.sub(r"[^A-Za-z0-9.%-]+", "-", p).strip("-") for p in parts).replace("%", "pct")
        digest = hashlib.sha256(json.dumps([asdict(self), settings], sort_keys=True).encode()).hexdigest()[:8]
        return f"{name}_{digest}"


def short(spec: str) -> str:
    """medmnist:organamnist -> organamnist; heart:cleveland -> cleveland; folder:a/b -> b; imagenet:… whole."""
    scheme, sep, rest = spec.partition(":")
    if sep and scheme not in ("medmnist", "heart", "folder", "csv"):
        return spec
    return Path(rest if sep else spec).name or spec


def load_config(path: Path) -> tuple[ExperimentConfig, str]:
    path = Path(path)
    if not path.is_file():
        raise MedTransferError(f"experiment config {path} not found")
    text = path.read_text()
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise MedTransferError(f"{path} is not valid YAML: {exc}".replace("\n", " ")) from None
    if not isinstance(raw, dict):
        raise MedTransferError(f"{path} must be a YAML mapping with name, targets, strategies, …")
    try:
        return ExperimentConfig(**raw), text
    except ValidationError as exc:
        raise MedTransferError(f"{path}: {describe_error(exc.errors()[0])}") from None


def describe_error(error: dict) -> str:
    where = ".".join(str(p) for p in error["loc"]) or "config"
    if error["type"] == "extra_forbidden":
        fields = ExperimentConfig.model_fields if len(error["loc"]) == 1 else TrainSettings.model_fields
        return f"unknown key {where!r}; allowed: {', '.join(fields)}"
    if error["type"] == "missing":
        return f"missing key {where!r}"
    message = error["msg"].removeprefix("Value error, ")
    return f"{where}: {message} (got {error.get('input')!r})"


def grid(config: ExperimentConfig) -> list[Cell]:
    from .strategies import STRATEGIES

    cells = []
    for target in config.targets:
        for i, backbone in enumerate(config.backbones):
            for strategy in config.strategies:
                if i and not STRATEGIES[strategy].uses_backbone:
                    continue  # a logistic-regression baseline is the same whatever the backbone: run it once
                if not STRATEGIES[strategy].accepts(backbone):
                    continue  # e.g. partial on a linear model: no stages to unfreeze
                sources = [NO_SOURCE] if strategy in SOURCELESS else [s for s in config.sources if s != NO_SOURCE]
                for source in sources:
                    for budget in config.budgets:
                        cells += [Cell(target, source, backbone, strategy, budget, seed) for seed in config.seeds]
    return cells


def settings_of(config: ExperimentConfig) -> dict:
    """What changes a cell's result besides its coordinates (the data root does not)."""
    settings = {"train": config.train.model_dump(), "target_column": config.target_column,
                "group_column": config.group_column}
    return settings | ({"resplit": True} if config.resplit else {})  # old grids keep their cell ids


def run_cell(cell: Cell, out: Path, config: ExperimentConfig, data_root: str | None, progress: bool) -> None:
    from .api import transfer

    transfer(cell.target, cell.strategy, None if cell.source == NO_SOURCE else cell.source, budget=cell.budget,
             seed=cell.seed, split_seed=cell.seed if config.resplit else 0, backbone=cell.backbone, out=out,
             overwrite=True, data_root=data_root,
             target=config.target_column, group=config.group_column, n_boot=config.n_boot, progress=progress,
             weights=config.keep_weights, **config.train.model_dump())


def _worker(args) -> str:
    cell, out, config, data_root, threads = args
    import torch
    torch.set_num_threads(threads)
    run_cell(cell, out, config, data_root, progress=False)
    return str(out)


def run_experiment(config_path: Path, out: Path | None = None, jobs: int = 1, data_root: str | None = None,
                   progress: bool = True, report: bool = True, console=None) -> Path:
    """Run (or resume) every cell; write results.csv, the MLflow store and the report. Returns the folder."""
    from rich.console import Console

    from .training.loop import OUTER_PROGRESS, new_progress

    console = console or Console()
    config, text = load_config(config_path)
    out = Path(out) if out else Path("experiments") / config.name
    data_root = data_root or config.data_root
    settings = settings_of(config)
    cells = [(cell, out / "cells" / cell.id(settings)) for cell in grid(config)]
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(text)
    write_environment(out)
    for leftover in (out / "cells").glob("*.partial"):  # a cell killed mid-write
        shutil.rmtree(leftover, ignore_errors=True)
    todo = [(c, d) for c, d in cells if not done(d)]
    console.print(f"experiment {config.name}: {len(cells)} cells, {len(cells) - len(todo)} already done, "
                  f"{len(todo)} to run -> {out}")
    results = Results(out, cells)
    tracker = Tracker(out, config.name)
    if tracker.client is None:
        console.print("MLflow is not installed: results.csv only (pip install 'medtransfer[tracking]')")
    try:
        with new_progress(progress, transient=False) as bar:
            OUTER_PROGRESS.append(bar)
            job = bar.add_task("cells", total=len(cells), completed=len(cells) - len(todo))
            # The first cell of each source pretrains and caches it; run those alone before any parallelism.
            first, rest = split_first_per_source(todo)
            for cell, folder in first + (rest if jobs <= 1 else []):
                bar.update(job, description=f"cells  {folder.name}")
                run_cell(cell, folder, config, data_root, progress)
                finish(results, tracker, cell, folder, bar, job)
            if jobs > 1 and rest:
                run_parallel(rest, config, data_root, jobs,
                             lambda c, f: finish(results, tracker, c, f, bar, job))
    finally:
        OUTER_PROGRESS.clear()
        frame = results.write()
    tracker.sync(cells)
    console.print(f"results: {out / 'results.csv'} ({len(frame)} rows); MLflow: {out / 'mlflow.db'}")
    if report:
        from .evaluation.report import write_report
        html, _ = write_report(out)
        console.print(f"report: {html}")
    return out


def done(folder: Path) -> bool:
    return (folder / "metrics.json").is_file()


def split_first_per_source(todo: list) -> tuple[list, list]:
    seen, first, rest = set(), [], []
    for cell, folder in todo:
        key = (cell.source, cell.backbone)
        (rest if key in seen or cell.source == NO_SOURCE else first).append((cell, folder))
        seen.add(key)
    return first, rest


def run_parallel(todo: list, config: ExperimentConfig, data_root, jobs: int, on_done) -> None:
    import multiprocessing

    threads = max(1, (os.cpu_count() or 1) // jobs)
    context = multiprocessing.get_context("spawn")  # no fork of a process that holds torch threads
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        futures = {pool.submit(_worker, (cell, folder, config, data_root, threads)): (cell, folder)
                   for cell, folder in todo}
        try:
            for future in as_completed(futures):
                future.result()
                on_done(*futures[future])
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def finish(results: "Results", tracker: "Tracker", cell: Cell, folder: Path, bar, job) -> None:
    results.add(cell, folder)
    tracker.log(folder)
    bar.update(job, advance=1)


def row(cell: Cell, folder: Path, out: Path) -> dict:
    metrics = json.loads((folder / "metrics.json").read_text())
    config = json.loads((folder / "config.json").read_text())
    values = {"cell_id": folder.name, "target": cell.target, "source": cell.source,
              "backbone": config.get("backbone") or cell.backbone, "strategy": cell.strategy,
              "budget": cell.budget, "n_labels": config["n_train_labels"], "seed": cell.seed,
              "split_seed": config.get("split_seed", 0), "task": config["task"]}
    for name in METRICS:
        if name in metrics["test"]:
            m = metrics["test"][name]
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

    from .api import versions
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
