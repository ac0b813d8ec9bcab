"""The Python API: `pretrain`, `transfer`, `evaluate`, `predict`, `shift`, `experiment`, `report`.

A thin door: each function turns its keyword arguments into one typed request and runs the
pipeline (`medtransfer.pipeline`); the CLI calls these functions and nothing else.

    import medtransfer as mt
    run = mt.transfer("heart:hungary", "head", source="heart:cleveland", budget=20, out="runs/hungary")
    run.metrics["test"]["auc"]        # {"value": ..., "ci": [low, high]}
    mt.evaluate(run.out, data="heart:va")
"""

from __future__ import annotations

from pathlib import Path

from . import pipeline
from .defaults import N_BOOT
from .errors import MedTransferError
from .models.checkpoint import read_meta
from .pipeline import (DataOptions, Output, PretrainRequest, RunResult, ShiftRequest, SSLOptions, TrainOptions,
                       TransferRequest)
from .progress import as_progress

PRETRAIN_METHODS = tuple(pipeline.pretrain_methods())
SSL_OPTIONS = ("temperature", "queue_size", "momentum", "views", "monitor", "limit")


def transfer(data: str, strategy: str = "full", source: str | None = None, *, budget=None, seed: int = 0,
             split_seed: int = 0, backbone: str | None = None, out: str | Path | None = None, overwrite: bool = False,
             save: bool = True, data_root=None, target: str | None = None, group: str | None = None,
             image_size: int | None = None, epochs: int | None = None, lr: float | None = None,
             batch_size: int | None = None, patience: int | None = None, augment: bool | None = None,
             source_epochs: int | None = None, accelerator: str = "auto", n_boot: int = N_BOOT,
             progress=True, weights: bool = True) -> RunResult:
    """Move a source model (or none, for `scratch`) to the target dataset `data` with `strategy`,
    using at most `budget` labelled target examples; evaluate on the target's test split.

    `source`: a run folder, a weights file, imagenet:<name>, timm:<name>, or a source dataset
    (pretrained once per settings, then cached). `split_seed` redraws the target's train/val/test
    split where medtransfer draws it (csv:, heart:, folder: without split folders): repeated hold-out
    for cohorts too small for one fixed test split. `target`/`group`: label and patient columns of a
    csv: table. `weights=False` saves the run without model.safetensors (grids keep predictions only).
    `progress`: True (bars), False, or a `medtransfer.progress.Progress`."""
    return pipeline.transfer(TransferRequest(
        data, strategy, source, budget=budget, seed=seed, split_seed=split_seed, backbone=backbone,
        image_size=image_size, source_epochs=source_epochs, loading=DataOptions(data_root, target, group),
        training=TrainOptions(epochs, lr, batch_size, patience, augment),
        output=Output(out, overwrite, save, weights), accelerator=accelerator, n_boot=n_boot,
        progress=as_progress(progress)))


def pretrain(data: str | list[str], *, method: str = "supervised", backbone: str | None = None,
             out: str | Path | None = None, seed: int = 0, overwrite: bool = False, **options) -> RunResult:
    """Pretrain a source model on a (large) source dataset.

    method="supervised" (default): a scratch run with every label; `options` are those of `transfer`
    (epochs, lr, image_size, data_root, target, ...). method="simclr" or "moco": self-supervised on the
    training images of one or more 2D image datasets (`data` a list or a comma list; labels ignored),
    see `pretrain_self_supervised` for the options."""
    if method not in PRETRAIN_METHODS:
        raise MedTransferError(f"unknown pretraining method {method!r}; choose one of: {', '.join(PRETRAIN_METHODS)}")
    if method != "supervised":
        return pretrain_self_supervised(data, method, backbone=backbone, out=out, seed=seed, overwrite=overwrite,
                                        **options)
    ssl_only = [k for k in SSL_OPTIONS if options.pop(k, None) is not None]
    if ssl_only:
        raise MedTransferError(f"{', '.join(ssl_only)} apply to --method simclr or moco, not supervised")
    train = {k: options.pop(k, None) for k in ("epochs", "lr", "batch_size", "patience", "augment")}
    loading = {k: options.pop(k, None) for k in ("data_root", "target", "group")}
    output = Output(out, overwrite, options.pop("save", True), options.pop("weights", True))
    request = PretrainRequest(data, method, backbone=backbone, seed=seed, image_size=options.pop("image_size", None),
                              loading=DataOptions(**loading), training=TrainOptions(**train), output=output,
                              accelerator=options.pop("accelerator", "auto"), n_boot=options.pop("n_boot", N_BOOT),
                              progress=as_progress(options.pop("progress", True)))
    if options:
        raise TypeError(f"pretrain() got unexpected keyword arguments: {', '.join(options)}")
    return pipeline.pretrain(request)


