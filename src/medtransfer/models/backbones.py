"""Backbones and the one model shape every strategy works on: preprocess -> backbone -> head.

The preprocess step carries the input spec with the weights (like timm's `pretrained_cfg`): a
28 px MedMNIST image is resized to the backbone's input size (64 px by default for 2D: large enough
for ResNet/EfficientNet stems to keep a spatial map, small enough for CPUs), grayscale is repeated
to the three channels of an RGB source, and the source's mean/std are applied. Data stay in [0, 1].

What differs between backbone families (timm 2D, MONAI 3D, MLP, ...) lives in `kinds/`, one module per
family; this module only dispatches on the architecture's "kind".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from numbers import Integral

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import defaults
from ..errors import MedTransferError
from .dp_compat import apply_recorded_fixes
from .kinds import KINDS, kind_for
from .kinds.mlp import MLP  # noqa: F401 - importable from here, as before

DEFAULT_IMAGE_SIZE = defaults.IMAGE_SIZE
MIN_IMAGE_SIZE = defaults.MIN_IMAGE_SIZE
DEFAULT_BACKBONES = defaults.BACKBONES


@dataclass
class InputSpec:
    modality: str  # image2d | image3d | tabular | signal
    channels: int = 0  # channels the backbone takes (0 for tabular)
    size: int | None = None  # images are resized to size (2D) before the backbone
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)
    features: list[str] = field(default_factory=list)  # tabular feature names, in order
    rate: float | None = None  # signals: the sampling rate (Hz) the model was trained at, when known
    length: int | None = None  # signals: the training recordings' length in samples
    tokenizer: str | None = None  # text: the tokenizer the ids come from, name#vocabulary digest

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "InputSpec":
        data = dict(data)
        data["mean"], data["std"] = tuple(data["mean"]), tuple(data["std"])
        return cls(**data)


class Preprocess(nn.Module):
    """[0, 1] images -> the backbone's size, channels and normalisation; identity for tables."""

    def __init__(self, spec: InputSpec):
        super().__init__()
        self.spec = spec
        channels = max(spec.channels, 1)
        self.register_buffer("mean", torch.tensor(spec.mean).expand(channels).clone(), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).expand(channels).clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.spec.modality in ("tabular", "text"):  # text: token ids and mask go to the encoder as they are
            return x
        if x.shape[1] == 1 and self.spec.channels == 3 and self.spec.modality.startswith("image"):
            x = x.expand(-1, 3, *x.shape[2:])
        if self.spec.modality == "image2d" and self.spec.size and x.shape[-1] != self.spec.size:
            x = F.interpolate(x, size=(self.spec.size, self.spec.size), mode="bilinear", align_corners=False)
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return (x - self.mean.view(shape)) / self.std.view(shape)


class Classifier(nn.Module):
    """preprocess -> backbone (features) -> linear head [-> calibration]. Strategies swap heads and
    freeze parts; the pipeline sets `calibration` (a `models.calibration.Calibration`, fitted on the
    run's validation split) after training, and removes it whenever the model becomes a starting point."""

    def __init__(self, backbone: nn.Module, num_features: int, num_outputs: int, spec: InputSpec,
                 architecture: dict):
        super().__init__()
        self.preprocess = Preprocess(spec)
        self.backbone = backbone
        self.head = nn.Linear(num_features, num_outputs)
        self.num_features = num_features
        self.spec = spec
        self.architecture = architecture
        self.calibration: nn.Module | None = None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.preprocess(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x))

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """Logits from backbone features: the head, then the calibration when the model has one."""
        out = self.head(features)
        return out if self.calibration is None else self.calibration(out)

    def reset_head(self, num_outputs: int) -> None:
        self.head = nn.Linear(self.num_features, num_outputs).to(self.head.weight.device)
        self.calibration = None  # it belonged to the old head

    def stages(self) -> list[str]:
        """Backbone module names from input to output, for freezing the first stages."""
        kind = KINDS.get(self.architecture["kind"])
        names = kind.stages(self.backbone) if kind else [name for name, _ in self.backbone.named_children()]
        # a stage that owns no weights (timm's resnet 'act1') cannot be unfrozen
        return [n for n in names if any(True for _ in self.backbone.get_submodule(n).parameters())]


