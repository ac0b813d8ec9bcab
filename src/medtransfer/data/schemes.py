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
    target: str | None = None  # label column (csv, manifest)
    group: str | None = None  # patient column (csv, manifest) or DICOM tag (folder) for patient-level splits
    encoder: object | None = None  # a source's fitted tabular encoding, reused on the target
    split_seed: int = 0  # seeds the split of schemes that draw their own
    id: str | None = None  # identifier column (csv): each row's id, never a feature
    drop: tuple[str, ...] = ()  # columns that are not features (csv)
    text: str | None = None  # the column holding the texts (text-csv)


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


# Every option a scheme may read, with its flag: refused where no dataset of a request reads it.
OPTION_FLAGS = {"target": "--target", "group": "--group", "id": "--id", "drop": "--drop", "text": "--text"}
LABEL_OPTIONS = tuple(OPTION_FLAGS)


def register_scheme(name: str, *, help: str, reads=LABEL_OPTIONS):  # noqa: A002 - reads like the CLI's help=
    """Decorator: `@register_scheme("csv", help="...")` on a `load(arg, options) -> TaskDataset`.

    `reads`: which of the options of `LABEL_OPTIONS` (`target`, `group`, `id`, `drop`) the scheme uses,
    e.g. `()` for a scheme with a fixed label such as heart:, or a function `arg -> names` for a scheme
    that wraps another (shift:). A scheme that says nothing is assumed to read them all, so it is never
    refused one."""
    def add(load: Loader) -> Loader:
        load.help = help
        load.reads = reads
        return LOADERS.register(name)(load)
    return add


def is_dataset_spec(spec: str) -> bool:
    """Whether `spec` names a dataset (`scheme:argument` with a registered scheme), not weights."""
    scheme, sep, _ = spec.partition(":")
    return bool(sep) and scheme in LOADERS


def reads(spec: str) -> frozenset:
    """The options of `LABEL_OPTIONS` the scheme of `spec` uses."""
    scheme, _, arg = str(spec).partition(":")
    declared = getattr(LOADERS.get(scheme), "reads", LABEL_OPTIONS)
    return frozenset(declared(arg) if callable(declared) else declared)


def check_options_used(specs, target: str | None = None, group: str | None = None, **values) -> None:
    """Refuse an option that no dataset of the request reads: it would be silently ignored (heart: has
    its fixed label, images take their classes from folders or files). Options by name, as in
    `LABEL_OPTIONS` (`check_options_used(specs, target=..., group=..., id=..., drop=...)`); a None or
    empty value is not given."""
    unknown = set(values) - set(OPTION_FLAGS)
    if unknown:
        raise TypeError(f"check_options_used: unknown option(s) {sorted(unknown)}; known: {list(OPTION_FLAGS)}")
    values = {"target": target, "group": group, **values}
    specs = [s for s in specs if s and is_dataset_spec(s)]
    for option, value in values.items():
        if value is None or (not isinstance(value, str) and not value) or not specs:
            continue
        if not any(option in reads(s) for s in specs):
            flag = OPTION_FLAGS[option]
            shown = value if isinstance(value, str) else " ".join(map(str, value))
            why = " (a fixed label, or classes from folders or files)" if option == "target" else ""
            raise MedTransferError(f"{flag} {shown} would be ignored: {' and '.join(specs)} "
                                   f"take{'s' if len(specs) == 1 else ''} no {option} option{why}; {flag} is read by "
                                   f"{_readers(option)} only, so drop it here")


def _readers(option: str) -> str:
    """'csv: and manifest: datasets': the registered schemes that read `option` (wrappers left out)."""
    names = [f"{name}:" for name, load in LOADERS.items()
             if not callable(getattr(load, "reads", LABEL_OPTIONS)) and option in load.reads]
    if not names:
        return "no dataset scheme"
    return (names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]) + " datasets"


def load_spec(spec: str, options: LoadOptions) -> TaskDataset:
    """Load the dataset named by `scheme:argument`; a bad spec lists every scheme with its help. Whatever
    the scheme, the labels it returns must fit its classes (checked here, once, for every loader)."""
    scheme, sep, arg = str(spec).partition(":")
    if not sep or scheme not in LOADERS or not arg:
        raise MedTransferError(f"bad dataset {spec!r}: use one of " + "; ".join(
            f"{name}:… ({text})" for name, text in SCHEMES.items()))
    dataset = LOADERS[scheme](arg, options)
    check_labels(dataset, spec)
    return dataset


def check_labels(dataset: TaskDataset, spec: str) -> None:
    """Every split has one label per example, and every label is one of the dataset's classes: a label
    beyond them would fail deep in training (`IndexError: Target 3 is out of bounds`) or, worse, be
    scored against the wrong class."""
    import torch

    where = dataset.info.get("file") or dataset.info.get("source") or spec
    k = len(dataset.classes)
    for name in ("train", "val", "test"):
        split = dataset.split(name)
        if len(split.x) != len(split.y):
            raise MedTransferError(f"{where}: the {name} split has {len(split.x)} examples but {len(split.y)} labels")
        if split.ids is not None and len(split.ids) != len(split.y):
            raise MedTransferError(f"{where}: the {name} split has {len(split.y)} examples but {len(split.ids)} "
                                   "ids; the loader must give one id per example")
        y = split.y
        if len(y) == 0:
            continue
        if dataset.task == "multilabel":
            if y.ndim != 2 or y.shape[1] != k:
                raise MedTransferError(f"{where}: {name} labels have shape {tuple(y.shape)}, not (N, {k}) for the "
                                       f"{k} labels {dataset.classes}; is the file the dataset it is named after?")
            bad = torch.unique(y[(y != 0) & (y != 1)])
        else:
            if y.ndim != 1:
                raise MedTransferError(f"{where}: {name} labels have shape {tuple(y.shape)}, not one class per "
                                       "example")
            bad = torch.unique(y[(y < 0) | (y >= k)])
        if len(bad):
            shown = ", ".join(f"{v:g}" for v in bad[:5].tolist())
            raise MedTransferError(f"{where}: {name} split holds label(s) {shown}, outside the {k} classes "
                                   f"{dataset.classes} (labels 0-{k - 1}); is the file the dataset it is named "
                                   "after? Replace it with the right file")
