"""`medtransfer experiment CONFIG.yaml`: targets x sources x backbones x strategies x budgets x seeds.

Every cell is an ordinary run directory, `EXP/cells/<cell id>/`, written by the transfer pipeline and
swapped in only when complete. A re-run skips the cells that exist, so an interrupted experiment
(Ctrl-C, kill -9) loses at most the cells in flight. `results.csv` is rebuilt from the cell
directories, never appended to, so it cannot lose or repeat a row. Each finished cell is also an
MLflow run (SQLite file `EXP/mlflow.db`, artifacts in `EXP/mlartifacts/`:
`mlflow ui --backend-store-uri sqlite:///mlflow.db`). The report is written by the layer above
(`reporting.experiment`), from these files.

One process writes a folder at a time (`folder.folder_lock`, held from before the store is opened to
after the report), and a folder holding another experiment is refused (`folder.claim`). Every cell is
checked before any training (`pipeline.preflight`); a cell refused there, or failing while it runs,
is recorded as failed (`cells/<id>.failed.json`, a row with its `error` in results.csv) and the grid
goes on; a re-run retries it.

The cells after each source's first run in parallel on a backend (`EXECUTORS`): local processes
(`--jobs N`) or Ray tasks (`--backend ray`, `ray_cells.py`); both report each cell to the same `on_done`.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import shutil
import traceback
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Callable

from ..errors import MedTransferError
from ..pipeline import DataOptions, Output, TrainOptions, TransferRequest, transfer
from ..pipeline.preflight import data_fingerprint, preflight
from ..pipeline.unlabelled import folder_digest
from ..progress import SILENT, Progress, RichProgress, rich_bar
from ..runs import code_digest, read_json, write_json
from ..strategies import STRATEGIES
from .config import DP_NONE, NO_SOURCE, ExperimentConfig, load_config
from .folder import DEFAULTS, claim, folder_lock
from .grid import Cell, defaults_table, grid, settings_of
from .ray_cells import check as check_ray, run_ray
from .store import Results, Tracker, done, error_line, failure_file, record_failure, write_environment


def cell_request(cell: Cell, out: Path, config: ExperimentConfig, data_root: str | None,
                 progress: Progress = SILENT) -> TransferRequest:
    """The transfer a cell runs: its coordinates plus the grid's shared settings."""
    train = config.train
    return TransferRequest(
        cell.target, cell.strategy, None if cell.source == NO_SOURCE else cell.source, budget=cell.budget,
        seed=cell.seed, split_seed=cell.seed if config.resplit else 0, backbone=cell.backbone,
        image_size=train.image_size, source_epochs=train.source_epochs, positive=config.positive,
        threshold=config.threshold, calibrate=config.calibrate,
        loading=DataOptions(data_root, config.target_column, config.group_column, config.id_column,
                            tuple(config.drop_columns), config.text_column).used_by(cell.target, cell.source),
        training=TrainOptions(train.epochs, train.lr, train.batch_size, train.patience, train.augment,
                              train.class_weight, train.sampler, train.layer_decay, train.precision,
                              train.channels_last, train.compile),
        output=Output(out, overwrite=True, weights=config.keep_weights), n_boot=config.n_boot, progress=progress,
        dp=None if cell.dp == DP_NONE else cell.dp, unlabelled=unlabelled_for(cell, config))


def unlabelled_for(cell: Cell, config: ExperimentConfig) -> str | None:
    """The cell's `unlabelled:` folder, for a strategy that reads one (scratch and full cells of the same
    target run without it, as `transfer` would refuse it for them)."""
    return config.unlabelled.get(cell.target) if STRATEGIES.lookup(cell.strategy).reads_unlabelled else None


def run_cell(cell: Cell, out: Path, config: ExperimentConfig, data_root: str | None,
             progress: Progress = SILENT) -> None:
    transfer(cell_request(cell, out, config, data_root, progress))


def check_code(code: str) -> None:
    """Refuse a cell when medtransfer's code on disk is not `code` (the grid's, taken when it started).
    Cells import code lazily, in workers and in this process alike, so an upgrade or an edit while the grid
    runs would otherwise mix code versions (and cache keys) in one grid."""
    if code_digest() != code:
        raise MedTransferError("medtransfer's code changed on disk since this experiment started (an upgrade or "
                               "an edit), so this cell would run other code than the grid's other cells; run the "
                               "experiment again to go on with the new code (finished cells keep the old code's "
                               "results; --overwrite runs them all again)")


