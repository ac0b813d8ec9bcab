"""2D images through timm: `resnet18`, `timm:<name>`; any plain name on 2D data is a timm name."""

from __future__ import annotations

from torch import nn

from ...errors import MedTransferError
from .base import BackboneKind, register_kind


@register_kind
class Timm2D(BackboneKind):
    name = "timm"
    modality = "image2d"
    fallback = True

    def claims(self, name: str) -> bool:
        return name.startswith("timm:")

    def refuse(self, name: str) -> str:
        return f"backbone {name!r} does not take 2D images; use a timm name such as resnet18"

    def describe(self, name: str, channels: int, n_features: int) -> dict:
        return {"kind": "timm", "name": name.removeprefix("timm:"), "in_chans": channels}

    def build(self, architecture: dict) -> tuple[nn.Module, int]:
        import timm
        try:
            backbone = timm.create_model(architecture["name"], pretrained=False, num_classes=0,
                                         in_chans=architecture["in_chans"])
        except RuntimeError as exc:
            raise MedTransferError(f"unknown timm backbone {architecture['name']!r} ({exc}); "
                                   "see timm.list_models()") from None
        return backbone, backbone.num_features

    def stages(self, backbone: nn.Module) -> list[str]:
        return [info["module"] for info in backbone.feature_info]

    def channels_from_weights(self, architecture: dict, state: dict) -> dict:
        """The file decides the channels (often RGB); the preprocess repeats grayscale to match."""
        from timm.models import get_pretrained_cfg_value
        stem = state.get(f"{get_pretrained_cfg_value(architecture['name'], 'first_conv') or 'conv1'}.weight")
        return dict(architecture, in_chans=int(stem.shape[1]) if stem is not None else architecture["in_chans"])
