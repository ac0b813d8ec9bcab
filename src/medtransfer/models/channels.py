"""Grey <-> RGB for a pretrained model, as timm does it (`timm.models.adapt_input_conv`): only the
first convolution's weights change. Grey -> RGB repeats them over the three channels, scaled by 1/3,
so an RGB image whose channels are equal gives exactly the grey model's output; RGB -> grey sums them,
which equals feeding the grey image repeated to three channels.

Why: a grayscale in-domain source (OrganAMNIST) on an RGB target used to be refused ("channel
mismatch"), after its pretraining. Only 1 <-> 3 adapts; anything else stays a one-line refusal
(`channels_adaptable`, callable before any pretraining). The adapted backbone is rebuilt from its
architecture with the new `in_chans` (so the run's checkpoint rebuilds it and loads strictly) and
checked, on one random input, to compute what the original computed.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..errors import MedTransferError
from .backbones import Classifier, InputSpec, Preprocess, build_backbone
from .checkpoint import load_state_strict

ADAPTABLE = {(1, 3), (3, 1)}  # (source channels, target channels) the first convolution adapts between
CONVOLUTIONS = (nn.Conv2d, nn.Conv3d)


def channels_adaptable(source_channels: int, target_channels: int, modality: str) -> str | None:
    """None when a `source_channels` model can take `target_channels` inputs (same, or grey <-> RGB),
    else the one-line reason. Needs only the numbers, so a grid refuses a cell before pretraining."""
    if source_channels == target_channels:
        return None
    if modality == "tabular":
        return "tabular models have no image channels to adapt"
    if (source_channels, target_channels) in ADAPTABLE:
        return None
    return (f"channel mismatch: the source model takes {source_channels} channels, the target images have "
            f"{target_channels}; only grey (1) and RGB (3) adapt to each other (the first convolution's weights, "
            f"as timm's adapt_input_conv): use a source trained on {target_channels}-channel images")


def first_conv(backbone: nn.Module, channels: int) -> tuple[str, nn.Module] | None:
    """(name, module) of the convolution that takes the input: timm's `pretrained_cfg['first_conv']`
    when it names one, else the first Conv2d / Conv3d (in registration order) taking `channels`."""
    cfg = getattr(backbone, "pretrained_cfg", None) or {}
    named = cfg.get("first_conv") if isinstance(cfg, dict) else None
    for name in [named] if isinstance(named, str) else list(named or []):
        try:
            module = backbone.get_submodule(name)
        except AttributeError:
            continue
        if isinstance(module, CONVOLUTIONS) and module.in_channels == channels:
            return name, module
    return next(((name, module) for name, module in backbone.named_modules()
                 if isinstance(module, CONVOLUTIONS) and module.in_channels == channels), None)


def adaptation_problem(model: Classifier, channels: int) -> str | None:
    """Why `model` cannot be adapted to `channels` input channels (one line), or None."""
    spec = model.spec
    reason = channels_adaptable(spec.channels, channels, spec.modality)
    if reason or spec.channels == channels:
        return reason
    where = f"the source model ({model.architecture.get('kind')} {model.architecture.get('name')})"
    if "in_chans" not in model.architecture:
        return f"{where} records no input channels (in_chans), so it cannot be rebuilt for {channels} channels"
    found = first_conv(model.backbone, spec.channels)
    if found is None:
        return f"{where} has no convolution taking its {spec.channels} input channel(s) to adapt to {channels}"
    if found[1].groups != 1:
        return f"{where} starts with a grouped convolution ({found[0]}), which cannot be adapted to {channels} channels"
    return None


def adapt_weight(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """A first convolution's weight (O, I, ...) for `channels` inputs: timm's adapt_input_conv rule
    (sum for 1; repeat and scale by I/channels otherwise), for 2D and 3D kernels alike."""
    source = weight.shape[1]
    if channels == source:
        return weight
    adapted = weight.float()
    if channels == 1:
        adapted = adapted.sum(dim=1, keepdim=True)
    else:
        repeat = -(-channels // source)
        adapted = adapted.repeat(1, repeat, *([1] * (weight.ndim - 2)))[:, :channels] * (source / channels)
    return adapted.to(weight.dtype)


def adapt_channels(model: Classifier, channels: int) -> tuple[Classifier, str | None]:
    """A copy of `model` whose first convolution takes `channels` input channels, and the note for
    provenance; `(model, None)` unchanged when it already takes them. Raises MedTransferError with the
    one-line reason when adaptation is impossible.

    The copy's InputSpec follows: grey -> RGB repeats the mean/std, RGB -> grey takes the mean of the
    three (exact only when they are equal, as for medtransfer's own (0.5, 0.5, 0.5); the pipeline keeps
    RGB sources on grey targets as they are, the preprocess repeating the grey image, which is exact)."""
    source = model.spec.channels
    if channels == source:
        return model, None
    reason = adaptation_problem(model, channels)
    if reason:
        raise MedTransferError(reason)
    name, conv = first_conv(model.backbone, source)
    architecture = dict(model.architecture, in_chans=channels)
    backbone = rebuilt(model, architecture, f"{name}.weight", channels)
    check_same_function(model.backbone, backbone, source, channels, model.spec)
    spec = adapted_spec(model.spec, channels)
    preprocess = Preprocess(spec).to(conv.weight.device)
    adapted = copy.deepcopy(model, memo={id(model.backbone): backbone, id(model.preprocess): preprocess})
    adapted.spec, adapted.architecture = spec, architecture
    rule = "repeat, scaled by 1/3" if source == 1 else "sum over the 3 channels"
    return adapted, (f"first convolution {name} adapted from {source} to {channels} input channels "
                     f"(timm adapt_input_conv: {rule})")


def rebuilt(model: Classifier, architecture: dict, key: str, channels: int) -> nn.Module:
    """The backbone as a checkpoint rebuilds it for `architecture`, holding the model's weights with
    the first convolution's adapted; the global RNG is left as it was (building draws random weights)."""
    with torch.random.fork_rng(devices=[]):
        try:
            backbone, _ = build_backbone(architecture)
        except Exception as exc:  # noqa: BLE001 (a family that cannot take the channels is a reason)
            raise MedTransferError(f"the source architecture {architecture.get('name')!r} cannot be built with "
                                   f"{channels} input channels ({exc.__class__.__name__}: {exc})".splitlines()[0]) \
                from None
    state = dict(model.backbone.state_dict())
    state[key] = adapt_weight(state[key], channels)
    reference = next(model.backbone.parameters())
    backbone.to(device=reference.device)
    try:
        load_state_strict(backbone, state, f"the source adapted to {channels} channels")
    except MedTransferError as exc:
        raise MedTransferError(f"cannot adapt the source to {channels} channels: rebuilding "
                               f"{architecture.get('name')!r} with in_chans={channels} changes more than its first "
                               f"convolution ({exc})") from None
    trainable = {n: p.requires_grad for n, p in model.backbone.named_parameters()}
    for n, p in backbone.named_parameters():
        p.requires_grad_(trainable.get(n, True))
    return backbone.train(model.backbone.training)