def _worker(cell: Cell, out: Path, threads: int, *, config: ExperimentConfig, data_root: str | None,
            code: str) -> str:
    """One cell in a worker process (local or Ray), with `threads` torch threads, if the code is the grid's."""
    check_code(code)
    import torch
    torch.set_num_threads(threads)
    run_cell(cell, out, config, data_root)
    return str(out)


def other_code(cells: list, code: str) -> int:
    """How many finished cells record another medtransfer code digest than `code` (or none: made before it
    was recorded). They are kept, and said: a resume never re-runs finished cells by itself."""
    return sum(1 for _, folder in cells if done(folder) and (_config_of(folder).get("versions") or {}).get(
        "medtransfer_code") != code)


def changed_data(cells: list, config: ExperimentConfig, data_root: str | None, cache: dict) -> str | None:
    """Why the finished cells' results would be stale (one line), or None: a target whose content fingerprint
    (files edited, added or removed; another data root), or whose `unlabelled:` folder's file list, differs
    from what its finished cells recorded. Cells run before it was recorded, and data that cannot be loaded
    now, are not compared."""
    stale = ("changed since finished cells of this folder ran on it, so their results would be reported beside "
             "new ones as if from the same data; pass --overwrite to run every cell again, or choose another --out")
    digests = {}  # each unlabelled folder's file list read once, however many cells use it
    for cell, folder in cells:
        record = _config_of(folder) if done(folder) else {}
        extra, recorded_extra = unlabelled_for(cell, config), (record.get("unlabelled") or {}).get("files_digest")
        if extra and recorded_extra:
            now = digests.setdefault(extra, folder_digest(extra))
            if now is not None and now != recorded_extra:
                return f"the unlabelled images of {cell.target} ({extra}) {stale}"
        if not record.get("data_fingerprint"):
            continue
        try:
            now = data_fingerprint(cell_request(cell, folder, config, data_root), cache)
        except MedTransferError:  # a request refused now is the preflight's to name
            continue
        if now is not None and now != record["data_fingerprint"]:
            return f"the data of {cell.target} (its content fingerprint) {stale}"
    return None


def _config_of(folder: Path) -> dict:
    """The cell's config.json, or {} when it cannot be read."""
    try:
        record = read_json(folder / "config.json")
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


class CellsFailed(MedTransferError):
    """Raised at the very end, once results.csv, MLflow and the report are written: some cells failed.
    `failed` maps cell ids to their one-line errors; `out` is the experiment folder."""

    def __init__(self, out: Path, failed: dict[str, str], total: int):
        name, error = next(iter(failed.items()))
        super().__init__(f"{len(failed)} of {total} cells failed (first: {name}: {error[:200]}); all are listed "
                         f"with their errors in {out / 'results.csv'} and the report; fix the cause and run again "
                         "to retry them")
        self.out, self.failed = out, failed


def run_experiment(config_path: Path, out: Path | None = None, jobs: int = 1, data_root: str | None = None,
                   progress: bool = True, console=None, overwrite: bool = False,
                   after: Callable[[Path], object] | None = None, backend: str = "local",
                   address: str | None = None, gpus_per_cell: float = 0) -> Path:
    """Run (or resume) every cell; write results.csv and the MLflow store; then call `after(folder)`
    (e.g. the report) while the folder is still locked. Returns the folder. A folder that holds another
    experiment is refused unless `overwrite`; cells that cannot or did not run are recorded as failed and
    the grid goes on, and CellsFailed is raised once everything is written. `backend`: where cells run in
    parallel (`EXECUTORS`); `address`, `gpus_per_cell`: the Ray cluster and each cell's GPUs (ray only)."""
    from rich.console import Console

    check_backend(backend, address, gpus_per_cell)
    console = console or Console()
    config, text = load_config(config_path)
    out = Path(out) if out else Path("experiments") / config.name
    with folder_lock(out):
        replace = claim(out, config, overwrite)
        cells, failed = run_locked(config, text, out, jobs, data_root or config.data_root, progress, console,
                                   replace, backend, {"address": address, "gpus_per_cell": gpus_per_cell}
                                   if backend == "ray" else {})
        if after is not None:
            after(out)
    if failed:
        raise CellsFailed(out, failed, len(cells))
    return out


