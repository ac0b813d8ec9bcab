"""The Python API: `pretrain`, `transfer`, `evaluate`, `predict`, `shift`, `rank`, `experiment`, `report`.

A thin door: each function turns its keyword arguments into one typed request and runs the
pipeline (`medtransfer.pipeline`); the CLI calls these functions and nothing else.

    import medtransfer as mt
    run = mt.transfer("heart:hungary", "head", source="heart:cleveland", budget=20, out="runs/hungary")
    run.metrics["test"]["auc"]        # {"value": ..., "ci": [low, high]}
    mt.evaluate(run.out, data="heart:va")
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from pathlib import Path

from . import pipeline
from .data import parse_budget
from .defaults import N_BOOT
from .errors import MedTransferError
from .models.backbones import NATIVE
from .models.checkpoint import read_meta
from .pipeline import (DataOptions, Output, PretrainRequest, RunResult, ShiftRequest, SSLOptions, TrainOptions,
                       TransferRequest)
from .progress import as_progress

PRETRAIN_METHODS = tuple(pipeline.pretrain_methods())
SSL_OPTIONS = ("temperature", "queue_size", "momentum", "views", "monitor", "limit")
ACCELERATORS = ("auto", "cpu", "cuda", "mps")
SPLITS = ("train", "val", "test", "all")
INTEGER, NUMBER, TEXT = (Integral,), (Real,), (str,)

# What each option accepts: (types, rule, what it must be, its command-line option). Checked at this door,
# before any work, so that `seed="abc"` or `--epochs 0` is refused by name instead of failing (or being
# silently replaced by a default) deep in the pipeline. The CLI gets the same checks by calling the API.
OPTIONS = {
    "seed": (INTEGER, lambda v: 0 <= v < 2**63, "an integer from 0 to 2**63 - 1", "--seed"),
    "split_seed": (INTEGER, lambda v: 0 <= v < 2**63, "an integer from 0 to 2**63 - 1", "--split-seed"),
    "budget": (INTEGER + TEXT, lambda v: parse_budget(v) or True,  # parse_budget names a bad value itself
               "a count like 40, a share like '5%', 'all', or 0", "--budget"),
    "epochs": (INTEGER, lambda v: v >= 1, "an integer >= 1", "--epochs"),
    "source_epochs": (INTEGER, lambda v: v >= 1, "an integer >= 1", "--source-epochs"),
    "batch_size": (INTEGER, lambda v: v >= 1, "an integer >= 1", "--batch-size"),
    "patience": (INTEGER, lambda v: v >= 1, "an integer >= 1", "--patience"),
    "image_size": (INTEGER + TEXT, lambda v: v == NATIVE if isinstance(v, str) else v >= 8,
                   f"an integer >= 8 (pixels) or '{NATIVE}'", "--image-size"),
    "lr": (NUMBER, lambda v: v > 0, "a number > 0", "--lr"),
    "n_boot": (INTEGER, lambda v: v >= 0, "an integer >= 0", None),
    "accelerator": (TEXT, lambda v: v in ACCELERATORS and available(v), f"one of {', '.join(ACCELERATORS)}",
                    "--device"),
    "split": (TEXT, lambda v: v in SPLITS, f"one of {', '.join(SPLITS)}", "--split"),
    "jobs": (INTEGER, lambda v: v >= 1, "an integer >= 1", "--jobs"),
    "gpus_per_cell": (NUMBER, lambda v: v >= 0, "a number >= 0", "--gpus-per-cell"),
    "n_perm": (INTEGER, lambda v: v >= 0, "an integer >= 0", "--permutations"),
    "max_samples": (INTEGER, lambda v: v >= 10, "an integer >= 10", "--max-samples"),
    "temperature": (NUMBER, lambda v: v > 0, "a number > 0", "--temperature"),
    "queue_size": (INTEGER, lambda v: v >= 1, "an integer >= 1", "--queue-size"),
    "momentum": (NUMBER, lambda v: 0 <= v < 1, "a number in [0, 1)", "--momentum"),
    "limit": (INTEGER, lambda v: v >= 1, "an integer >= 1", "--limit"),
    "examples": (INTEGER, lambda v: v >= 1, "an integer >= 1", "--examples"),
    "devices": (INTEGER, lambda v: v >= 1, "an integer >= 1", "--devices"),
    "num_nodes": (INTEGER, lambda v: v >= 1, "an integer >= 1", "--num-nodes"),
}


def available(accelerator: str) -> bool:
    """cuda / mps only on a machine that has one (else the training loop fails later with a raw error)."""
    import torch

    if (accelerator == "cuda" and not torch.cuda.is_available()) or \
            (accelerator == "mps" and not torch.backends.mps.is_available()):
        raise MedTransferError(f"accelerator {accelerator!r} is not available on this machine; use cpu or auto "
                               "(option --device)")
    return True


def check_options(**values) -> None:
    """Refuse the first bad option value with one line naming the option; None means its default."""
    for name, value in values.items():
        types, rule, must, flag = OPTIONS[name]
        if value is None:
            continue
        fits = isinstance(value, types) and not isinstance(value, bool) and \
            (not isinstance(value, Real) or isinstance(value, Integral) or math.isfinite(value))
        if not fits or (rule is not None and not rule(value)):
            where = f" (option {flag})" if flag else ""
            raise MedTransferError(f"{name} must be {must}, got {value!r}{where}")


def transfer(data: str, strategy: str = "full", source: str | None = None, *, budget=None, seed: int = 0,
             split_seed: int = 0, backbone: str | None = None, out: str | Path | None = None, overwrite: bool = False,
             save: bool = True, data_root=None, target: str | None = None, group: str | None = None,
             image_size: int | None = None, epochs: int | None = None, lr: float | None = None,
             batch_size: int | None = None, patience: int | None = None, augment: bool | None = None,
             source_epochs: int | None = None, accelerator: str = "auto", n_boot: int = N_BOOT,
             progress=True, weights: bool = True, positive: str | None = None, threshold=None,
             calibrate: str = "none", class_weight: str | None = None, sampler: str | None = None,
             id: str | None = None, drop=(), layer_decay: float | str | None = None,  # noqa: A002 - `id` is --id
             precision: str | None = None, channels_last: bool | None = None, compile: bool | None = None,
             text: str | None = None, dp=None, devices: int | None = None,
             num_nodes: int | None = None, unlabelled: str | None = None) -> RunResult:

    """Move a source model (or none, for `scratch`) to the target dataset `data` with `strategy`,
    using at most `budget` labelled target examples; evaluate on the target's test split.

    `source`: a run folder, a weights file, imagenet:<name>, timm:<name>, a source dataset
    (pretrained once per settings, then cached), or multi:<dataset>,<dataset>,... (one backbone with a
    head per dataset, trained jointly, cached the same way). `split_seed` redraws the target's train/val/test
    split where medtransfer draws it (csv:, heart:, folder: without split folders): repeated hold-out
    for cohorts too small for one fixed test split. `target`/`group`: label and patient columns of a
    csv: or text-csv: table; `text`: a text-csv: table's text column; `id`: its identifier column (kept in predictions, never a feature); `drop`: columns to
    leave out. `weights=False` saves the run without model.safetensors (grids keep predictions only).
    `progress`: True (bars), False, or a `medtransfer.progress.Progress`.

    Clinical evaluation: `positive` names the positive class of a binary task (default: the dataset's
    declared one, else the class opposite one named like a negative finding, else the second class, with
    a warning); `threshold` the operating point chosen on validation (0.5, a number, "youden", "sens=0.90",
    "spec=0.95"; multiclass "argmax" or "prior"); `calibrate` none / temperature / platt / isotonic,
    fitted on validation; `class_weight` and `sampler` ("none" / "balanced") for class imbalance.

    Fine-tuning and speed: `layer_decay` (full, lp-ft, l2-sp: each backbone stage's learning rate is the
    head's times decay^depth; default 0.7 for images and signals, chosen on validation; "flat": the whole
    backbone at 0.1 x the head, the default for volumes, tables and text), `precision` ("auto": bf16
    autocast on CUDA; "bf16", "fp32"), `channels_last` and `compile` (torch.compile of the training steps,
    falling back with a warning).

    Differential privacy: `dp="epsilon=1"` (or "epsilon=E,delta=D,clip=C", or a dict of those keys) trains
    with DP-SGD (Opacus) at that target epsilon; delta defaults to min(1e-5, 1/(10 n)), clip to 1.0. Only
    full, head, partial and scratch train privately; metrics["dp"] holds the accountant's spent epsilon.

    Data parallel: `devices=N` (x `num_nodes=M`) trains with DDP in N x M processes (docs/multi-device.md);
    `batch_size` stays the global batch, each device trains on its share; rank 0 writes the run and its
    result is returned (None on a node other than node 0). Strategies not tagged `data_parallel` are refused.

    Unlabelled images: `unlabelled="folder:PATH"` adds the target hospital's images without labels (any layout)
    to what the linear probe standardises its features on and what dann / coral / mmd / prior-shift adapt to;
    images identical to the target's validation or test inputs are left out and counted."""
    check_options(seed=seed, split_seed=split_seed, budget=budget, image_size=image_size, epochs=epochs, lr=lr,
                  batch_size=batch_size, patience=patience, source_epochs=source_epochs, accelerator=accelerator,
                  n_boot=n_boot, devices=devices, num_nodes=num_nodes)
    source = str(source) if isinstance(source, Path) else source  # a run folder or weights file as a Path
    return pipeline.transfer(TransferRequest(
        data, strategy, source, budget=budget, seed=seed, split_seed=split_seed, backbone=backbone,
        image_size=image_size, source_epochs=source_epochs, positive=positive, threshold=threshold,
        calibrate=calibrate, loading=DataOptions(data_root, target, group, id, drop, text),
        training=TrainOptions(epochs, lr, batch_size, patience, augment, class_weight, sampler, layer_decay, precision,
                              channels_last, compile, devices, num_nodes),
        output=Output(out, overwrite, save, weights), accelerator=accelerator, n_boot=n_boot,
        progress=as_progress(progress), dp=dp, unlabelled=unlabelled))


