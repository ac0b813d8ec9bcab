"""A multi-dataset supervised source, `multi:A,B,...`: one backbone and one linear head per dataset,
trained jointly on every labelled image of the datasets given.

Why: an in-domain medical source for image targets is stronger when it has seen several modalities
(CT organs, chest X-ray, ultrasound) than one, and no single labelled medical dataset covers them.
The heads are one linear layer over the concatenated classes ("<dataset>/<class>"); each example's
loss only reads its own dataset's slice of the logits (a softmax over that slice, or per-label
sigmoids for a multilabel dataset), which is exactly one head per dataset. Every dataset weighs the
same at every step: batches are drawn with each dataset equally likely (the loop's balanced sampler,
over dataset ids), and the step's loss is the mean over the datasets in the batch of each one's mean
loss, so a 34k-image dataset does not drown a 500-image one. The validation score that picks the
epoch is the mean over datasets of each one's validation AUC on its own head.

Inputs are brought to one layout: 3 channels if any dataset is RGB (grey repeated), else 1, at the
backbone's input size; each dataset keeps its own stored tensors (their sizes may differ) and each
batch is resized on the fly exactly as `Preprocess` resizes. The result is an ordinary checkpoint
whose task is `MULTI_SOURCE_TASK`: a transfer gives the target a new head (the classes differ);
it is not a classifier of any one dataset, so evaluate / predict have nothing to apply it to.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from ..data import LOADERS, Split, TaskDataset, dataset_fingerprint, is_dataset_spec, require_classes
from ..errors import MedTransferError
from ..evaluation.selection import selection_score
from ..models.backbones import Classifier, InputSpec, create_model, default_spec, describe
from ..models.checkpoint import save_checkpoint
from ..models.inference import batched, device_of, eval_mode, probabilities
from ..progress import SILENT
from ..runs import commit_dir, dumps, staging_dir, write_json
from ..training.augment import augment_batch
from ..training.loop import FitResult, TrainConfig, fit, pretraining_settings
from .request import DataOptions, TrainOptions, TransferRequest

PREFIX = "multi:"
MULTI_SOURCE_TASK = "multi-source"  # model.json "task": one head per source dataset, no single classifier
METHOD = "multi-source/1"  # in the cache key: change it when the training rule (sampling, loss) changes
EXAMPLE = "multi:medmnist:organamnist,medmnist:pneumoniamnist"


def is_multi_source(spec) -> bool:
    return isinstance(spec, str) and spec.startswith(PREFIX)


def parse_multi_spec(spec: str) -> list[str]:
    """The dataset specs of `multi:A,B,...`: at least two, each a dataset spec, none twice."""
    parts = [p.strip() for p in spec[len(PREFIX):].split(",")]
    if len(parts) < 2 or not all(parts):
        raise MedTransferError(f"bad multi: source {spec!r}: list at least two labelled image datasets, "
                               f"comma-separated and none empty, e.g. {EXAMPLE} (one dataset is given as --source "
                               "directly)")
    for part in parts:
        if not is_dataset_spec(part):
            raise MedTransferError(f"bad multi: source {spec!r}: {part!r} is not a dataset (scheme:argument, the "
                                   f"scheme one of {', '.join(f'{s}:' for s in LOADERS)}); e.g. {EXAMPLE}")
    twice = sorted({p for p in parts if parts.count(p) > 1})
    if twice:
        raise MedTransferError(f"bad multi: source {spec!r}: {', '.join(twice)} is listed twice; list each dataset "
                               "once")
    return parts


def check_multi_strategy(strategy, spec: str) -> None:
    """The spec's syntax, then refuse, before any loading or pretraining, a strategy that needs what a
    multi: source does not have: one labelled source dataset (dann, coral, mmd, prior-shift, pooled,
    source-only), or a source classifier of the target's classes (source-model, and every strategy
    that works without labels). `strategy`: a Strategy class or instance."""
    parse_multi_spec(spec)
    if strategy.needs_source_data:
        raise MedTransferError(f"strategy {strategy.name!r} fits on the labelled source dataset itself, and {spec} is "
                               "several datasets with different classes; give one dataset as --source, or use a "
                               "strategy that starts from the source model (linear-probe, lp-ft, full, l2-sp, ...)")
    if not strategy.needs_labels:
        raise MedTransferError(f"strategy {strategy.name!r} applies the source classifier to the target, and {spec} "
                               "has one head per source dataset, none of the target's classes; use a strategy that "
                               "trains a new head (linear-probe, lp-ft, full, l2-sp, ...)")


@dataclass
class Head:
    """One dataset's slice of the concatenated head."""
    data: str  # the part's dataset spec
    name: str  # the prefix of its classes
    task: str
    classes: list[str]
    start: int
    stop: int

    def to_dict(self) -> dict:
        return {"data": self.data, "name": self.name, "task": self.task, "classes": self.classes,
                "outputs": [self.start, self.stop]}