def run_locked(config: ExperimentConfig, text: str, out: Path, jobs: int, data_root: str | None,
               progress: bool, console, replace: bool = False, backend: str = "local",
               options: dict | None = None) -> tuple[list, dict[str, str]]:
    """The run itself, with the folder's lock held: cells checked, run, recorded. Returns the cells and
    the failed ones (cell id -> error). `replace`: another experiment was removed from the folder;
    `backend`, `options`: the executor of the cells run in parallel and its options."""
    def say(line: str) -> None:  # one line, whatever the terminal width; error text is never read as markup
        console.print(line, soft_wrap=True, markup=False)

    settings = settings_of(config)
    cells = [(cell, out / "cells" / cell.id(settings)) for cell in grid(config)]
    loaded = {}  # datasets and sources loaded once, for the data check and the preflight
    if stale := changed_data(cells, config, data_root, loaded):
        raise MedTransferError(f"{out}: {stale}")  # before anything in the folder is written
    (out / "config.yaml").write_text(text)
    write_environment(out)
    write_json(out / DEFAULTS, defaults_table())
    for leftover in (out / "cells").glob("*.partial"):  # a cell killed mid-write
        shutil.rmtree(leftover, ignore_errors=True)
    todo = [(c, d) for c, d in cells if not done(d)]
    refused = preflight_cells(todo, config, data_root, loaded)
    todo = [(c, d) for c, d in todo if d.name not in refused]
    console.print(f"experiment {config.name}: {len(cells)} cells, {len(cells) - len(todo) - len(refused)} already "
                  f"done, {len(todo)} to run" + (f", {len(refused)} refused" if refused else "") + f" -> {out}",
                  soft_wrap=True)
    for reason, count in Counter(refused.values()).items():
        say(f"refused {count} cell{'s' * (count > 1)} before training: {reason}")
    code = code_digest()
    if older := other_code(cells, code):
        say(f"note: {older} finished cell{'s' * (older > 1)} of this folder ran other medtransfer code than this "
            "run's (an upgrade or an edit since), or code not recorded; they are kept, not run again (--overwrite "
            "runs every cell again)")
    results = Results(out, cells)
    tracker = Tracker.open(out, config.name, replace, say)
    if tracker.client is None:
        console.print("MLflow is not installed: results.csv only (pip install 'medtransfer[tracking]')")
    display = rich_bar(transient=False) if progress else None
    shown = RichProgress(display) if progress else SILENT  # the cells bar, each cell's epochs nested in it
    try:
        with display if display is not None else contextlib.nullcontext():
            bar = shown.start("cells", total=len(cells), completed=len(cells) - len(todo))

            def finish(cell: Cell, folder: Path, error: BaseException | None) -> None:
                if error is not None and not isinstance(error, Exception):
                    raise error  # KeyboardInterrupt (also from a worker) stops the grid; it is no failed cell
                if error is None:
                    failure_file(folder).unlink(missing_ok=True)
                else:
                    record_failure(cell, folder, error_line(error), "run", "".join(traceback.format_exception(error)))
                    say(f"cell {folder.name} failed: {error_line(error)}")
                results.add(cell, folder)
                if error is None:
                    tracker.log(folder)
                bar.update(advance=1)

            # The first cell of each source pretrains and caches it; run those alone before any parallelism.
            first, rest = split_first_per_source(todo)
            here = backend == "local" and jobs <= 1  # every cell in this process
            for cell, folder in first + (rest if here else []):
                bar.update(f"cells  {folder.name}")
                finish(cell, folder, attempt(lambda: (check_code(code), run_cell(cell, folder, config, data_root,
                                                                                  shown))))
            if rest and not here:
                work = functools.partial(_worker, config=config, data_root=data_root, code=code)
                EXECUTORS[backend](interleaved(rest), work, jobs, finish, **(options or {}))
    finally:
        frame = results.write()
    tracker.sync(cells)
    failed = results.failed()
    console.print(f"results: {out / 'results.csv'} ({len(frame)} rows" + (f", {len(failed)} failed" if failed else "")
                  + f"); MLflow: {out / 'mlflow.db'}", soft_wrap=True)
    return cells, failed


