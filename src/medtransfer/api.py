"""The Python API: pretrain, transfer, evaluate, predict. The CLI is a thin layer over these."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import __version__
from .data import TaskDataset, apply_budget, load_dataset, parse_budget
from .data.tabular import TabularEncoder
from .errors import MedTransferError
from .evaluation import compute_metrics
from .models.backbones import Classifier, default_spec, describe
from .models.checkpoint import load_checkpoint, read_meta, save_checkpoint
from .models.sources import Source, check_compatible, is_dataset_spec, load_source_model
from .runs import check_writable, commit_dir, default_run_dir, predictions_frame, staging_dir, write_json
from .strategies import TransferContext, get_strategy
from .strategies.baselines import TabularBaseline
from .training.loop import TrainConfig, predict_proba

# Per-modality training defaults; every one can be overridden by the caller.
DEFAULTS = {
    "image2d": dict(epochs=15, batch_size=64, lr=1e-3, patience=5, augment=True, min_steps_per_epoch=10),
    "image3d": dict(epochs=20, batch_size=16, lr=1e-3, patience=5, augment=True, min_steps_per_epoch=10),
    "tabular": dict(epochs=100, batch_size=32, lr=3e-3, patience=20, augment=False),
}


@dataclass
class RunResult:
    model: Classifier
    metrics: dict  # {"val": {...}, "test": {...}, "fit": {...}}
    predictions: pd.DataFrame
    config: dict
    out: Path | None = None
    dataset: TaskDataset | None = field(default=None, repr=False)


def train_config(modality: str, seed: int, **overrides) -> TrainConfig:
    values = dict(DEFAULTS[modality])
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(seed=seed, **values)


def cache_dir() -> Path:
    return Path(os.environ.get("MEDTRANSFER_CACHE", "~/.cache/medtransfer")).expanduser()


PRETRAIN_METHODS = ("supervised", "simclr", "moco")


def pretrain(data: str | list[str], *, method: str = "supervised", backbone: str | None = None,
             out: str | Path | None = None, seed: int = 0, overwrite: bool = False, **options) -> RunResult:
    """Pretrain a source model on a (large) source dataset.

    method="supervised" (default): a scratch run with every label. method="simclr" or "moco":
    self-supervised on the training images of one or more 2D image datasets (`data` a list or a
    comma list; labels ignored), see `pretrain_self_supervised` for the options."""
    if method not in PRETRAIN_METHODS:
        raise MedTransferError(f"unknown pretraining method {method!r}; choose one of: {', '.join(PRETRAIN_METHODS)}")
    if method != "supervised":
        return pretrain_self_supervised(data, method, backbone=backbone, out=out, seed=seed, overwrite=overwrite,
                                        **options)
    ssl_only = [k for k in ("temperature", "queue_size", "momentum", "views", "monitor", "limit")
                if options.pop(k, None) is not None]
    if ssl_only:
        raise MedTransferError(f"{', '.join(ssl_only)} apply to --method simclr or moco, not supervised")
    specs = split_data(data)
    if len(specs) > 1:
        raise MedTransferError(f"supervised pretraining takes one dataset, got {len(specs)}; pooling several "
                               "(unlabelled) datasets needs --method simclr or moco")
    data = specs[0]
    return transfer(data, strategy="scratch", source=None, backbone=backbone, out=out, seed=seed,
                    overwrite=overwrite, **options)


def split_data(data) -> list[str]:
    from .ssl.pretrain import split_specs
    return split_specs(data)


def pretrain_self_supervised(data: str | list[str], method: str = "simclr", *, backbone: str | None = None,
                             out: str | Path | None = None, seed: int = 0, overwrite: bool = False,
                             save: bool = True, data_root=None, image_size: int | None = None,
                             epochs: int | None = None, lr: float | None = None, batch_size: int | None = None,
                             patience: int | None = None, accelerator: str = "auto", progress: bool = True,
                             temperature: float | None = None, queue_size: int | None = None,
                             momentum: float | None = None, views=None, monitor: bool | None = True,
                             limit: int | None = None, target: str | None = None,
                             group: str | None = None) -> RunResult:
    """SimCLR / MoCo v2 on the images of `data` (labels ignored); the monitor is k-NN AUC on the
    first dataset's labelled val split when it has one (the best epoch is kept; else the last).
    `views`: augmentation options (ViewConfig fields) as a dict or ["name=value", ...]. The run folder
    is an ordinary source: `transfer(..., source=run_dir)` gives the target a new head."""
    from .ssl import SSL_DEFAULTS, pretrain_ssl, split_specs

    specs = split_specs(data)
    if target or group:
        raise MedTransferError(f"--method {method} takes image datasets; --target/--group are for csv: tables")
    if save:
        out = Path(out) if out else default_run_dir("+".join(specs), method, f"s{seed}")
        check_writable(out, overwrite)
    started = time.perf_counter()
    values = dict(SSL_DEFAULTS)
    values.update({k: v for k, v in dict(epochs=epochs, lr=lr, batch_size=batch_size, patience=patience).items()
                   if v is not None})
    values["warmup_epochs"] = min(5.0, 0.1 * values["epochs"])
    config = TrainConfig(seed=seed, accelerator=accelerator, progress=progress, **values)
    result = pretrain_ssl(specs, method, backbone=backbone, seed=seed, config=config, image_size=image_size,
                          data_root=data_root, temperature=temperature, queue_size=queue_size, momentum=momentum,
                          views=views, monitor=monitor is not False, limit=limit)
    fit = result.fit
    model = result.encoder.cpu().eval()
    monitor_metrics = dict(result.monitor, best=fit.best_score, best_epoch=fit.best_epoch) if result.monitor else None
    metrics = {"monitor": monitor_metrics,
               "fit": {"best_epoch": fit.best_epoch, "epochs_run": fit.epochs_run, "monitor_score": fit.best_score,
                       "seconds": round(fit.seconds, 3), "total_seconds": round(time.perf_counter() - started, 3)}}
    resolved = {
        "data": specs, "method": method, "strategy": f"pretrain-{method}", "seed": seed,
        "backbone": model.architecture.get("name"), "architecture": model.architecture, "input": model.spec.to_dict(),
        "n_images": result.n_images, "limit": limit, "train": asdict(config), "method_settings": result.method.settings(),
        "views": asdict(result.method.views), "monitor": result.monitor,
        "data_root": str(data_root) if data_root else None, "versions": versions(),
    }
    run = RunResult(model, metrics, pd.DataFrame(), resolved, None, None)
    if save:
        write_pretrain_run(run, out, fit.history)
        run.out = out
    return run


SELF_SUPERVISED_TASK = "self-supervised"  # model.json "task" of an SSL source: no classes, a placeholder head


def write_pretrain_run(result: RunResult, out: Path, history: list[dict]) -> None:
    """A self-supervised run folder: the checkpoint (classes [] so every transfer builds a new head),
    config.json, metrics.json (monitor, fit) and log.txt; no predictions (there is no classifier)."""
    stage = staging_dir(out)
    config = result.config
    provenance = {"method": config["method"], "data": config["data"], "epochs": result.metrics["fit"]["epochs_run"],
                  "best_epoch": result.metrics["fit"]["best_epoch"], "epochs_planned": config["train"]["epochs"],
                  "n_images": config["n_images"], "seed": config["seed"], "settings": config["method_settings"],
                  "views": config["views"], "monitor": result.metrics["monitor"], "versions": config["versions"]}
    save_checkpoint(stage, result.model, SELF_SUPERVISED_TASK, [], None, provenance)
    write_json(stage / "config.json", config)
    write_json(stage / "metrics.json", result.metrics)
    lines = [f"medtransfer {__version__} run: {config['method']} pretraining on {', '.join(config['data'])}",
             *(json.dumps(h) for h in history)]
    (stage / "log.txt").write_text("\n".join(lines) + "\n")
    commit_dir(stage, out)


def require_classifier(meta: dict, run: Path) -> None:
    if meta.get("task") == SELF_SUPERVISED_TASK:
        raise MedTransferError(f"{run} is a self-supervised source model (no classifier head): transfer it first, "
                               f"e.g. medtransfer transfer --source {run} --strategy linear-probe --data …")


def cached_source(source_data: str, backbone: str | None, seed: int, options: dict,
                  architecture: dict | None = None) -> Path:
    """Pretrain on a source dataset once per (dataset, architecture, settings); later calls reuse it.
    The resolved architecture is part of the key, so a changed model definition is never served stale."""
    keep = {k: options.get(k) for k in ("image_size", "data_root", "target", "group", "accelerator")}
    keep["epochs"] = options.get("source_epochs")
    key = json.dumps({"data": source_data, "backbone": backbone, "seed": seed, "version": __version__,
                      "architecture": architecture, **keep}, sort_keys=True, default=str)
    folder = cache_dir() / "sources" / hashlib.sha256(key.encode()).hexdigest()[:16]
    if not (folder / "model.json").is_file():
        settings = {k: v for k, v in keep.items() if k != "epochs"}
        pretrain(source_data, backbone=backbone, out=folder, seed=seed, overwrite=True, save=True,
                 epochs=keep["epochs"], progress=options.get("progress", True), **settings)
    return folder


def transfer(data: str, strategy: str = "full", source: str | None = None, *, budget=None, seed: int = 0,
             split_seed: int = 0, backbone: str | None = None, out: str | Path | None = None, overwrite: bool = False,
             save: bool = True, data_root=None, target: str | None = None, group: str | None = None,
             image_size: int | None = None, epochs: int | None = None, lr: float | None = None,
             batch_size: int | None = None, patience: int | None = None, augment: bool | None = None,
             source_epochs: int | None = None, accelerator: str = "auto", n_boot: int = 1000,
             progress: bool = True, weights: bool = True) -> RunResult:
    """Move a source model (or none, for `scratch`) to the target dataset `data` with `strategy`,
    using at most `budget` labelled target examples; evaluate on the target's test split.
    `split_seed` redraws the target's train/val/test split where medtransfer draws it (csv:, heart:,
    folder: without split folders): repeated hold-out for cohorts too small for one fixed test split.
    `weights=False` saves the run without model.safetensors (experiment grids keep predictions only)."""
    started = time.perf_counter()
    chosen = get_strategy(strategy)
    if parse_budget(budget) == 0 and not chosen.unlabelled_ok:
        from .strategies import STRATEGIES
        able = ", ".join(sorted(n for n, cls in STRATEGIES.items() if cls.unlabelled_ok))
        raise MedTransferError(f"strategy {strategy!r} needs labelled target examples, so --budget 0 is refused; "
                               f"give a budget such as 20, or use a strategy that needs no target labels: {able}")
    if save:
        out = Path(out) if out else default_run_dir(data, strategy, "all" if budget is None else budget, f"s{seed}")
        check_writable(out, overwrite)
    load_opts = dict(data_root=data_root, target=target, group=group)

    src, source_data = None, None
    if source and is_dataset_spec(source):
        source_data = load_dataset(source, **load_opts)
        if not isinstance(chosen, TabularBaseline) and chosen.name != "scratch":
            architecture = describe(backbone, source_data.modality, source_data.in_channels,
                                    len(source_data.info.get("features") or []))
            folder = cached_source(source, backbone, 0, dict(load_opts, image_size=image_size,
                                   source_epochs=source_epochs, accelerator=accelerator, progress=progress),
                                   architecture)
            model, meta = load_checkpoint(folder)
            src = Source(model, f"pretrained on {source} ({folder})", meta["classes"], meta.get("encoder"))
    elif source:
        modality, channels = peek_input(data, load_opts)
        src = load_source_model(source, modality, channels, backbone, image_size)

    encoder = source_data.encoder if source_data is not None else None
    if encoder is None and src is not None and src.encoder:
        encoder = TabularEncoder.from_dict(src.encoder)
    dataset = load_dataset(data, **load_opts, encoder=encoder, split_seed=split_seed)
    if split_seed and "split_seed" not in dataset.info:
        raise MedTransferError(f"{data} comes with fixed splits, so --split-seed {split_seed} cannot redraw them; "
                               "it applies to csv:, heart: and folder: datasets without split folders")
    features = dataset.info.get("features")
    if src is not None:
        check_compatible(src.model, dataset.modality, dataset.in_channels, features)
    budgeted = apply_budget(dataset, budget, seed)

    if src is not None:
        architecture, spec = src.model.architecture, src.model.spec
    else:
        architecture = describe(backbone, dataset.modality, dataset.in_channels, len(features or []))
        spec = default_spec(dataset.modality, dataset.in_channels, features, image_size)
    config = train_config(dataset.modality, seed, epochs=epochs, lr=lr, batch_size=batch_size,
                          patience=patience, augment=augment)
    config.accelerator, config.progress = accelerator, progress
    ctx = TransferContext(budgeted, config, architecture, spec, src.model if src else None, source_data,
                          src.classes if src else None, unlabelled=dataset.train.x)
    model = chosen.run(ctx)

    metrics, frames = {}, []
    for split_name in ("val", "test"):  # the test split is touched once, here, after selection
        split = budgeted.split(split_name)
        if len(split) == 0:  # budget 0: no labelled target validation examples
            metrics[split_name] = {}
            continue
        prob = predict_proba(model, split.x, dataset.task)
        metrics[split_name] = compute_metrics(split.y.numpy(), prob, dataset.task, n_boot=n_boot, seed=seed)
        frames.append(predictions_frame(split_name, split.y.numpy(), prob, dataset.classes))
    fit = ctx.fit_result
    metrics["fit"] = {"best_epoch": fit.best_epoch, "epochs_run": fit.epochs_run, "val_score": fit.best_score,
                      "seconds": round(fit.seconds, 3)} if fit else {}
    metrics["fit"]["total_seconds"] = round(time.perf_counter() - started, 3)
    resolved = {
        "data": data, "strategy": strategy, "source": source, "source_description": src.description if src else None,
        "budget": budget, "n_train_labels": len(budgeted.train), "n_val_labels": len(budgeted.val),
        "n_test": len(budgeted.test), "seed": seed, "split_seed": split_seed, "backbone": architecture.get("name"),
        "architecture": architecture, "input": spec.to_dict(), "train": asdict(config), "target": target,
        "group": group, "data_root": str(data_root) if data_root else None, "classes": dataset.classes,
        "task": dataset.task, "strategy_notes": ctx.notes, "versions": versions(),
    }
    result = RunResult(model, metrics, pd.concat(frames, ignore_index=True), resolved, None, budgeted)
    if save:
        write_run(result, out, dataset, fit.history if fit else [], weights)
        result.out = out
    return result


def peek_input(data: str, load_opts: dict) -> tuple[str, int]:
    """Modality and channel count of the target, to build a weights-file source to match."""
    dataset = load_dataset(data, **load_opts)
    return dataset.modality, dataset.in_channels


def versions() -> dict:
    import timm
    return {"medtransfer": __version__, "torch": torch.__version__, "timm": timm.__version__,
            "python": platform.python_version(), "device": "cuda" if torch.cuda.is_available() else "cpu"}


def write_run(result: RunResult, out: Path, dataset: TaskDataset, history: list[dict], weights: bool = True) -> None:
    stage = staging_dir(out)
    encoder = dataset.encoder.to_dict() if dataset.encoder is not None else None
    provenance = {k: result.config[k] for k in ("data", "strategy", "source", "source_description", "budget",
                                                "n_train_labels", "seed", "versions")}
    provenance["test_metrics"] = {k: v["value"] for k, v in result.metrics["test"].items()}
    save_checkpoint(stage, result.model, dataset.task, dataset.classes, encoder, provenance, weights)
    write_json(stage / "config.json", result.config)
    write_json(stage / "metrics.json", result.metrics)
    result.predictions.to_csv(stage / "predictions.csv", index=False)
    lines = [f"medtransfer {__version__} run: {result.config['strategy']} on {result.config['data']}",
             *(json.dumps(h) for h in history),
             "test: " + ", ".join(f"{k}={v['value']:.4f}" for k, v in result.metrics["test"].items())]
    (stage / "log.txt").write_text("\n".join(lines) + "\n")
    commit_dir(stage, out)


def evaluate(run: str | Path, data: str | None = None, split: str = "test", data_root=None,
             n_boot: int = 1000, seed: int = 0) -> dict:
    """Metrics (with 95% CIs) of a saved run on a split of its own or another dataset."""
    run = Path(run)
    model, meta = load_checkpoint(run)
    require_classifier(meta, run)
    config = json.loads((run / "config.json").read_text()) if (run / "config.json").is_file() else {}
    data = data or config.get("data")
    if not data:
        raise MedTransferError(f"{run} does not record its dataset: pass --data")
    encoder = TabularEncoder.from_dict(meta["encoder"]) if meta.get("encoder") else None
    same_data = data == config.get("data")  # its own dataset: the split the run was tested on
    dataset = load_dataset(data, data_root=data_root or config.get("data_root"), target=config.get("target"),
                           group=config.get("group"), encoder=encoder,
                           split_seed=config.get("split_seed", 0) if same_data else 0)
    check_compatible(model, dataset.modality, dataset.in_channels, dataset.info.get("features"))
    if dataset.classes != meta["classes"]:
        raise MedTransferError(f"class mismatch: the model predicts {meta['classes']}, {data} has {dataset.classes}")
    part = dataset.split(split)
    prob = predict_proba(model, part.x, dataset.task)
    return compute_metrics(part.y.numpy(), prob, dataset.task, n_boot=n_boot, seed=seed)


def predict(run: str | Path, inputs: str, data_root=None) -> pd.DataFrame:
    """Class probabilities of a saved run for new inputs: a CSV of patients, image files or a folder of
    images, or a dataset spec (its test split)."""
    from .data.folder import IMAGE_EXTENSIONS, decode_images

    run = Path(run)
    model, meta = load_checkpoint(run)
    require_classifier(meta, run)
    classes, task = meta["classes"], meta["task"]
    path = Path(inputs).expanduser()
    if meta.get("encoder") and path.suffix.lower() == ".csv":
        if not path.is_file():
            raise MedTransferError(f"CSV file {path} not found")
        frame = pd.read_csv(path)
        x = torch.from_numpy(TabularEncoder.from_dict(meta["encoder"]).transform(frame))
        ids = frame.index.astype(str)
    elif path.exists() and meta["input"]["modality"] == "image2d":
        files = sorted(p for p in ([path] if path.is_file() else path.rglob("*"))
                       if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
        if not files:
            raise MedTransferError(f"no PNG/JPEG/DICOM images in {path}")
        channels = meta["input"]["channels"]
        x = decode_images(files, meta["input"]["size"], 1 if channels == 3 else channels)
        ids = [str(f) for f in files]
    elif is_dataset_spec(inputs):
        encoder = TabularEncoder.from_dict(meta["encoder"]) if meta.get("encoder") else None
        dataset = load_dataset(inputs, data_root=data_root, encoder=encoder)
        x, ids = dataset.test.x, [f"test/{i}" for i in range(len(dataset.test))]
    else:
        raise MedTransferError(f"cannot predict on {inputs!r}: give a CSV file, an image or folder of images, "
                               "or a dataset such as medmnist:pneumoniamnist")
    prob = predict_proba(model, x, task)
    frame = pd.DataFrame(prob, columns=[f"prob_{c}" for c in classes])
    frame.insert(0, "input", list(ids))
    if task != "multilabel":
        frame["predicted"] = [classes[i] for i in prob.argmax(1)]
    return frame


@torch.no_grad()
def features_and_logits(model: Classifier, x: torch.Tensor, accelerator: str = "auto",
                        batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Backbone features and head logits of `model` for `x`, in eval mode, in batches."""
    device = "cuda" if accelerator in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
    model = model.to(device).eval()
    feats, logits = [], []
    for i in range(0, len(x), batch_size):
        f = model.features(x[i:i + batch_size].to(device)).float()
        feats.append(f.cpu())
        logits.append(model.head(f).float().cpu())
    model.cpu()
    if not feats:
        return np.zeros((0, model.num_features), np.float32), np.zeros((0, model.head.out_features), np.float32)
    return torch.cat(feats).numpy(), torch.cat(logits).numpy()