def build_backbone(architecture: dict) -> tuple[nn.Module, int]:
    """Architecture metadata -> (backbone returning features, feature width). Random init."""
    kind = KINDS.get(architecture["kind"])
    if kind is None:
        raise MedTransferError(f"unknown architecture kind {architecture['kind']!r}")
    backbone, width = kind.build(architecture)
    return apply_recorded_fixes(backbone, architecture), width  # a DP run's GroupNorms, where it made them


def describe(backbone: str | None, modality: str, channels: int, n_features: int = 0) -> dict:
    """A backbone name from the CLI -> architecture metadata (what a checkpoint records)."""
    name = backbone or DEFAULT_BACKBONES[modality]
    return kind_for(name, modality).describe(name, channels, n_features)


def create_model(architecture: dict, spec: InputSpec, num_outputs: int) -> Classifier:
    backbone, width = build_backbone(architecture)
    return Classifier(backbone, width, num_outputs, spec, architecture)


def spec_for(dataset, image_size: int | str | None = None) -> InputSpec:
    """`default_spec` for a loaded TaskDataset: its modality, channels, features, training inputs and rate."""
    return default_spec(dataset.modality, dataset.in_channels, dataset.info.get("features"), image_size,
                        dataset.train.x if dataset.modality == "signal" else None, dataset.info.get("rate"),
                        dataset.info.get("tokenizer"))


def channel_statistics(x: torch.Tensor | None, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of signals (N, C, T); (0, 1) per channel without data.
    A flat channel gets std 1 (dividing by ~0 would blow its noise up). Computed by numpy, whose sums do
    not depend on the thread count: torch's differed in the last bit between a grid's 1-thread workers
    and its 2-thread parent, so the same source got two cache keys and was pretrained twice."""
    if x is None or len(x) == 0:
        return (0.0,) * channels, (1.0,) * channels
    values = x.double().transpose(0, 1).reshape(channels, -1).numpy()
    mean, std = values.mean(axis=1), values.std(axis=1, ddof=1)
    std = np.where(std > 1e-8, std, 1.0)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


NATIVE = "native"  # --image-size native: each ImageNet/timm source at the resolution it was trained at


def pick_size(image_size: int | str | None, default: int, native: int | None = None) -> int:
    """The image size asked for, else the default. Only None means "the default": a size of 0 (or any
    size too small for a backbone) is refused, never silently replaced (`or` would turn 0 into 64).
    "native": the pretrained model's own training resolution (`native`) where it has one, else the default."""
    if image_size is None:
        return default
    if image_size == NATIVE:
        return default if native is None else native
    if isinstance(image_size, bool) or not isinstance(image_size, Integral) or image_size < MIN_IMAGE_SIZE:
        raise MedTransferError(f"image size must be a whole number of pixels >= {MIN_IMAGE_SIZE} or "
                               f"'{NATIVE}', got {image_size!r} (--image-size)")
    return int(image_size)


def default_spec(modality: str, channels: int, features: list[str] | None = None,
                 image_size: int | None = None, train_x: torch.Tensor | None = None,
                 rate: float | None = None, tokenizer: str | None = None) -> InputSpec:
    """Input spec for a model trained from scratch on this data. Signals are standardised per channel
    with the mean and standard deviation of `train_x` (the training split's inputs: no labels), kept in
    the spec so that predictions on new recordings are standardised the same way."""
    if modality == "tabular":
        return InputSpec("tabular", features=list(features or []), mean=(0.0,), std=(1.0,))
    if modality == "text":  # (N, 2, L) token ids and attention mask: nothing to resize or standardise
        return InputSpec("text", channels=channels, mean=(0.0,), std=(1.0,), tokenizer=tokenizer)
    if modality == "signal":
        mean, std = channel_statistics(train_x, channels)
        length = int(train_x.shape[-1]) if train_x is not None and train_x.ndim == 3 else None
        return InputSpec("signal", channels=channels, mean=mean, std=std, rate=rate, length=length)
    size = pick_size(image_size, DEFAULT_IMAGE_SIZE) if modality == "image2d" else None
    return InputSpec(modality, channels=channels, size=size, mean=(0.5,) * channels, std=(0.5,) * channels)