@dataclass
class MultiSource:
    """The loaded parts of a multi: source and the one input layout they are trained in."""
    spec: str
    parts: list[str]
    datasets: list[TaskDataset]
    loading: list[DataOptions]  # the options each part was loaded with
    channels: int  # 3 if any part is RGB (grey repeated), else 1
    heads: list[Head]

    @property
    def classes(self) -> list[str]:
        return [f"{h.name}/{c}" for h in self.heads for c in h.classes]

    def input_spec(self, image_size: int | None) -> InputSpec:
        return default_spec("image2d", self.channels, None, image_size)

    def architecture(self, backbone: str | None) -> dict:
        return describe(backbone, "image2d", self.channels)


def load_multi_source(spec: str, loading: DataOptions, load=None) -> MultiSource:
    """Parse and load every part (`load(part, options)`, default `options.load(part)`; preflight passes
    its cached loader); each must be a labelled 2D image dataset with at least two classes."""
    parts = parse_multi_spec(spec)
    load = load or (lambda part, options: options.load(part))
    datasets, options = [], []
    for part in parts:
        used = loading.used_by(part)
        data = load(part, used)
        if data.modality != "image2d":
            raise MedTransferError(f"bad multi: source {spec!r}: {part} holds {data.modality} data; every part of a "
                                   "multi: source is a labelled 2D image dataset (medmnist:, folder:, manifest:)")
        require_classes(data, part)
        if data.in_channels not in (1, 3):
            raise MedTransferError(f"bad multi: source {spec!r}: {part} has {data.in_channels}-channel images; the "
                                   "parts must be grey (1 channel) or RGB (3)")
        datasets.append(data)
        options.append(used)
    names = [d.name for d in datasets]
    names = names if len(set(names)) == len(names) else parts  # a folder's name alone may repeat
    heads, start = [], 0
    for part, name, data in zip(parts, names, datasets):
        heads.append(Head(part, name, data.task, list(data.classes), start, start + data.num_outputs))
        start += data.num_outputs
    channels = 3 if any(d.in_channels == 3 for d in datasets) else 1
    return MultiSource(spec, parts, datasets, options, channels, heads)


def train_config(request: TransferRequest) -> TrainConfig:
    """The 2D training defaults with --source-epochs, seed 0 (as a single-dataset source), and the
    balanced sampler over dataset ids."""
    config = TrainOptions(epochs=request.source_epochs).config("image2d", 0, request.accelerator,
                                                               progress=request.progress is not SILENT)
    return replace(config, sampler="balanced", class_weight="none")


def cache_settings(request: TransferRequest, multi: MultiSource) -> dict:
    """Everything the pretrained model depends on, resolved (the cache key's content): each part's
    content (its fingerprint), task, classes and label options, the architecture, the input spec,
    the training settings, the device kind and the method."""
    train = pretraining_settings(train_config(request), request.accelerator)
    parts = [{"data": h.data, "content": dataset_fingerprint(d), "task": d.task, "classes": d.classes,
              "target": o.target, "group": o.group} for h, d, o in zip(multi.heads, multi.datasets, multi.loading)]
    return {"data": multi.spec, "method": METHOD, "parts": parts, "architecture": multi.architecture(request.backbone),
            "input": multi.input_spec(request.image_size).to_dict(), "train": train, "seed": 0}


