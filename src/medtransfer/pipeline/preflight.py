"""Can this transfer run at all? Checked in milliseconds, before any training or pretraining.

Why: an impossible request (a budget larger than the training split, a grayscale source for an RGB
target, a strategy that fits on source rows given a weights file) used to be found only when the run
reached it, after pretraining a source for minutes, and in a grid it stopped every other cell. This
loads the data (cheap for tables and array datasets; each distinct dataset once per `cache`) and reads
the source's input spec without training it, then applies the checks the run itself would apply:
the strategy's tags, modality, channels and features, classes, and the label budget (`apply_budget`'s
own errors).
"""

from __future__ import annotations

from types import SimpleNamespace

from ..data import TaskDataset, apply_budget, require_classes
from ..errors import MedTransferError
from ..models.backbones import describe, spec_for
from ..models.sources import check_compatible, load_source_model
from ..strategies import STRATEGIES
from .multi_source import check_multi_strategy, is_multi_source
from .request import TransferRequest
from .source import load_source_data, multi_source_input, source_encoder
from .run import check_target
from .transfer import check_budget, check_dp, check_split_seed
from .unlabelled import load_extra_unlabelled


def preflight(request: TransferRequest, cache: dict | None = None) -> str | None:
    """Why `request` cannot run (one line), or None. Pass one `cache` dict for many requests (a grid),
    so each dataset and source model is loaded once."""
    cache = {} if cache is None else cache
    try:
        check(request, cache)
    except MedTransferError as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 (a loader's raw error is still a reason, not a crash of the grid)
        return f"{exc.__class__.__name__}: {exc}".splitlines()[0]
    return None


def check(request: TransferRequest, cache: dict) -> None:
    """Raise MedTransferError with the reason when the request cannot run."""
    strategy = STRATEGIES.lookup(request.strategy)
    check_budget(strategy, request.budget)
    check_dp(strategy, request)
    if strategy.needs_source() and not request.source:
        raise MedTransferError(f"strategy {strategy.name!r} needs --source (a run folder, weights file, imagenet:…, "
                               "timm:… or a source dataset)")
    if is_multi_source(request.source):
        check_multi_strategy(strategy, request.source)
    source_data = cached(cache, ("source", request.source, request.loading), lambda: load_source_data(request))
    if source_data is not None:
        require_classes(source_data, request.source)
    if strategy.needs_source_data and source_data is None:
        raise MedTransferError(f"strategy {strategy.name!r} fits on the labelled source dataset, so --source must be "
                               f"a dataset such as heart:cleveland, not {request.source!r}")
    target = load_target(request, source_data, cache)
    require_classes(target, request.data)
    check_target(request, target)
    if strategy.modalities and target.modality not in strategy.modalities:
        raise MedTransferError(f"{strategy.name} is a {' or '.join(strategy.modalities)} baseline, but {request.data} "
                               f"is {target.modality}; for {'images' if target.modality.startswith('image') else 'it'} "
                               "use scratch or a transfer strategy")
    if request.unlabelled is not None:  # read as the target's images once per grid: a bad folder named before training
        cached(cache, ("unlabelled", request.unlabelled, request.data),
               lambda: load_extra_unlabelled(request.unlabelled, target, strategy).record)  # the images themselves not kept
    if strategy.needs_unlabelled_target and len(target.train) == 0:
        raise MedTransferError(f"{strategy.name} needs unlabelled target examples; the training split of "
                               f"{request.data} is empty")
    source_classes = check_source(request, strategy, target, source_data, cache)
    if (strategy.needs_source_data or not strategy.needs_labels) and source_classes != target.classes:
        raise MedTransferError(f"{strategy.name} needs source and target to share their classes (it applies or "
                               f"pools the source's classifier); the source has {source_classes or 'unknown classes'}, "
                               f"the target {target.classes}")
    apply_budget(target, request.budget, request.seed)


def data_fingerprint(request: TransferRequest, cache: dict) -> str | None:
    """The content fingerprint of the target as `request` loads it (encoded like a tabular source), or None
    when it cannot be loaded now or its loader declares none: then nothing can be compared."""
    try:
        source_data = cached(cache, ("source", request.source, request.loading), lambda: load_source_data(request))
        return load_target(request, source_data, cache).info.get("fingerprint")
    except Exception:  # noqa: BLE001 (data that cannot be loaded now is preflight's to name, for the cells to run)
        return None


def load_target(request: TransferRequest, source_data: TaskDataset | None, cache: dict) -> TaskDataset:
    """The target as the run loads it (encoded like a tabular source), once per cache."""
    encoder = source_encoder(request.source, source_data)
    key = ("target", request.data, request.loading, request.split_seed, request.source if encoder else None)
    target = cached(cache, key, lambda: request.loading.load(request.data, encoder=encoder,
                                                             split_seed=request.split_seed))
    check_split_seed(request, target)
    return target


def check_source(request: TransferRequest, strategy, target: TaskDataset, source_data: TaskDataset | None,
                 cache: dict) -> list[str] | None:
    """Check that the source model (when the strategy starts from one) takes the target's inputs, and
    the backbone is known; return the source's classes (None when unknown)."""
    features = target.info.get("features")
    if not (strategy.needs_source_model and request.source):
        if strategy.uses_backbone:
            describe(request.backbone, target.modality, target.in_channels, len(features or []))
        return source_data.classes if source_data is not None else None
    if is_multi_source(request.source):  # its parts pretrained here first, jointly: the spec is known untrained
        spec, classes = multi_source_input(request, lambda part, options: cached(
            cache, ("source", part, options), lambda: options.load(part)))
    elif source_data is not None:  # pretrained here first: its input spec is known without training it
        describe(request.backbone, source_data.modality, source_data.in_channels,
                 len(source_data.info.get("features") or []))
        spec = spec_for(source_data, request.image_size)
        classes = source_data.classes
    elif request.source.startswith(("timm:", "hf:")):
        return None  # its weights come from the network: checked when the run fetches them
    else:
        key = ("model", request.source, target.modality, target.in_channels, request.backbone, request.image_size)
        source = cached(cache, key, lambda: load_source_model(request.source, target.modality, target.in_channels,
                                                              request.backbone, request.image_size,
                                                              len(features or [])))
        spec, classes = source.model.spec, source.classes
    check_compatible(SimpleNamespace(spec=spec), target.modality, target.in_channels, features, adapt=True,
                     rate=target.info.get("rate"), tokenizer=target.info.get("tokenizer"))  # .spec
    return classes


def cached(cache: dict, key, make):
    """make() once per key; a failure is cached too, so a bad dataset is not reloaded for every cell."""
    if key not in cache:
        try:
            cache[key] = (make(), None)
        except Exception as exc:  # noqa: BLE001
            cache[key] = (None, exc)
    value, error = cache[key]
    if error is not None:
        raise error
    return value
