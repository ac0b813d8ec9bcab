"""What a backbone kind declares, and how a CLI backbone name finds its kind.

A kind is the family behind an architecture's `"kind"` entry (what a checkpoint records). It says
which modality it serves, which CLI names it claims, how a name becomes architecture metadata, how
to build the module and where its stages are. Name resolution asks every registered kind, so no
list of kinds exists anywhere else.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from torch import nn

from ...errors import MedTransferError
from ...registry import Registry


class BackboneKind(ABC):
    """One backbone family. Subclass, set `name` and `modality`, register with `@register_kind`."""

    name: str = ""  # the architecture's "kind"
    modality: str = ""  # image2d | image3d | tabular
    fallback: bool = False  # takes every name on its modality that no kind claims (timm for 2D)

    def claims(self, name: str) -> bool:
        """Whether a CLI backbone name belongs to this kind, whatever the data's modality."""
        return False

    def refuse(self, name: str) -> str:
        """The error when data of this kind's modality get a name no kind of the modality takes."""
        return f"backbone {name!r} does not take {self.modality} inputs; use a {self.name} backbone"

    @abstractmethod
    def describe(self, name: str, channels: int, n_features: int) -> dict:
        """CLI name -> architecture metadata (must hold "kind": self.name)."""

    @abstractmethod
    def build(self, architecture: dict) -> tuple[nn.Module, int]:
        """Architecture metadata -> (randomly initialised backbone returning features, feature width)."""

    def stages(self, backbone: nn.Module) -> list[str]:
        """Backbone module names from input to output (for freezing the first stages)."""
        return [name for name, _ in backbone.named_children()]

    def channels_from_weights(self, architecture: dict, state: dict) -> dict:
        """The architecture adjusted to a bare weights file (e.g. its input channels); unchanged by default."""
        return architecture


KINDS: Registry = Registry("backbone kind")  # architecture "kind" -> BackboneKind instance


def register_kind(cls: type[BackboneKind]) -> type[BackboneKind]:
    """Class decorator: register one instance of the kind under `cls.name`."""
    KINDS.register(cls.name)(cls())
    return cls


def kind_for(name: str, modality: str) -> BackboneKind:
    """The kind that claims `name` (else the modality's fallback), refused unless it takes `modality`."""
    kind = next((k for k in KINDS.values() if k.claims(name)), None) or _fallback(modality)
    if kind is None or kind.modality != modality:
        speaker = _fallback(modality) or next((k for k in KINDS.values() if k.modality == modality), None)
        if speaker is None:
            raise MedTransferError(f"no backbone takes {modality} inputs; backbone kinds: {', '.join(KINDS)}")
        raise MedTransferError(speaker.refuse(name))
    return kind


def _fallback(modality: str) -> BackboneKind | None:
    return next((k for k in KINDS.values() if k.fallback and k.modality == modality), None)
