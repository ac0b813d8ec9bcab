"""The dataset scheme registry: `scheme:argument` -> the loader that registered that scheme.

A loader module registers itself with `@register_scheme(name, help=...)` and `load_spec` only looks
names up, so a new scheme is one new module (found by `import_submodules` in `data/__init__`), or a
registration from anywhere else, and nothing more. Every loader takes the same `(arg, LoadOptions)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from ..errors import MedTransferError
from ..registry import Registry
from .base import TaskDataset


@dataclass(frozen=True)
class LoadOptions:
    """What the caller knows besides the spec; each scheme uses the part it needs."""

    data_root: str | Path | None = None  # where downloaded files live (medmnist)
    target: str | None = None  # label column (csv)
    group: str | None = None  # patient column for group-level splits (csv)
    encoder: object | None = None  # a source's fitted tabular encoding, reused on the target
    split_seed: int = 0  # seeds the split of schemes that draw their own


Loader = Callable[[str, LoadOptions], TaskDataset]

LOADERS: Registry = Registry("dataset scheme")  # name -> loader(arg, options); loader.help: its help text


class _HelpTexts(Mapping):
    """name -> help text of every registered scheme, in registration order (a view of LOADERS)."""

    def __getitem__(self, name: str) -> str:
        return LOADERS[name].help

    def __iter__(self):
        return iter(LOADERS)

    def __len__(self) -> int:
        return len(LOADERS)


SCHEMES = _HelpTexts()  # what `medtransfer datasets` and the "bad dataset" message print


def register_scheme(name: str, *, help: str):  # noqa: A002 - reads like the CLI's help=
    """Decorator: `@register_scheme("csv", help="...")` on a `load(arg, options) -> TaskDataset`."""
    def add(load: Loader) -> Loader:
        load.help = help
        return LOADERS.register(name)(load)
    return add


def is_dataset_spec(spec: str) -> bool:
    """Whether `spec` names a dataset (`scheme:argument` with a registered scheme), not weights."""
    scheme, sep, _ = spec.partition(":")
    return bool(sep) and scheme in LOADERS


def load_spec(spec: str, options: LoadOptions) -> TaskDataset:
    """Load the dataset named by `scheme:argument`; a bad spec lists every scheme with its help."""
    scheme, sep, arg = str(spec).partition(":")
    if not sep or scheme not in LOADERS or not arg:
        raise MedTransferError(f"bad dataset {spec!r}: use one of " + "; ".join(
            f"{name}:… ({text})" for name, text in SCHEMES.items()))
    return LOADERS[scheme](arg, options)