def attempt(run: Callable[[], object]) -> BaseException | None:
    """Run one cell; its error (any Exception) is returned to be recorded, so the grid goes on.
    KeyboardInterrupt is no Exception: it propagates and stops the grid."""
    try:
        run()
    except Exception as exc:  # noqa: BLE001 (any failure of one cell is that cell's, recorded with its error)
        return exc
    return None


def preflight_cells(todo: list, config: ExperimentConfig, data_root: str | None,
                    cache: dict | None = None) -> dict[str, str]:
    """cell id -> why it cannot run, for every cell that cannot, checked before any training or
    pretraining (each dataset loaded once per `cache`); those cells are recorded as failed and not run."""
    cache, refused = {} if cache is None else cache, {}
    for cell, folder in todo:
        try:
            reason = preflight(cell_request(cell, folder, config, data_root), cache)
        except MedTransferError as exc:  # the request itself is refused (an option this cell cannot use)
            reason = str(exc)
        if reason is not None:
            record_failure(cell, folder, reason, "preflight")
            refused[folder.name] = reason
    return refused


def split_first_per_source(todo: list) -> tuple[list, list]:
    seen, first, rest = set(), [], []
    for cell, folder in todo:
        key = (cell.source, cell.backbone)
        (rest if key in seen or cell.source == NO_SOURCE else first).append((cell, folder))
        seen.add(key)
    return first, rest


def interleaved(todo: list) -> list:
    """The cells round-robin over their (source, backbone), in grid order within each. In grid order the
    seeds of one source and budget sit side by side, so parallel workers asked for the same source's
    features at once: one computed them on its core while the others waited for the rows it had claimed in
    the feature cache. Interleaved, they compute different sources' features side by side. Results do not
    depend on it."""
    groups: dict[tuple, list] = {}
    for cell, folder in todo:
        groups.setdefault((cell.source, cell.backbone), []).append((cell, folder))
    return [item for batch in itertools.zip_longest(*groups.values()) for item in batch if item is not None]


def run_parallel(todo: list, work: Callable, jobs: int, on_done) -> None:
    """Cells in `jobs` local worker processes, `work(cell, folder, threads)` each; each one's result or
    error goes to `on_done(cell, folder, error)`."""
    import multiprocessing

    threads = max(1, (os.cpu_count() or 1) // jobs)
    context = multiprocessing.get_context("spawn")  # no fork of a process that holds torch threads
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        with sigint_ignored():  # the workers start (on submit) with Ctrl-C ignored; this process stops them
            futures = {pool.submit(work, cell, folder, threads): (cell, folder) for cell, folder in todo}
        try:
            for future in as_completed(futures):
                on_done(*futures[future], future.exception())
        except BaseException:  # Ctrl-C (or a failure here): stop the workers now, not after their cells
            workers = list((getattr(pool, "_processes", None) or {}).values())  # shutdown forgets them
            pool.shutdown(wait=False, cancel_futures=True)
            for process in workers:
                process.terminate()
            raise


# Where the cells after each source's first run: executor(todo, work, jobs, on_done, **options), both
# calling on_done(cell, folder, error) in this process as each cell ends.
EXECUTORS = {"local": run_parallel, "ray": run_ray}


def check_backend(backend: str, address: str | None, gpus_per_cell: float) -> None:
    """Before any work: a known backend, its options only where they apply, Ray installed and reachable."""
    if backend not in EXECUTORS:
        raise MedTransferError(f"backend must be one of {', '.join(EXECUTORS)}, got {backend!r} (option --backend)")
    if backend != "ray" and (address or gpus_per_cell):
        raise MedTransferError(f"{'--address' if address else '--gpus-per-cell'} needs --backend ray")
    if backend == "ray":
        check_ray(address)


@contextlib.contextmanager
def sigint_ignored():
    """SIGINT ignored while worker processes are started, so they inherit it ignored. Ctrl-C reaches the
    whole foreground process group: a worker still importing would print a KeyboardInterrupt traceback
    instead of the one line `interrupted`. The parent handles Ctrl-C and terminates its workers."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