def pretrain(data: str | list[str], *, method: str = "supervised", backbone: str | None = None,
             out: str | Path | None = None, seed: int = 0, overwrite: bool = False, **options) -> RunResult:
    """Pretrain a source model on a (large) source dataset.

    method="supervised" (default): a scratch run with every label; `options` are those of `transfer`
    (epochs, lr, image_size, data_root, target, ...). method="simclr" or "moco": self-supervised on the
    training images of one or more 2D image datasets (`data` a list or a comma list; labels ignored),
    see `pretrain_self_supervised` for the options."""
    check_options(seed=seed, **{k: v for k, v in options.items() if k in OPTIONS})
    if method not in PRETRAIN_METHODS:
        raise MedTransferError(f"unknown pretraining method {method!r}; choose one of: {', '.join(PRETRAIN_METHODS)}")
    if method != "supervised":
        return pretrain_self_supervised(data, method, backbone=backbone, out=out, seed=seed, overwrite=overwrite,
                                        **options)
    ssl_only = [k for k in SSL_OPTIONS if options.pop(k, None) is not None]
    if ssl_only:
        raise MedTransferError(f"{', '.join(ssl_only)} apply to --method simclr or moco, not supervised")
    train = {k: options.pop(k, None) for k in ("epochs", "lr", "batch_size", "patience", "augment", "class_weight",
                                               "sampler", "layer_decay", "precision", "channels_last", "compile",
                                               "devices", "num_nodes")}
    loading = {k: options.pop(k, None) for k in ("data_root", "target", "group", "text")}
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
                             group: str | None = None, devices: int | None = None,
                             num_nodes: int | None = None) -> RunResult:
    """SimCLR / MoCo v2 on the images of `data` (labels ignored); the monitor is k-NN AUC on the
    first dataset's labelled val split when it has one (the best epoch is kept; else the last).
    `views`: augmentation options (ViewConfig fields) as a dict or ["name=value", ...]. The run folder
    is an ordinary source: `transfer(..., source=run_dir)` gives the target a new head. `devices` /
    `num_nodes`: data-parallel pretraining (DDP; negatives gathered from every device), as in `transfer`."""
    check_options(seed=seed, image_size=image_size, epochs=epochs, lr=lr, batch_size=batch_size, patience=patience,
                  accelerator=accelerator, temperature=temperature, queue_size=queue_size, momentum=momentum,
                  limit=limit, devices=devices, num_nodes=num_nodes)
    return pipeline.pretrain(PretrainRequest(
        data, method, backbone=backbone, seed=seed, image_size=image_size,
        loading=DataOptions(data_root, target, group),
        training=TrainOptions(epochs, lr, batch_size, patience, devices=devices, num_nodes=num_nodes),
        ssl=SSLOptions(temperature, queue_size, momentum, views, monitor is not False, limit),
        output=Output(out, overwrite, save), accelerator=accelerator, progress=as_progress(progress)))


