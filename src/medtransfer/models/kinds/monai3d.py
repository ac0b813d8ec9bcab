"""3D volumes through MONAI's 3D ResNets: `monai:resnet10`, `monai:resnet18`, `monai:resnet34`."""

from __future__ import annotations

import torch
from torch import nn

from ...errors import MedTransferError
from .base import BackboneKind, register_kind


@register_kind
class Monai3D(BackboneKind):
    name = "monai"
    modality = "image3d"

    def claims(self, name: str) -> bool:
        return name.startswith("monai:")

    def refuse(self, name: str) -> str:
        return f"3D volumes need a MONAI backbone such as monai:resnet10, not {name!r}"

    def describe(self, name: str, channels: int, n_features: int) -> dict:
        return {"kind": "monai", "name": name.partition(":")[2], "in_chans": channels}

    def build(self, architecture: dict) -> tuple[nn.Module, int]:
        from monai.networks import nets
        factory = getattr(nets, architecture["name"], None)
        if factory is None or not architecture["name"].startswith("resnet"):
            raise MedTransferError(f"unknown MONAI 3D backbone {architecture['name']!r}; use monai:resnet10, "
                                   "monai:resnet18 or monai:resnet34")
        backbone = factory(spatial_dims=3, n_input_channels=architecture["in_chans"], feed_forward=False)
        return backbone, monai_width(backbone)

    def stages(self, backbone: nn.Module) -> list[str]:
        return ["layer1", "layer2", "layer3", "layer4"]


def monai_width(backbone: nn.Module) -> int:
    """Feature width by a dry run in eval mode (BatchNorm statistics untouched)."""
    backbone.eval()
    with torch.no_grad():
        width = backbone(torch.zeros(1, backbone.conv1.in_channels, 16, 16, 16)).shape[1]
    backbone.train()
    return width
