"""A transfer's source, resolved: a source *dataset* (loaded once, pretrained once per settings and
cached), several source datasets (`multi:A,B,...`, one head each, pretrained jointly and cached the
same way: `multi_source.py`), or weights from anywhere (`models.sources`: a run folder, a weights
file, imagenet:, timm:)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

from .. import __version__
from ..data import TaskDataset, dataset_fingerprint, is_dataset_spec
from ..data.tabular import TabularEncoder
from ..errors import MedTransferError
from ..models.backbones import describe, spec_for
from ..models.checkpoint import load_checkpoint, read_meta
from ..models.sources import Source, check_compatible, load_source_model, run_folder
from ..runs import check_writable
from ..strategies import Strategy
from ..training.distributed import agree, is_main, rank, scratch_dir
from ..training.loop import pretraining_settings
from .multi_source import MultiSource, cache_settings, check_multi_strategy, is_multi_source, load_multi_source, \
    write_multi_source
from .request import DataOptions, Output, TrainOptions, TransferRequest
from .run import run_transfer  # a source dataset is pretrained by the same pipeline
from .run_folder import versions


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
    if is_multi_source(request.source):
        return multi_source(request, strategy)
    if source_data is None:
        return load_source_model(request.source, target.modality, target.in_channels, request.backbone,
                                 request.image_size, len(target.info.get("features") or []))
    if not strategy.needs_source_model:
        return None
    # what its pretraining would build must fit the target: refused now, not after the pretraining
    check_compatible(SimpleNamespace(spec=spec_for(source_data, request.image_size)), target.modality,
                     target.in_channels, target.info.get("features"), adapt=True, rate=target.info.get("rate"),
                     tokenizer=target.info.get("tokenizer"))
    folder = pretrained_source(request, source_data)
    model, meta = load_checkpoint(folder)
    return Source(model, f"pretrained on {request.source} ({folder})", meta["classes"], meta.get("encoder"))


def multi_source(request: TransferRequest, strategy: Strategy) -> Source | None:
    """The model pretrained on every part of a multi: source (once, cached), or None for a strategy
    that needs no source model; a strategy that needs one labelled source dataset, or the source's own
    classifier, is refused before anything is loaded."""
    check_multi_strategy(strategy, request.source)
    if not strategy.needs_source_model:
        return None
    folder = pretrained_multi_source(request, load_multi_source(request.source, request.loading))
    model, meta = load_checkpoint(folder)
    return Source(model, f"pretrained on {request.source} ({folder})", meta["classes"])


def multi_source_input(request: TransferRequest, load: Callable | None = None) -> tuple:
    """(the input spec, the classes) of the model a multi: source pretrains to, without training it:
    what preflight checks a target against. `load(part, options)` loads a part (default: no cache)."""
    multi = load_multi_source(request.source, request.loading, load)
    multi.architecture(request.backbone)  # an unknown --backbone is refused here too
    return multi.input_spec(request.image_size), multi.classes


def source_cache_key(request: TransferRequest, source_data: TaskDataset) -> str:
    """What the pretrained source model depends on, resolved: the dataset's *content* (its fingerprint:
    a file's bytes, a folder's file list with sizes and mtimes, ..., never only its name), the
    architecture, the input spec (image size, tabular features), every training setting, the label and
    group columns, the seed, the device kind and the package version. Defaults are resolved first, so
    `--backbone resnet18` and no --backbone (the 2D default) are one entry, not two pretrainings."""
    modality, features = source_data.modality, source_data.info.get("features")
    architecture = describe(request.backbone, modality, source_data.in_channels, len(features or []))
    spec = spec_for(source_data, request.image_size)
    train = pretraining_settings(source_training(request).config(modality, 0, request.accelerator),
                                 request.accelerator)
    loading = source_loading(request)
    key = {"data": request.source, "content": dataset_fingerprint(source_data), "version": __version__,
           "architecture": architecture, "input": spec.to_dict(), "train": train, "seed": 0,
           "target": loading.target, "group": loading.group, "task": source_data.task,
           "classes": source_data.classes}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def source_training(request: TransferRequest) -> TrainOptions:
    """How a source dataset is pretrained: its modality's defaults, --source-epochs, and the run's devices
    (a data-parallel transfer pretrains its source data-parallel too; the devices are part of the key)."""
    return TrainOptions(epochs=request.source_epochs, devices=request.training.devices,
                        num_nodes=request.training.num_nodes)


def source_loading(request: TransferRequest) -> DataOptions:
    """The loading options as the source dataset uses them: a label or group column that only the target
    reads (a csv: target beside a heart: source) is not the source's, and does not split its cache."""
    return request.loading.used_by(request.source)


