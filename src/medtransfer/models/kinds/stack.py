"""A stack of sources (`--source stack:A+B+...`): several pretrained 2D models side by side, their pooled
features concatenated, so one linear probe reads them all.

Why: on a target far from every source, features of several models can carry more than the best single
one (feature concatenation / multi-model feature fusion). Measured on BreastMNIST with all its labels:
a linear probe on EfficientNet-Lite0+1+2 features reached test AUC 0.907 against 0.870-0.904 for each
alone (README). Each member keeps its own input size and normalisation (`member`, a Classifier without a
head): the stack's own preprocess passes the [0, 1] images through unchanged, and every member's
features are what it computes alone, so the feature cache serves the stack from its members' entries.

A stack has no single order of stages (its members run side by side), so what needs one (partial
fine-tuning, layer-wise learning-rate decay, Grad-CAM) is refused with the reason; linear-probe, head
and `full --layer-decay flat` run.
"""

from __future__ import annotations

import torch
from torch import nn

from ...errors import MedTransferError
from .base import BackboneKind, register_kind

NO_STAGES = ("a stack of sources has no single order of stages (its members run side by side), so partial "
             "fine-tuning, layer-wise learning-rate decay and Grad-CAM need one source; on a stack use linear-probe, "
             "head, or full with --layer-decay flat")


class SourceStack(nn.Module):
    """Members side by side: each reads the same images through its own preprocess and backbone."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([m.features(x) for m in self.members], dim=1)


def member(architecture: dict, spec: dict) -> nn.Module:
    """One member as a Classifier without a head: its preprocess, backbone and `features`, exactly as the
    source alone (the same feature-cache key). Random weights; a checkpoint or the source fills them."""
    from ..backbones import InputSpec, create_model
    model = create_model(architecture, InputSpec.from_dict(spec), num_outputs=1)
    model.head = nn.Identity()
    return model


@register_kind
class Stack(BackboneKind):
    name = "stack"
    modality = "image2d"

    def describe(self, name: str, channels: int, n_features: int) -> dict:
        raise MedTransferError("a stack is a source, not a backbone name: give --source stack:A+B (e.g. "
                               "stack:imagenet:efficientnet_lite0+imagenet:efficientnet_lite1)")

    def build(self, architecture: dict) -> tuple[nn.Module, int]:
        members = [member(m["architecture"], m["input"]) for m in architecture["members"]]
        return SourceStack(members), sum(m.num_features for m in members)

    def stages(self, backbone: nn.Module) -> list[str]:
        raise MedTransferError(NO_STAGES)
