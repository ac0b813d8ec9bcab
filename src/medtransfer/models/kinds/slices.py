"""Volumes read by a 2D source (`--source slices:A`): a 2.5D encoder for 3D targets.

Why: no 3D source ships offline, but 2D ones do (ImageNet EfficientNet-Lite, an OrganAMNIST CT model from a
run folder, SSL runs). The source reads SLICES_PER_AXIS evenly spaced planes along each of the three axes
of a volume, each plane as a 2D image through the source's own preprocess (size, channels, normalisation);
its features are averaged over the planes of an axis and the three axes' averages are joined (3 x the
source's width). This is the multi-view "2.5D" reading MedMNIST v2 compares with 3D networks (Yang et
al. 2023). The encoder's own preprocess passes the [0, 1] volumes through unchanged.

The planes of a volume go through one 2D network as a batch, so what needs the source's order of stages
on a volume (partial fine-tuning, layer-wise learning-rate decay, Grad-CAM) is refused with the reason;
linear-probe, head and full (flat rates, the volumes' default) run.
"""

from __future__ import annotations

import torch
from torch import nn

from ...errors import MedTransferError
from .base import BackboneKind, register_kind
from .stack import member

SLICES_PER_AXIS = 8  # planes read along each axis (recorded in the architecture, so a checkpoint reloads as trained)
PLANES_PER_PASS = 256  # planes sent through the 2D source at once: a batch of volumes is 24x as many images
NO_STAGES = ("a slices: source reads a volume's planes through one 2D network, so it has no order of stages on "
             "volumes: partial fine-tuning, layer-wise learning-rate decay and Grad-CAM are not available; use "
             "linear-probe, head, or full with --layer-decay flat")


def plane_positions(length: int, count: int) -> list[int]:
    """`count` evenly spaced interior positions along an axis of `length` (the two border planes are left
    out), each once."""
    if length <= count:
        return list(range(length))
    step = (length - 1) / (count + 1)
    return sorted({round(step * (i + 1)) for i in range(count)})


class SliceEncoder(nn.Module):
    """(N, C, D, H, W) volumes -> the member's features of the planes of each axis, averaged per axis, joined."""

    def __init__(self, source: nn.Module, per_axis: int):
        super().__init__()
        self.member = source
        self.per_axis = per_axis

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5:
            raise MedTransferError(f"a slices: source reads volumes (N, C, D, H, W); got inputs of shape "
                                   f"{tuple(x.shape)}")
        pooled = []
        for axis in (2, 3, 4):
            index = torch.tensor(plane_positions(int(x.shape[axis]), self.per_axis), device=x.device)
            planes = x.index_select(axis, index).movedim(axis, 1).flatten(0, 1)  # (N x K, C, a, b)
            if torch.jit.is_tracing():  # an export: one pass, no chunk count fixed by the example batch
                features = self.member.features(planes)
            else:
                features = torch.cat([self.member.features(part) for part in planes.split(PLANES_PER_PASS)])
            pooled.append(features.unflatten(0, (-1, len(index))).mean(dim=1))
        return torch.cat(pooled, dim=1)


@register_kind
class Slices(BackboneKind):
    name = "slices"
    modality = "image3d"

    def describe(self, name: str, channels: int, n_features: int) -> dict:
        raise MedTransferError("slices is a source, not a backbone name: give --source slices:A with a 2D source "
                               "of weights (e.g. slices:imagenet:efficientnet_lite0, or slices:<run folder>)")

    def build(self, architecture: dict) -> tuple[nn.Module, int]:
        source = member(architecture["member"]["architecture"], architecture["member"]["input"])
        return SliceEncoder(source, architecture["per_axis"]), 3 * source.num_features

    def stages(self, backbone: nn.Module) -> list[str]:
        raise MedTransferError(NO_STAGES)