def multi_source_cache_key(request: TransferRequest, multi: MultiSource) -> str:
    """`source_cache_key` for a multi: source: every part's content (fingerprint), task, classes and
    label options, the architecture, the input spec, the training settings, the device kind, the
    method and the package version."""
    key = dict(cache_settings(request, multi), version=__version__)
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def pretrained_source(request: TransferRequest, source_data: TaskDataset) -> Path:
    """Pretrain on the source dataset once per (content, architecture, settings); later calls reuse it
    (see `source_cache_key`)."""
    def pretrain(folder: Path) -> None:
        single = TransferRequest(request.source, "scratch", backbone=request.backbone,
                                 image_size=request.image_size, loading=source_loading(request),
                                 training=source_training(request),
                                 output=Output(folder, overwrite=True), accelerator=request.accelerator,
                                 progress=request.progress)
        run_transfer(single, source_data, out=folder)
    return cached_pretraining(source_cache_key(request, source_data), pretrain)


def pretrained_multi_source(request: TransferRequest, multi: MultiSource) -> Path:
    """Pretrain on every part of a multi: source once per (contents, architecture, settings); later calls
    reuse it (see `multi_source_cache_key`)."""
    return cached_pretraining(multi_source_cache_key(request, multi),
                              lambda folder: write_multi_source(request, multi, folder, versions()))


def cached_pretraining(key: str, pretrain: Callable[[Path], None]) -> Path:
    """The cache folder of `key`, written by `pretrain(folder)` when it holds no model yet. The folder is
    checked writable before the pretraining starts."""
    folder = cache_dir() / "sources" / key
    if not is_main():  # a data-parallel rank > 0: trains beside rank 0 when it pretrains, writes nothing lasting
        return follow_pretraining(folder, key, pretrain)
    if (folder / "model.json").is_file():
        agree(False)  # (data parallel) the other ranks: nothing to train
        return folder
    check_writable(folder, overwrite=True)
    from filelock import FileLock  # a dependency of torch; an OS lock, released when a killed process ends

    # Two processes (grids, parallel cells) asking for the same source: one pretrains, the other waits
    # and reuses it, instead of both staging into the same folder.
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        todo = agree(not (folder / "model.json").is_file())  # decided under the lock, told to the other ranks
        if todo:
            pretrain(folder)
    return folder


def follow_pretraining(folder: Path, key: str, pretrain: Callable[[Path], None]) -> Path:
    """`cached_pretraining` on a data-parallel rank other than 0: rank 0 says whether it pretrains; if so,
    this rank trains with it (every rank must run the same steps) into its scratch folder, removed when
    the launch ends, and reads the result from there (the same weights: the loop ends every rank on rank
    0's); if not, it reads rank 0's cache folder, which must be visible here."""
    if agree(None):
        scratch = scratch_dir() / "sources" / key
        pretrain(scratch)
        return scratch
    if not (folder / "model.json").is_file():
        raise MedTransferError(f"the cached source model {folder} is not visible to data-parallel rank {rank()}; "
                               "on several nodes set MEDTRANSFER_CACHE to a folder every node shares")
    return folder