def to_layout(x: torch.Tensor, channels: int, size: int) -> torch.Tensor:
    """Images in the common layout: grey repeated to RGB, resized as `Preprocess` resizes."""
    if x.shape[1] == 1 and channels == 3:
        x = x.expand(-1, 3, *x.shape[2:])
    if tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x


class JointLoss:
    """`batch_loss` for the loop. The loop's batch holds global example numbers (xb) and their
    datasets (yb); each dataset's images are gathered for the whole batch and kept where the example
    is that dataset's (no per-step host sync), then one augmented forward pass and the per-dataset
    losses, each dataset weighing the same."""

    def __init__(self, multi: MultiSource, spec: InputSpec, augment: bool):
        self.multi, self.size, self.augment = multi, spec.size, augment
        counts = [len(d.train) for d in multi.datasets]
        self.starts = torch.tensor([0, *counts[:-1]]).cumsum(0).tolist()
        self.tables: dict[str, tuple] = {}

    def on(self, device: torch.device) -> tuple:
        """Per dataset: images, dense targets over every output; then the output mask and the multilabel
        flag per dataset; moved to `device` once."""
        if str(device) not in self.tables:
            k = len(self.multi.classes)
            data = []
            for head, d in zip(self.multi.heads, self.multi.datasets):
                target = torch.zeros(len(d.train), k)
                if head.task == "multilabel":
                    target[:, head.start:head.stop] = d.train.y.float()
                else:
                    target[torch.arange(len(d.train)), head.start + d.train.y] = 1.0
                data.append((d.train.x.to(device), target.to(device)))
            mask = torch.zeros(len(self.multi.heads), k, dtype=torch.bool)
            for i, head in enumerate(self.multi.heads):
                mask[i, head.start:head.stop] = True
            multilabel = torch.tensor([h.task == "multilabel" for h in self.multi.heads])
            self.tables[str(device)] = (data, mask.to(device), multilabel.to(device))
        return self.tables[str(device)]

    def __call__(self, model, xb: torch.Tensor, which: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        data, masks, multilabel = self.on(xb.device)
        x = target = None
        for d, ((images, targets), start) in enumerate(zip(data, self.starts)):
            local = (xb - start).clamp(0, len(images) - 1)
            mine = which == d
            part = to_layout(images[local], self.multi.channels, self.size)
            x = part if x is None else torch.where(mine.view(-1, 1, 1, 1), part, x)
            target = targets[local] if target is None else torch.where(mine.view(-1, 1), targets[local], target)
        if self.augment:
            x = augment_batch(x, "image2d", generator)
        logits = model(x).float()
        mask = masks[which]
        log_prob = torch.log_softmax(logits.masked_fill(~mask, -math.inf), 1).masked_fill(~mask, 0.0)
        single = -(target * log_prob).sum(1)
        per_label = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        multi = (per_label * mask).sum(1) / mask.sum(1)
        loss = torch.where(multilabel[which], multi, single)
        counts = torch.bincount(which, minlength=len(data)).float()
        weight = 1.0 / (counts[which] * (counts > 0).sum())  # each dataset present weighs 1 / (datasets present)
        return (loss * weight).sum()


class HeadScores:
    """`score_fn` for the loop: the mean over datasets of each one's validation AUC on its own head
    (softmax over its slice, or sigmoids for multilabel). Datasets without validation examples are left out."""

    def __init__(self, multi: MultiSource, batch_size: int):
        self.multi, self.batch_size = multi, batch_size
        self.last: dict[str, float] = {}

    def per_dataset(self, model) -> dict[str, float]:
        device = device_of(model)
        scores = {}
        with eval_mode(model):
            for head, d in zip(self.multi.heads, self.multi.datasets):
                if len(d.val) == 0:
                    continue
                logits = batched(lambda xb: model(xb)[:, head.start:head.stop], d.val.x, self.batch_size, device)
                prob = probabilities(logits, head.task).numpy()
                scores[head.name] = selection_score(d.val.y.numpy(), prob, head.task)
        return scores

    def __call__(self, model) -> float | None:
        self.last = self.per_dataset(model)
        finite = [v for v in self.last.values() if math.isfinite(v)]
        return sum(finite) / len(finite) if finite else None


def global_split(multi: MultiSource, name: str) -> Split:
    """The loop's view of the data: x = each example's number across the datasets, y = its dataset."""
    sizes = [len(d.split(name)) for d in multi.datasets]
    which = torch.cat([torch.full((n,), i, dtype=torch.long) for i, n in enumerate(sizes)])
    return Split(torch.arange(sum(sizes)), which)


def train_multi_source(request: TransferRequest, multi: MultiSource) -> tuple[Classifier, FitResult, dict]:
    """One backbone and the concatenated head, trained jointly by the one loop; returns the model (on
    the CPU, best epoch by mean validation AUC), the fit and each dataset's validation AUC there."""
    config = train_config(request)
    spec = multi.input_spec(request.image_size)
    torch.manual_seed(config.seed)
    model = create_model(multi.architecture(request.backbone), spec, len(multi.classes))
    scores = HeadScores(multi, config.eval_batch_size)
    # keep_initial=False: a source is trained; its random initial weights are never the answer
    result = fit(model, [{"params": model.parameters()}], global_split(multi, "train"), global_split(multi, "val"),
                 "multiclass", "image2d", config, batch_loss=JointLoss(multi, spec, config.augment),
                 score_fn=scores, keep_initial=False, score_name="mean val AUC", progress=request.progress)
    val = scores.per_dataset(model)  # at the selected epoch (the loop's last score is the last epoch's)
    return model.cpu().eval(), result, val


def write_multi_source(request: TransferRequest, multi: MultiSource, out: Path, versions: dict,
                       started: float | None = None) -> None:
    """Train and write the run folder (staged, swapped in whole): the checkpoint (task
    MULTI_SOURCE_TASK, classes "<dataset>/<class>", model.json "heads" naming each slice),
    config.json, metrics.json (each dataset's validation AUC, the fit) and log.txt."""
    started = time.perf_counter() if started is None else started
    model, result, val = train_multi_source(request, multi)
    config = train_config(request)
    heads = [dict(h.to_dict(), n_train=len(d.train), n_val=len(d.val)) for h, d in zip(multi.heads, multi.datasets)]
    sampling = ("each step: a batch drawn with every dataset equally likely (balanced sampler over dataset ids); "
                "loss = mean over the datasets in the batch of each one's mean loss on its own head")
    resolved = {"data": multi.spec, "strategy": MULTI_SOURCE_TASK, "method": METHOD, "source": None,
                "datasets": multi.parts, "heads": heads, "seed": 0, "backbone": model.architecture.get("name"),
                "architecture": model.architecture, "input": model.spec.to_dict(), "train": asdict(config),
                "sampling": sampling, "classes": multi.classes, "task": MULTI_SOURCE_TASK,
                "data_root": str(request.loading.data_root) if request.loading.data_root else None,
                "versions": versions, "created": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    metrics = {"val": {name: {"auc": score} for name, score in val.items()},
               "fit": {"best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
                       "val_score": result.best_score, "seconds": round(result.seconds, 3),
                       "total_seconds": round(time.perf_counter() - started, 3)}}
    provenance = {"data": multi.spec, "strategy": MULTI_SOURCE_TASK, "method": METHOD, "datasets": multi.parts,
                  "n_train_labels": sum(len(d.train) for d in multi.datasets), "seed": 0, "val_auc": val,
                  "versions": versions}
    stage = staging_dir(out)
    save_checkpoint(stage, model, MULTI_SOURCE_TASK, multi.classes, None, provenance,
                    data_shape=[multi.channels, model.spec.size, model.spec.size],
                    extra={"heads": [h.to_dict() for h in multi.heads]})
    write_json(stage / "config.json", resolved)
    write_json(stage / "metrics.json", metrics)
    lines = [f"multi-source pretraining on {', '.join(multi.parts)}", *(dumps(h) for h in result.history),
             "val AUC per dataset: " + ", ".join(f"{k}={v:.4f}" for k, v in val.items())]
    (stage / "log.txt").write_text("\n".join(lines) + "\n")
    commit_dir(stage, out)
