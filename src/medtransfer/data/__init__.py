"""Datasets by scheme: `medmnist:<flag>[@size]`, `folder:<path>`, `csv:<path>`, `heart:<site>`, and
`shift:<kind>[:<strength>]:<dataset>` (a known acquisition shift of an image dataset)."""

from __future__ import annotations

from .base import Split, TaskDataset
from .budget import apply_budget, parse_budget
from ..errors import MedTransferError

SCHEMES = {
    "medmnist": "official MedMNIST .npz from the data root, e.g. medmnist:pneumoniamnist or medmnist:adrenalmnist3d@64",
    "folder": "one sub-folder per class (PNG/JPEG/DICOM), optional train/val/test folders, e.g. folder:./xrays",
    "csv": "a table with --target COLUMN (and --group COLUMN for patient-level splits), e.g. csv:./labs.csv",
    "heart": "built-in UCI Heart Disease site: cleveland, hungary, switzerland or va, e.g. heart:hungary",
    "shift": "an image dataset under a known, seeded acquisition shift (every split, labels kept): "
             "shift:<kind>[:<strength>]:<dataset>, kind gamma, contrast, brightness, blur, noise, lowres or "
             "scanner, e.g. shift:gamma:1.8:medmnist:pneumoniamnist",
}


def load_dataset(spec: str, *, data_root=None, target: str | None = None, group: str | None = None,
                 encoder=None, split_seed: int = 0) -> TaskDataset:
    """Load a dataset named by `scheme:argument`. `encoder` (tabular) reuses a source's encoding."""
    scheme, sep, arg = str(spec).partition(":")
    if not sep or scheme not in SCHEMES or not arg:
        raise MedTransferError(f"bad dataset {spec!r}: use one of " + "; ".join(
            f"{name}:… ({text})" for name, text in SCHEMES.items()))
    if scheme == "medmnist":
        from .medmnist import load_medmnist
        return load_medmnist(arg, data_root)
    if scheme == "folder":
        from .folder import load_folder
        return load_folder(arg, seed=split_seed)
    if scheme == "shift":
        from .shift import load_shifted
        return load_shifted(arg, data_root=data_root, target=target, group=group, encoder=encoder,
                            split_seed=split_seed)
    from .tabular import load_csv, load_heart
    if scheme == "csv":
        return load_csv(arg, target, group, encoder=encoder, split_seed=split_seed)
    return load_heart(arg, encoder=encoder, split_seed=split_seed)


__all__ = ["Split", "TaskDataset", "load_dataset", "apply_budget", "parse_budget", "SCHEMES"]
