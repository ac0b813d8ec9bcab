"""Backbone kinds by registry: one module per family (timm 2D, MONAI 3D, MLP, ...), each registering a
`BackboneKind` with `@register_kind`. Every module here is imported so its registration runs; they keep
timm and MONAI inside functions, so importing this package stays cheap."""

from __future__ import annotations

from ...registry import import_submodules
from .base import KINDS, BackboneKind, kind_for, register_kind

import_submodules(__name__)

__all__ = ["KINDS", "BackboneKind", "kind_for", "register_kind"]