def evaluate(run: str | Path, data: str | None = None, split: str = "test", data_root=None,
             n_boot: int = N_BOOT, seed: int = 0, predictions: str | Path | None = None) -> dict:
    """Metrics (with 95% CIs) of a saved run on a split of its own or another dataset, at the run's own
    operating point and positive class. `split="all"` scores every example (external validation of a
    whole site). Besides {metric: {"value", "ci"}} the dict holds "operating_point" and "counts".
    `predictions`: also write the per-example predictions (id, label, probabilities, decision) there."""
    check_options(split=split, n_boot=n_boot, seed=seed)
    metrics, frame = pipeline.evaluate(run, data, split, data_root, n_boot, seed)
    if predictions is not None:
        frame.to_csv(predictions, index=False)
    return metrics


def predict(run: str | Path, inputs, data_root=None):
    """Class probabilities of a saved run for new inputs (a DataFrame, one row per input). `inputs`: a path
    or str (a CSV of patients, an image, a folder of images, a CSV of texts for a text model) or a dataset
    spec (its test split); a pandas DataFrame of patients (tabular models: encoded as its CSV would be) or
    of texts (text models: the run's text column, or one named text); or images as a torch tensor or
    numpy array (N, C, H, W) shaped like the training images, float in [0, 1] or uint8 in 0-255; or
    signals as an array (N, C, T) (or (N, T) for one channel) in the training recordings' units and rate."""
    import numpy as np
    import pandas as pd
    import torch

    from .pipeline.reuse import predict_frame, predict_tensor

    if isinstance(inputs, (str, Path)):
        return pipeline.predict(run, str(inputs), data_root)
    if isinstance(inputs, pd.DataFrame):
        return predict_frame(run, inputs)
    if isinstance(inputs, (np.ndarray, torch.Tensor)):
        meta = read_meta(Path(run))
        x = signal_tensor(meta, inputs) if meta["input"]["modality"] == "signal" else image_tensor(meta, inputs)
        return predict_tensor(run, x, [str(i) for i in range(len(x))])
    raise MedTransferError(f"cannot predict on a {type(inputs).__name__}: give a path (CSV, image or folder) or a "
                           "dataset spec as a str or Path, a pandas DataFrame of patients, or images (N, C, H, W) or "
                           "signals (N, C, T) as a torch tensor or numpy array")


