"""A transfer's source, resolved: a source *dataset* (loaded once, pretrained once per settings and
cached), or weights from anywhere (`models.sources`: a run folder, a weights file, imagenet:, timm:)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .. import __version__
from ..data import TaskDataset, is_dataset_spec
from ..data.tabular import TabularEncoder
from ..models.backbones import describe
from ..models.checkpoint import load_checkpoint, read_meta
from ..models.sources import Source, load_source_model, run_folder
from ..strategies import Strategy
from .request import Output, TrainOptions, TransferRequest
from .run import run_transfer  # a source dataset is pretrained by the same pipeline


def cache_dir() -> Path:
    return Path(os.environ.get("MEDTRANSFER_CACHE", "~/.cache/medtransfer")).expanduser()


def load_source_data(request: TransferRequest) -> TaskDataset | None:
    """The source dataset when --source names one (its labelled rows and its tabular encoding)."""
    if request.source and is_dataset_spec(request.source):
        return request.loading.load(request.source)
    return None


def source_encoder(source: str | None, source_data: TaskDataset | None) -> TabularEncoder | None:
    """The tabular encoding the target must share with its source (None for images or no source)."""
    if source_data is not None:
        return source_data.encoder
    folder = run_folder(source) if source else None
    encoder = read_meta(folder).get("encoder") if folder else None
    return TabularEncoder.from_dict(encoder) if encoder else None


def resolve_source(request: TransferRequest, strategy: Strategy, target: TaskDataset,
                   source_data: TaskDataset | None) -> Source | None:
    """The source model, or None (no --source, or a source dataset for a strategy that needs no model)."""
    if not request.source:
        return None
    if source_data is None:
        return load_source_model(request.source, target.modality, target.in_channels, request.backbone,
                                 request.image_size)
    if not strategy.needs_source_model:
        return None
    folder = pretrained_source(request, source_data)
    model, meta = load_checkpoint(folder)
    return Source(model, f"pretrained on {request.source} ({folder})", meta["classes"], meta.get("encoder"))


def pretrained_source(request: TransferRequest, source_data: TaskDataset) -> Path:
    """Pretrain on the source dataset once per (dataset, architecture, settings); later calls reuse it.
    The resolved architecture is part of the key, so a changed model definition is never served stale."""
    architecture = describe(request.backbone, source_data.modality, source_data.in_channels,
                            len(source_data.info.get("features") or []))
    loading = request.loading
    key = json.dumps({"data": request.source, "backbone": request.backbone, "seed": 0, "version": __version__,
                      "architecture": architecture, "image_size": request.image_size,
                      "data_root": loading.data_root, "target": loading.target, "group": loading.group,
                      "accelerator": request.accelerator, "epochs": request.source_epochs},
                     sort_keys=True, default=str)
    folder = cache_dir() / "sources" / hashlib.sha256(key.encode()).hexdigest()[:16]
    if not (folder / "model.json").is_file():
        pretrain = TransferRequest(request.source, "scratch", backbone=request.backbone, image_size=request.image_size,
                                   loading=loading, training=TrainOptions(epochs=request.source_epochs),
                                   output=Output(folder, overwrite=True), accelerator=request.accelerator,
                                   progress=request.progress)
        run_transfer(pretrain, source_data, out=folder)
    return folder
