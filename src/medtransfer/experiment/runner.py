"""`medtransfer experiment CONFIG.yaml`: targets x sources x backbones x strategies x budgets x seeds.

Every cell is an ordinary run directory, `EXP/cells/<cell id>/`, written by the transfer pipeline and
swapped in only when complete. A re-run skips the cells that exist, so an interrupted experiment
(Ctrl-C, kill -9) loses at most the cells in flight. `results.csv` is rebuilt from the cell
directories, never appended to, so it cannot lose or repeat a row. Each finished cell is also an
MLflow run (SQLite file `EXP/mlflow.db`, artifacts in `EXP/mlartifacts/`:
`mlflow ui --backend-store-uri sqlite:///mlflow.db`). The report is written by the layer above
(`reporting.experiment`), from these files.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from ..pipeline import DataOptions, Output, TrainOptions, TransferRequest, transfer
from ..progress import SILENT, Progress, RichProgress, rich_bar
from .config import NO_SOURCE, ExperimentConfig, load_config
from .grid import Cell, grid, settings_of
from .store import Results, Tracker, done, write_environment


def cell_request(cell: Cell, out: Path, config: ExperimentConfig, data_root: str | None,
                 progress: Progress = SILENT) -> TransferRequest:
    """The transfer a cell runs: its coordinates plus the grid's shared settings."""
    train = config.train
    return TransferRequest(
        cell.target, cell.strategy, None if cell.source == NO_SOURCE else cell.source, budget=cell.budget,
        seed=cell.seed, split_seed=cell.seed if config.resplit else 0, backbone=cell.backbone,
        image_size=train.image_size, source_epochs=train.source_epochs,
        loading=DataOptions(data_root, config.target_column, config.group_column),
        training=TrainOptions(train.epochs, train.lr, train.batch_size, train.patience, train.augment),
        output=Output(out, overwrite=True, weights=config.keep_weights), n_boot=config.n_boot, progress=progress)


def run_cell(cell: Cell, out: Path, config: ExperimentConfig, data_root: str | None,
             progress: Progress = SILENT) -> None:
    transfer(cell_request(cell, out, config, data_root, progress))


def _worker(args) -> str:
    cell, out, config, data_root, threads = args
    import torch
    torch.set_num_threads(threads)
    run_cell(cell, out, config, data_root)
    return str(out)


def run_experiment(config_path: Path, out: Path | None = None, jobs: int = 1, data_root: str | None = None,
                   progress: bool = True, console=None) -> Path:
    """Run (or resume) every cell; write results.csv and the MLflow store. Returns the folder."""
    from rich.console import Console

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
    display = rich_bar(transient=False) if progress else None
    shown = RichProgress(display) if progress else SILENT  # the cells bar, each cell's epochs nested in it
    try:
        with display if display is not None else contextlib.nullcontext():
            bar = shown.start("cells", total=len(cells), completed=len(cells) - len(todo))

            def finish(cell: Cell, folder: Path) -> None:
                results.add(cell, folder)
                tracker.log(folder)
                bar.update(advance=1)

            # The first cell of each source pretrains and caches it; run those alone before any parallelism.
            first, rest = split_first_per_source(todo)
            for cell, folder in first + (rest if jobs <= 1 else []):
                bar.update(f"cells  {folder.name}")
                run_cell(cell, folder, config, data_root, shown)
                finish(cell, folder)
            if jobs > 1 and rest:
                run_parallel(rest, config, data_root, jobs, finish)
    finally:
        frame = results.write()
    tracker.sync(cells)
    console.print(f"results: {out / 'results.csv'} ({len(frame)} rows); MLflow: {out / 'mlflow.db'}")
    return out


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