def recorded_columns(source: TaskDataset, target: TaskDataset, limit: float = 0.5) -> tuple[list[int], list[str]]:
    """Tables: indices of the encoded features whose column is recorded at the target (missing for at
    most `limit` of its rows, or as often as at the source), and the names of the columns that are not.
    A column mostly missing at one hospital was not measured there: imputed values carry no signal."""
    missing_s, missing_t = source.info.get("missing", {}), target.info.get("missing", {})
    dropped = [c for c, rate in missing_t.items() if rate > limit and missing_s.get(c, 0.0) <= limit]
    names = source.info.get("features") or []
    keep = [j for j, n in enumerate(names) if not any(n == c or n.startswith(c + "=") for c in dropped)]
    return keep, dropped


def source_logistic_logits(source: TaskDataset, keep: list[int], seed: int = 0):
    """A logistic regression on the source training rows (features `keep`), C chosen by the source
    validation log-loss (a probability model: calibration matters for prior estimates). Returns a
    function x -> logits (binary: [-z/2, z/2], so softmax = sigmoid(z))."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss

    train_x, val_x = source.train.x.numpy()[:, keep], source.val.x.numpy()[:, keep]
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    labels = list(range(source.num_classes))
    fits = [LogisticRegression(C=c, max_iter=5000, random_state=seed).fit((train_x - mean) / std,
                                                                           source.train.y.numpy())
            for c in (0.01, 0.1, 1.0, 10.0)]
    clf = min(fits, key=lambda f: log_loss(source.val.y.numpy(), f.predict_proba((val_x - mean) / std), labels=labels))

    def logits(x: torch.Tensor) -> np.ndarray:
        z = clf.decision_function((x.numpy()[:, keep] - mean) / std)
        return np.c_[-z / 2, z / 2] if z.ndim == 1 else z
    return logits


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
    from .evaluation.shift import diagnose, subsample
    from .evaluation.shift_report import write_shift_report

    if save:
        out = Path(out) if out else default_run_dir(source, "to", target, root="shift")
        check_writable(out, overwrite)
    load_opts = dict(data_root=data_root, target=label_column, group=group)
    notes, source_model, meta = [], None, {}
    if model is not None:
        source_model, meta = load_checkpoint(Path(model))
    encoder = TabularEncoder.from_dict(meta["encoder"]) if meta.get("encoder") else None
    src = load_dataset(source, **load_opts, encoder=encoder)
    tgt = load_dataset(target, **load_opts, encoder=encoder or src.encoder)
    if src.modality != tgt.modality:
        raise MedTransferError(f"{source} is {src.modality} but {target} is {tgt.modality}: compare like with like")
    missing = []
    if src.modality == "tabular":
        rates_s, rates_t = src.info.get("missing", {}), tgt.info.get("missing", {})
        missing = sorted(({"column": c, "source": rates_s.get(c, 0.0), "target": r} for c, r in rates_t.items()
                          if abs(r - rates_s.get(c, 0.0)) >= 0.1), key=lambda m: -abs(m["target"] - m["source"]))
    if source_model is not None:
        check_compatible(source_model, src.modality, src.in_channels, src.info.get("features"))
        trained_on = (meta.get("provenance") or {}).get("data")
        description = f"run {model}" + (f" (trained on {trained_on})" if trained_on else "")
        if trained_on and trained_on != source:
            notes.append(f"The model was trained on {trained_on}, not on {source}: the source prior below is "
                         f"{source}'s training prior, which need not be the one the model learned.")
        logit_fn = lambda x: features_and_logits(source_model, x, accelerator)[1]  # noqa: E731
    elif src.modality == "tabular":
        keep, dropped = recorded_columns(src, tgt)
        logit_fn = source_logistic_logits(src, keep, seed)
        description = "logistic regression fitted on the source training split (no --model given)"
        notes.append("No --model given: the label-shift estimates use a logistic regression fitted on the source "
                     "training split, C chosen by the source validation log-loss"
                     + (f", without the columns mostly missing at the target ({', '.join(dropped)}): imputed "
                        "values there would be read as a change in disease" if dropped else "") + ".")
    else:
        raise MedTransferError(f"{source} holds images: shift needs the source model for their features and for the "
                               "prior estimates; pass --model RUN (e.g. a run from `medtransfer pretrain --data "
                               f"{source} --out runs/src`)")

    rng = np.random.default_rng(seed)
    xs = torch.cat([src.train.x, src.val.x, src.test.x])
    xt = torch.cat([tgt.train.x, tgt.val.x, tgt.test.x])
    yt = torch.cat([tgt.train.y, tgt.val.y, tgt.test.y]).numpy()
    idx_s, idx_t = subsample(len(xs), max_samples, rng), subsample(len(xt), max_samples, rng)
    if max_samples and (len(xs) > max_samples or len(xt) > max_samples):
        notes.append(f"Covariate tests and prior estimates use a seeded random subsample of at most {max_samples} "
                     "examples per site (--max-samples).")
    if src.modality == "tabular":
        rep_s, rep_t = xs[idx_s].numpy(), xt[idx_t].numpy()
        representation = f"the {rep_s.shape[1]} encoded input features (encoded as at the source)"
    else:
        rep_s, rep_t = (features_and_logits(source_model, x[i], accelerator)[0] for x, i in ((xs, idx_s), (xt, idx_t)))
        representation = f"the source model's {rep_s.shape[1]}-d backbone features"

    label_ok = meta.get("task") != SELF_SUPERVISED_TASK and src.task != "multilabel"
    model_classes = meta.get("classes", src.classes)
    if label_ok and (model_classes != src.classes or tgt.classes != src.classes):
        notes.append(f"Label shift not estimated: the model predicts {model_classes}, {source} has {src.classes}, "
                     f"{target} has {tgt.classes}.")
        label_ok = False
    elif not label_ok:
        notes.append("Label shift not estimated: it needs a single-label classifier trained on the source.")
    label_args = {}
    if label_ok:
        k = src.num_classes
        label_args = dict(logits_source_val=logit_fn(src.val.x), y_source_val=src.val.y.numpy(),
                          logits_source=logit_fn(xs[idx_s]), logits_target=logit_fn(xt[idx_t]),
                          source_prior=np.bincount(src.train.y.numpy(), minlength=k) / len(src.train),
                          true_target_prior=np.bincount(yt[idx_t], minlength=k) / len(idx_t))
    diag = diagnose(source, target, src.modality, src.classes, rep_s, rep_t, representation,
                    feature_names=src.info.get("features") if src.modality == "tabular" else None,
                    model=description, seed=seed, n_perm=n_perm, n_boot=n_boot, notes=notes, **label_args)
    diag.missing = missing
    if save:
        stage = staging_dir(out)
        write_shift_report(diag, stage)
        commit_dir(stage, out)
        diag.out = out
    return diag


__all__ = ["pretrain", "pretrain_self_supervised", "transfer", "evaluate", "predict", "shift", "RunResult",
           "read_meta"]
