"""Self-supervised pretraining: load one or more image (or signal) datasets (labels ignored), pool their
inputs, build the encoder and the method, and run the one training loop with the method's batch loss,
momentum hook and k-NN monitor."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from ..data import is_dataset_spec, load_dataset
from ..data.base import Split, TaskDataset
from ..defaults import TRAINING
from ..errors import MedTransferError
from ..models.backbones import Classifier, create_model, default_spec, describe
from ..progress import Progress
from ..training.augment import SignalViewConfig, ViewConfig
from ..training.loop import FitResult, TrainConfig, fit
from .base import METHODS, ContrastiveMethod
from .monitor import KNNMonitor

SSL_DEFAULTS = TRAINING["ssl"]
MONITOR_BANK, MONITOR_VAL = 2000, 1000  # labelled images the k-NN monitor embeds each epoch


@dataclass
class SSLResult:
    encoder: Classifier  # preprocess -> pretrained backbone -> (untrained, 1-output) head
    method: ContrastiveMethod
    fit: FitResult
    config: TrainConfig
    n_images: int
    monitor: dict | None  # {"name", "data", "n_bank", "n_val"} when a labelled validation set was found


def split_specs(data) -> list[str]:
    """`--data` given several times or as a comma list -> dataset specs."""
    items = [data] if isinstance(data, str) else list(data or [])
    specs = []
    for item in items:
        parts = [p.strip() for p in str(item).split(",")]
        specs += parts if len(parts) > 1 and all(is_dataset_spec(p) for p in parts) else [str(item)]
    if not specs:
        raise MedTransferError("no dataset given: pass --data (e.g. medmnist:pneumoniamnist)")
    return specs


def unlabelled_images(dataset: TaskDataset) -> torch.Tensor:
    """Training images only (a target's val/test images must not leak into its source); an unlabelled
    folder has no evaluation, so all of its images are used."""
    if dataset.info.get("unlabelled"):
        return torch.cat([dataset.train.x, dataset.val.x, dataset.test.x])
    return dataset.train.x


def conform(x: torch.Tensor, channels: int, size: tuple[int, int]) -> torch.Tensor:
    """Images -> `channels` (RGB to grayscale by ITU-R 601 luma, as folder: and PIL do) and `size`."""
    if x.shape[1] != channels:
        if not (x.shape[1] == 3 and channels == 1):
            raise MedTransferError(f"cannot pool {x.shape[1]}-channel images with {channels}-channel ones")
        x = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    if tuple(x.shape[2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    return x.clamp(0, 1)


def combine_images(parts: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate image tensors at one common size (the largest); grayscale when channels differ."""
    channels = parts[0].shape[1] if len({p.shape[1] for p in parts}) == 1 else 1
    size = (max(p.shape[2] for p in parts), max(p.shape[3] for p in parts))
    return torch.cat([conform(p, channels, size) for p in parts])


def check_modalities(specs: list[str], datasets: list[TaskDataset], method: str) -> str:
    """The one modality pooled: 2D images, or signals."""
    modalities = {d.modality for d in datasets}
    for spec, dataset in zip(specs, datasets):
        if dataset.modality not in ("image2d", "signal"):
            kind = {"tabular": "a table", "text": "texts"}.get(dataset.modality, "3D volumes")
            raise MedTransferError(f"--method {method} takes 2D images or signals, but {spec} is {kind}; "
                                   "use --method supervised for it")
    if len(modalities) > 1:
        raise MedTransferError(f"--method {method} pools one kind of input, but {', '.join(specs)} mixes images "
                               "and signals; pretrain on each kind separately")
    return modalities.pop()


def combine_signals(specs: list[str], parts: list[torch.Tensor]) -> torch.Tensor:
    """Signals of several datasets pooled: same channels and length, or refused (nothing is resampled
    silently: a ucr: dataset takes @LENGTH)."""
    shapes = {tuple(p.shape[1:]) for p in parts}
    if len(shapes) > 1:
        listed = ", ".join(f"{s} {tuple(p.shape[1:])}" for s, p in zip(specs, parts))
        raise MedTransferError(f"signals to pool must have one (channels, length); got {listed}: resample them "
                               "to one length (e.g. ucr:ECG200@140)")
    return torch.cat(parts)


def make_monitor(dataset: TaskDataset, seed: int) -> KNNMonitor | None:
    """k-NN AUC on the first dataset's labelled val split (bank: its labelled train images)."""
    if dataset.info.get("unlabelled") or dataset.task == "multilabel" or dataset.num_classes < 2 \
            or len(dataset.val) == 0 or len(dataset.train) == 0:
        return None
    g = torch.Generator().manual_seed(seed)
    bank = dataset.train.subset(torch.randperm(len(dataset.train), generator=g)[:MONITOR_BANK])
    val = dataset.val.subset(torch.randperm(len(dataset.val), generator=g)[:MONITOR_VAL])
    return KNNMonitor(bank, val, dataset.num_classes, dataset.task)


def check_options(name: str, temperature: float | None, queue_size: int | None, momentum: float | None) -> None:
    """Bad method options fail before any data is read."""
    if name not in METHODS:
        raise MedTransferError(f"unknown pretraining method {name!r}; choose supervised, {', '.join(METHODS)}")
    try:
        import lightly  # noqa: F401
    except ImportError:
        raise MedTransferError(f"--method {name} needs the lightly package: pip install 'medtransfer[ssl]'") from None
    if temperature is not None and not temperature > 0:
        raise MedTransferError(f"--temperature {temperature} must be positive (e.g. 0.2)")
    if name != "moco" and (queue_size is not None or momentum is not None):
        raise MedTransferError("--queue-size and --momentum apply to --method moco only")
    if queue_size is not None and queue_size < 1:
        raise MedTransferError(f"--queue-size {queue_size} must be a positive number of keys (e.g. 4096)")
    if momentum is not None and not 0 <= momentum < 1:
        raise MedTransferError(f"--momentum {momentum} must be in [0, 1) (e.g. 0.99)")


def build_method(name: str, encoder: Classifier, views: ViewConfig, temperature: float | None,
                 queue_size: int | None, momentum: float | None) -> ContrastiveMethod:
    check_options(name, temperature, queue_size, momentum)
    if name == "moco":
        return METHODS[name](encoder, views, temperature=temperature, queue_size=queue_size, momentum=momentum)
    return METHODS[name](encoder, views, temperature=temperature)


def pretrain_ssl(data, method: str = "simclr", *, backbone: str | None = None, seed: int = 0,
                 config: TrainConfig | None = None, image_size: int | None = None, data_root=None,
                 temperature: float | None = None, queue_size: int | None = None, momentum: float | None = None,
                 views: ViewConfig | dict | list[str] | None = None, monitor: bool = True,
                 limit: int | None = None, progress: Progress | None = None) -> SSLResult:
    """Pretrain a 2D-image or signal encoder on the inputs of `data` (labels ignored). `limit` keeps that many
    inputs (seeded), for smoke tests and benchmarks."""
    specs = split_specs(data)
    check_options(method, temperature, queue_size, momentum)  # before any data is read
    datasets = [load_dataset(spec, data_root=data_root) for spec in specs]
    modality = check_modalities(specs, datasets, method)
    view_config = (SignalViewConfig if modality == "signal" else ViewConfig).parse(views)
    inputs = [unlabelled_images(d) for d in datasets]
    images = combine_signals(specs, inputs) if modality == "signal" else combine_images(inputs)
    if limit:
        images = images[torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:limit]]
    if len(images) < 2:
        raise MedTransferError(f"{', '.join(specs)} has {len(images)} training image(s); "
                               "self-supervised pretraining needs at least 2")
    config = config or TrainConfig(seed=seed, **SSL_DEFAULTS)
    channels = images.shape[1]
    torch.manual_seed(seed)
    if modality == "signal":  # standardised with the pooled training signals' statistics, kept in the spec
        if image_size is not None:
            raise MedTransferError("--image-size applies to images; signals keep their length (resample a "
                                   "ucr: dataset with @LENGTH)")
        spec = default_spec("signal", channels, train_x=images, rate=datasets[0].info.get("rate"))
    else:
        spec = default_spec("image2d", channels, image_size=image_size)
    encoder = create_model(describe(backbone, modality, channels), spec, num_outputs=1)
    if modality == "image2d" and view_config.size is None:  # views at the backbone's input size (no second resize)
        view_config = replace(view_config, size=spec.size)
    if method == "moco" and queue_size is None:  # at most half the images: few stale keys of the query itself
        batch = min(config.batch_size, len(images))
        queue_size = min(4096, max(batch, len(images) // 2 // batch * batch))
    ssl = build_method(method, encoder, view_config, temperature, queue_size, momentum)

    first = datasets[0]
    knn = make_monitor(first, seed) if monitor else None
    if knn is not None and modality == "image2d":  # the monitor's images in the pooled format
        knn.bank, knn.val = (Split(conform(s.x, channels, tuple(images.shape[2:])), s.y) for s in (knn.bank, knn.val))
    train = Split(images, torch.zeros(len(images), dtype=torch.long))
    result = fit(ssl, ssl.parameter_groups(), train, Split(images[:0], train.y[:0]), first.task, modality, config,
                 batch_loss=ssl.batch_loss, score_fn=knn if knn is not None else (lambda model: None),
                 after_step=ssl.after_step, keep_initial=False, progress=progress,
                 score_name=f"{knn.name} ({specs[0]} val)" if knn is not None else "no monitor")
    monitor_info = {"name": "knn_auc", "data": specs[0], "split": "val", "n_bank": len(knn.bank),
                    "n_val": len(knn.val), "k": knn.k} if knn is not None else None
    return SSLResult(ssl.encoder, ssl, result, config, len(images), monitor_info)