def explain(run: str | Path, inputs, out: str | Path, *, method: str | None = None, class_name: str | None = None,
            limit: int | None = None, layer: str | None = None, overwrite: bool = False, data_root=None,
            seed: int = 0, repeats: int = 5):
    """Explain a saved run's predictions for `inputs` (what `predict` takes as a path or dataset spec) into
    the folder `out`: predictions.csv (equal to `predict`), explanations.csv, explanations.md / .html, and
    per modality: images, Grad-CAM overlays (`method` "gradcam" or "gradcam++", on the backbone stage
    `layer`, default the last) with the model-randomisation sanity check (sanity.json: Spearman's rho
    between trained and randomised maps); tables, integrated gradients per prediction by original column
    (attributions.csv) and permutation importance on the run's test split (importance.csv, `repeats`
    permutations); signals, integrated gradients per sample; texts, over the tokens (tokens.csv / .html).
    `class_name`: the class explained (default: a binary run's positive class, else the class decided);
    `limit`: the first N inputs. Returns the `Explanation`."""
    from .pipeline.explain import explain as run_explain
    from .reporting.explain import write_explain_report

    check_options(seed=seed, limit=limit)
    if not isinstance(inputs, (str, Path)):
        raise MedTransferError(f"explain takes its inputs as a path (CSV, image, folder) or a dataset spec, not a "
                               f"{type(inputs).__name__}; save them to a file first")
    return run_explain(run, str(inputs), out, method=method, class_name=class_name, limit=limit, layer=layer,
                       overwrite=overwrite, data_root=data_root, seed=seed, repeats=repeats,
                       write_report=write_explain_report)


