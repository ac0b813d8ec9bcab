"""Datasets by scheme: `medmnist:<flag>[@size]`, `folder:<path>`, `manifest:<file.csv>` (images listed in a
table, with patients and splits), `csv:<path>`, `heart:<site>`, and `shift:<kind>[:<strength>]:<dataset>`
(a known acquisition shift of an image dataset). Every example carries an id (`Split.ids`).

Each scheme is registered by the module that loads it (see `schemes.py`); every module of this
package is imported here so its registrations run. Modules keep heavy libraries (pandas, PIL)
inside functions, so importing this package stays cheap.
"""

from __future__ import annotations

import importlib

from ..errors import MedTransferError
from ..registry import import_submodules
from .base import Split, TaskDataset
from .budget import apply_budget, parse_budget
from .fingerprint import dataset_fingerprint
from .schemes import (LABEL_OPTIONS, LOADERS, SCHEMES, LoadOptions, check_options_used, is_dataset_spec, load_spec,
                      reads, register_scheme)


def load_dataset(spec: str, *, data_root=None, target: str | None = None, group: str | None = None,
                 id: str | None = None, drop=(), encoder=None, split_seed: int = 0,  # noqa: A002
                 text: str | None = None) -> TaskDataset:
    """Load a dataset named by `scheme:argument`. `encoder` (tabular) reuses a source's encoding.
    `id`: a csv: table's identifier column; `drop`: its columns that are not features (a name or names);
    `text`: a text-csv: table's text column."""
    drop = (drop,) if isinstance(drop, str) else tuple(drop or ())
    return load_spec(spec, LoadOptions(data_root=data_root, target=target, group=group, encoder=encoder,
                                       split_seed=split_seed, id=id, drop=drop, text=text))


def require_classes(dataset: TaskDataset, spec: str) -> None:
    """A dataset a classifier is trained on needs labels and at least two classes: refused here, before
    any training (one class would only fail after training, when the metrics need two columns)."""
    where = dataset.info.get("source") or dataset.info.get("file") or spec
    if dataset.info.get("evaluation_only"):
        raise MedTransferError(f"{spec}: {where} holds only test (and val) images, no training split: it can be "
                               f"evaluated on (medtransfer evaluate RUN --data {spec}) but not trained on; add "
                               "training images (a train/ folder, or train rows in a manifest) to train on it")
    if dataset.info.get("unlabelled"):
        raise MedTransferError(f"{spec}: {where} holds unlabelled images (no class sub-folders); training a classifier "
                               "needs one sub-folder per class (<folder>/<class>/*.png); unlabelled images serve "
                               "self-supervised pretraining (medtransfer pretrain --method simclr)")
    if dataset.num_classes < 2:
        raise MedTransferError(f"{spec}: {where} has only one class ({', '.join(map(repr, dataset.classes))}); a "
                               "classifier needs at least two: add examples of another class (e.g. another class "
                               "folder)")


# Each loader module registers its scheme(s). The built-in ones first, in the order users see them
# listed (images, then tables, then the shift wrapper); any other module of the package after them.
for _module in ("medmnist", "folder", "manifest", "tabular", "shift"):
    importlib.import_module(f"{__name__}.{_module}")
import_submodules(__name__)

__all__ = ["Split", "TaskDataset", "load_dataset", "apply_budget", "parse_budget", "LOADERS", "SCHEMES", "LoadOptions",
           "register_scheme", "is_dataset_spec", "reads", "check_options_used", "LABEL_OPTIONS", "dataset_fingerprint",
           "require_classes"]