def pretrain_self_supervised(data: str | list[str], method: str = "simclr", *, backbone: str | None = None,
                             out: str | Path | None = None, seed: int = 0, overwrite: bool = False,
                             save: bool = True, data_root=None, image_size: int | None = None,
                             epochs: int | None = None, lr: float | None = None, batch_size: int | None = None,
                             patience: int | None = None, accelerator: str = "auto", progress=True,
                             temperature: float | None = None, queue_size: int | None = None,
                             momentum: float | None = None, views=None, monitor: bool | None = True,
                             limit: int | None = None, target: str | None = None,
                             group: str | None = None) -> RunResult:
    """SimCLR / MoCo v2 on the images of `data` (labels ignored); the monitor is k-NN AUC on the
    first dataset's labelled val split when it has one (the best epoch is kept; else the last).
    `views`: augmentation options (ViewConfig fields) as a dict or ["name=value", ...]. The run folder
    is an ordinary source: `transfer(..., source=run_dir)` gives the target a new head."""
    return pipeline.pretrain(PretrainRequest(
        data, method, backbone=backbone, seed=seed, image_size=image_size,
        loading=DataOptions(data_root, target, group), training=TrainOptions(epochs, lr, batch_size, patience),
        ssl=SSLOptions(temperature, queue_size, momentum, views, monitor is not False, limit),
        output=Output(out, overwrite, save), accelerator=accelerator, progress=as_progress(progress)))


def evaluate(run: str | Path, data: str | None = None, split: str = "test", data_root=None,
             n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """Metrics (with 95% CIs) of a saved run on a split of its own or another dataset."""
    return pipeline.evaluate(run, data, split, data_root, n_boot, seed)


def predict(run: str | Path, inputs: str, data_root=None):
    """Class probabilities of a saved run for new inputs (a DataFrame, one row per input): a CSV of
    patients, image files or a folder of images, or a dataset spec (its test split)."""
    return pipeline.predict(run, inputs, data_root)


def shift(source: str, target: str, *, model: str | Path | None = None, out: str | Path | None = None,
          overwrite: bool = False, save: bool = True, data_root=None, label_column: str | None = None,
          group: str | None = None, seed: int = 0, n_perm: int = 1000, max_samples: int | None = 2000,
          n_boot: int = 200, accelerator: str = "auto"):
    """Diagnose the shift from the `source` dataset to the `target` dataset (no target labels used):
    covariate shift (domain-classifier AUC, kernel MMD test), label shift (the target's class prior
    by EM and BBSE from a source model's outputs) and where it is (per feature / per class).

    `model`: a run folder holding the source model (its features are compared for images; its
    outputs estimate the prior). Without it, tables get a logistic regression fitted on the source
    training split, on the variables recorded at both sites; images need a model. Writes shift.md,
    shift.json and PNGs into `out` (default shift/<source>_to_<target>) unless save=False.
    Returns the `ShiftDiagnosis`."""
    from .reporting.shift import write_shift_report

    request = ShiftRequest(source, target, model, DataOptions(data_root, label_column, group), seed=seed,
                           n_perm=n_perm, max_samples=max_samples, n_boot=n_boot, accelerator=accelerator,
                           output=Output(out, overwrite, save))
    return pipeline.shift(request, write_report=write_shift_report)


def experiment(config: str | Path, out: str | Path | None = None, jobs: int = 1, data_root: str | None = None,
               progress: bool = True, report: bool = True, console=None) -> Path:
    """Run (or resume) an experiment grid from its YAML; write results.csv, the MLflow store and
    (unless report=False) report.html / report.md. Returns the experiment folder."""
    from .experiment import run_experiment

    folder = run_experiment(Path(config), out=Path(out) if out else None, jobs=jobs, data_root=data_root,
                            progress=progress, console=console)
    if report:
        html, _ = write_report(folder)
        if console is not None:
            console.print(f"report: {html}")
    return folder


run_experiment = experiment  # the name grids were run by before the API had `experiment`


def write_report(folder: str | Path) -> tuple[Path, Path]:
    """(Re)write report.html and report.md of an experiment folder from its results."""
    from .reporting.experiment import write_report as write

    folder = Path(folder)
    if not (folder / "results.csv").is_file():
        raise MedTransferError(f"{folder} has no results.csv: run `medtransfer experiment CONFIG.yaml` first")
    return write(folder)


__all__ = ["pretrain", "pretrain_self_supervised", "transfer", "evaluate", "predict", "shift", "experiment",
           "write_report", "RunResult", "read_meta"]