def export(run: str | Path, format: str, out: str | Path, *, overwrite: bool = False,  # noqa: A002 - --format
           data_root=None, examples: int | None = None):
    """Write a saved run's model as one ONNX or TorchScript file (`format` "onnx" or "torchscript") at `out`,
    plus `<out>.json`. The file takes what `predict` feeds the model (images in [0, 1] at the training images'
    channels and size, 3D volumes, encoded table rows, signals (N, C, T)), with a dynamic batch axis, and outputs
    class probabilities; resize, normalisation and calibration are inside it. The classes, the operating point
    (positive class, threshold), the input contract (for tables: the encoding recipe) and the model version are
    in the file's metadata and the sidecar. Before the file is kept it is run (onnxruntime on the CPU, or the
    TorchScript reloaded) on the run's test split (`examples`: its first N) and compared with the PyTorch model:
    refused above 1e-4 max |delta p|. `data_root`: where the run's dataset is now. Returns an `ExportResult`
    (path, sidecar, max_abs_diff, n_checked, description)."""
    from .pipeline.export import export as export_run

    check_options(examples=examples)
    return export_run(run, format, out, overwrite=overwrite, data_root=data_root, examples=examples)


def signal_tensor(meta: dict, signals, warnings: list[str] | None = None):
    """Signals (N, C, T), or (N, T) for a one-channel model, as float32; the channels must be the model's.
    `warnings`: a list to add what deserves one to (`medtransfer serve` answers them); else they are logged."""
    import logging

    import torch

    from .pipeline.reuse import check_signal_inputs

    try:
        x = torch.as_tensor(signals).detach().cpu().float()
    except (TypeError, RuntimeError, ValueError) as exc:
        raise MedTransferError(f"cannot read the signal array ({exc}): give numbers, (N, C, T)") from None
    if x.ndim == 2 and meta["input"]["channels"] == 1:
        x = x[:, None, :]
    if x.ndim != 3 or len(x) == 0 or x.shape[2] == 0:
        raise MedTransferError(f"signals must be an array (N, C, T) with N >= 1, got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise MedTransferError("the signal array holds missing or infinite samples (NaN/inf); fill or trim them")
    found: list[str] = [] if warnings is None else warnings
    check_signal_inputs(meta, x, "the signal array", found)
    if warnings is None:
        for warning in found:
            logging.getLogger("medtransfer").warning(warning)
    return x


def image_tensor(meta: dict, images):
    """Images as the training path decoded them: float32 (N, C, H, W) in [0, 1], with the channels and size
    of the training images. uint8 is read as 0-255; any other range, layout, channel count or size is
    refused rather than guessed (a grey copy of a colour image would give a plausible wrong answer)."""
    import torch

    from .pipeline.reuse import decoded_layout

    if meta["input"]["modality"] != "image2d":
        raise MedTransferError(f"an array of 2D images does not fit this run's model, which takes "
                               f"{meta['input']['modality']} inputs: give a CSV or DataFrame (tables) or a "
                               "dataset spec")
    try:
        x = torch.as_tensor(images).detach().cpu()
    except (TypeError, RuntimeError) as exc:
        raise MedTransferError(f"cannot read the image array ({exc}): give float in [0, 1] or uint8") from None
    channels, size = decoded_layout(meta)
    size = (size, size) if isinstance(size, int) else size
    if x.ndim != 4 or len(x) == 0:
        raise MedTransferError(f"images must be an array (N, C, H, W) with N >= 1, got shape {tuple(x.shape)}; "
                               "for one grey image add the axes: x[None, None]")
    if x.shape[1] != channels:
        raise MedTransferError(f"images have {x.shape[1]} channel(s) but the model was trained on {channels}: give "
                               f"(N, {channels}, H, W) images (grey for 1 channel, RGB for 3)")
    if size and tuple(x.shape[2:]) != tuple(size):
        raise MedTransferError(f"images are {x.shape[2]}x{x.shape[3]} but the model was trained on "
                               f"{size[0]}x{size[1]}; resize them, or predict on the image files (resized as in "
                               "training)")
    if x.dtype == torch.uint8:
        return x.float() / 255
    if not x.is_floating_point():
        raise MedTransferError(f"images of type {x.dtype} are ambiguous: give float in [0, 1] or uint8 in 0-255")
    x = x.float()
    if not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1:
        raise MedTransferError(f"float images must lie in [0, 1] (uint8 is read as 0-255), got values from "
                               f"{x.min():.4g} to {x.max():.4g}: scale them to [0, 1] or pass uint8")
    return x


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

    check_options(seed=seed, n_perm=n_perm, max_samples=max_samples, n_boot=n_boot, accelerator=accelerator)
    request = ShiftRequest(source, target, model, DataOptions(data_root, label_column, group), seed=seed,
                           n_perm=n_perm, max_samples=max_samples, n_boot=n_boot, accelerator=accelerator,
                           output=Output(out, overwrite, save))
    return pipeline.shift(request, write_report=write_shift_report)


def rank(data: str, sources, *, budget=None, seed: int = 0, data_root=None, target: str | None = None,
         group: str | None = None, image_size: int | None = None, backbone: str | None = None,
         source_epochs: int | None = None, accelerator: str = "auto", out: str | Path | None = None,
         overwrite: bool = False, against: str | Path | None = None, progress=True):
    """Rank candidate `sources` for the target `data` before any fine-tuning: LogME on each source's frozen
    features of the target's labelled training examples (at most `budget`, drawn with `seed` as `transfer`
    draws them), and LEEP / NCE where the source has a classifier head with known classes. A source
    dataset is pretrained once (cached) exactly as `transfer` would; a source that cannot run on the
    target is listed with its reason. `sources`: a list, or a comma list (a multi: source, whose own list
    has commas, goes alone in a list item). `against`: an experiment folder; each source's validation-
    chosen fine-tuned test AUC at this budget is read from its results.csv and Kendall's tau between each
    score and those AUCs is reported; source datasets are pretrained with the grid's image size, source
    epochs and (one) backbone, and a different one given here is refused. `out`: a folder for rank.json and
    rank.md. Returns a `RankResult` (`.scores`, best LogME first; `.against`)."""
    from .pipeline.rank import RankRequest
    from .pipeline.rank import rank as run_rank

    check_options(seed=seed, budget=budget, image_size=image_size, source_epochs=source_epochs,
                  accelerator=accelerator)
    request = RankRequest(data, source_list(sources), budget=budget, seed=seed,
                          loading=DataOptions(data_root, target, group), image_size=image_size, backbone=backbone,
                          source_epochs=source_epochs, accelerator=accelerator, against=against, out=out,
                          overwrite=overwrite, progress=as_progress(progress))
    return run_rank(request, write_report=write_rank_report)


def source_list(sources) -> list[str]:
    """Sources as a list: a str or each item of a list is split on commas, except a multi: source (its
    datasets are comma-separated), which is taken whole."""
    items = [sources] if isinstance(sources, (str, Path)) else list(sources or [])
    specs = []
    for item in items:
        item = str(item).strip()
        specs += [item] if item.startswith("multi:") else [s.strip() for s in item.split(",") if s.strip()]
    return specs


def rank_blocks(result) -> list:
    """What `medtransfer rank` shows and rank.md holds: the table (best LogME first), what the scores
    are, and Kendall's tau with the grid when ranked --against one. (What each source resolved to, e.g.
    the cached pretrained model's folder, is in rank.json.)"""
    from .reporting.blocks import Paragraph, Table

    against = result.against
    header = ["#", "source", "LogME", "LEEP", "NCE"]
    header += ["grid test AUC (strategy, seeds)", "linear-probe test AUC"] if against else []
    header += ["seconds", "note"]
    rows = []
    for i, s in enumerate(result.scores, 1):
        row = [str(i) if s.refused is None else "-", s.source] + [_score(v) for v in (s.logme, s.leep, s.nce)]
        if against:
            row.append("" if s.grid_auc is None else f"{s.grid_auc:.4f} ({s.grid_strategy}, {s.grid_seeds})")
            row.append(_score(s.probe_auc))
        row += [f"{s.seconds:.1f}", f"cannot run: {s.refused}" if s.refused else (s.note or "")]
        rows.append(row)
    budget = "all" if result.budget is None else result.budget
    blocks = [Table(header, rows, title=f"sources for {result.data} ({result.task}), scored on {result.n_train} "
                                        f"labelled training examples (budget {budget}, seed {result.seed})"),
              Paragraph("Scores of each source's frozen model on the target's labelled training examples, before "
                        "any fine-tuning; larger is better for all three, and they compare sources for this target "
                        "only. LogME (You et al. 2021): the log evidence per example of a Bayesian linear model on "
                        "the features, for every source. LEEP (Nguyen et al. 2020) and NCE (Tran et al. 2019): from "
                        "the source head's predictions, where the source has a single-label head with known "
                        "classes. Seconds include pretraining a source dataset that was not cached yet.")]
    if against:
        tau_rows = []
        for name, entry in against["tau"].items():
            label = {"logme": "LogME", "leep": "LEEP", "nce": "NCE"}[name]
            tau_rows.append([label, *_tau(entry), *_tau(against["tau_probe"][name])])
        blocks += [Table(["score", "Kendall's tau with the grid AUC", "p", "sources",
                          "tau with the linear-probe AUC", "p", "sources"], tau_rows,
                         title=f"against {against['experiment']} (budget {against['budget']})"),
                   Paragraph("Grid AUC: per source, the transfer (non-baseline) strategy with the best seed-mean "
                             "validation AUC at this budget, and its seed-mean test AUC, as the experiment report "
                             "chooses. Linear-probe AUC: the source's linear-probe cells alone, the view of the "
                             "source the scores take (frozen features, a linear layer); a source that wins only "
                             "when fine-tuned ranks low by its scores and high by the grid AUC. Kendall's tau "
                             "(tau-b) between each score and those AUCs, over the sources that have both."
                             + (f" No grid cells for: {', '.join(against['missing'])}." if against["missing"] else ""))]
    return blocks


def _tau(entry: dict) -> list[str]:
    """A tau's three cells: tau, p and the number of sources (or why there is no tau)."""
    if entry["tau"] is None:
        return ["", "", f"{entry['n']} ({entry['why']})"]
    return [f"{entry['tau']:.3f}", f"{entry['p']:.3g}", str(entry["n"])]


def _score(value) -> str:
    return "" if value is None else f"{value:.4f}"


def write_rank_report(result, folder: Path) -> Path:
    """rank.md in `folder` (rank.json is written by the pipeline)."""
    from .reporting.blocks import to_markdown

    path = Path(folder) / "rank.md"
    path.write_text(to_markdown(f"Source ranking for {result.data}", rank_blocks(result)), encoding="utf-8")
    return path


def experiment(config: str | Path, out: str | Path | None = None, jobs: int = 1, data_root: str | None = None,
               progress: bool = True, report: bool = True, console=None, overwrite: bool = False,
               backend: str = "local", address: str | None = None, gpus_per_cell: float = 0) -> Path:
    """Run (or resume) an experiment grid from its YAML; write results.csv, the MLflow store and
    (unless report=False) report.html / report.md. Returns the experiment folder.

    `backend`: "local" (`jobs` processes on this machine) or "ray" (Ray tasks: on the cluster at `address`,
    else on a local Ray with `jobs` CPUs; `gpus_per_cell` GPUs reserved for each cell; docs/distributed.md).

    A folder that holds another experiment is refused unless `overwrite` (which replaces it). Cells that
    cannot run are recorded as failed and the others go on; once everything is written, failed cells raise
    `medtransfer.experiment.CellsFailed` (a MedTransferError with `.out` and `.failed`)."""
    from .experiment import run_experiment

    check_options(jobs=jobs, gpus_per_cell=gpus_per_cell)  # the backend is checked first thing in there

    def write(folder: Path) -> None:  # written while the experiment folder is still locked
        html, _ = write_report(folder)
        if console is not None:
            console.print(f"report: {html}")

    return run_experiment(Path(config), out=Path(out) if out else None, jobs=jobs, data_root=data_root,
                          progress=progress, console=console, overwrite=overwrite, after=write if report else None,
                          backend=backend, address=address, gpus_per_cell=gpus_per_cell)


run_experiment = experiment  # the name grids were run by before the API had `experiment`


def write_report(folder: str | Path) -> tuple[Path, Path]:
    """(Re)write report.html and report.md of an experiment folder from its results."""
    from .reporting.experiment import write_report as write

    folder = Path(folder)
    if not (folder / "results.csv").is_file():
        raise MedTransferError(f"{folder} has no results.csv: run `medtransfer experiment CONFIG.yaml` first")
    return write(folder)


def federated(config: str | Path, out: str | Path | None = None, *, engine: str | None = None,
              overwrite: bool = False, progress=True, report: bool = True):
    """Federated transfer with Flower from a YAML (see examples/heart-federated.yaml and docs/federated.md):
    the sites train one model with FedAvg / FedProx / FedAdam (only weights and aggregate statistics leave a
    site's client), each site then fine-tunes it on its own data; local-only, pooled and source references are
    trained beside. The config's `dp` levels (e.g. [none, "epsilon=1"]) add federations trained with DP-SGD at
    every site, each site's accountant's epsilon recorded. `engine`: "simulation" (Flower's simulation engine on Ray) or "grpc" (one client process per
    site over gRPC on 127.0.0.1); default: the config's. Writes results.csv, predictions.csv, federation.json,
    the federated models and (unless report=False) report.html / report.md into `out` (default
    federated/<name>). Returns a `medtransfer.federation.FederatedResult`."""
    from .federation import load_federated_config, run_federated

    settings, text = load_federated_config(Path(config))
    result = run_federated(settings, text, out, engine=engine, overwrite=overwrite, progress=as_progress(progress))
    if report:
        from .reporting.federated import write_federated_report
        write_federated_report(result.out)
    return result


__all__ = ["pretrain", "pretrain_self_supervised", "transfer", "evaluate", "predict", "explain", "export", "shift",
           "rank", "experiment", "write_report", "federated", "RunResult", "read_meta"]