def check_same_function(original: nn.Module, adapted: nn.Module, source: int, channels: int,
                        spec: InputSpec) -> None:
    """The adapted backbone on an input whose channels are equal must compute what the original does
    (the rebuild is the same network, the weights landed where they belong): a silent wrong start would
    be worse than a refusal. One random input of the model's size, eval mode, a private generator."""
    size = spec.size or 32
    shape = (1, 1) + ((size, size) if spec.modality == "image2d" else (16, 16, 16))
    device = next(original.parameters()).device
    z = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device)
    modes = original.training, adapted.training
    original.eval(), adapted.eval()
    try:
        with torch.no_grad():
            expected = original(z.expand(-1, source, *shape[2:]))
            got = adapted(z.expand(-1, channels, *shape[2:]))
    finally:
        original.train(modes[0]), adapted.train(modes[1])
    scale = max(1.0, float(expected.abs().max()))
    if expected.shape != got.shape or not torch.allclose(expected, got, rtol=1e-4, atol=1e-4 * scale):
        raise MedTransferError(f"cannot adapt the source to {channels} channels: the rebuilt network does not "
                               "compute what the source computed on equal channels")


def adapted_spec(spec: InputSpec, channels: int) -> InputSpec:
    """The input spec for `channels`: one mean/std repeated (grey -> RGB), or the mean of several."""
    def fit(values: tuple[float, ...]) -> tuple[float, ...]:
        if len(values) == channels:
            return tuple(values)
        if len(values) == 1:
            return tuple(values) * channels
        return (sum(values) / len(values),) * channels
    return InputSpec(spec.modality, channels, spec.size, fit(spec.mean), fit(spec.std), list(spec.features))
