"""The in-memory dataset every loader returns: tensors per split, an identifier per example, plus what
the task is."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

import torch

from ..errors import MedTransferError

Task = Literal["binary", "multiclass", "multilabel"]
Modality = Literal["image2d", "image3d", "tabular", "signal", "text"]
SPLIT_NAMES = ("train", "val", "test")


@dataclass
class Split:
    """x: float32 images (N, C, H, W[, D]) scaled to [0, 1], tabular features (N, F), or signals (N, C, T)
    in their recorded units (standardised by the model's preprocess, with statistics of its training data).
    y: int64 (N,) class indices, or float32 (N, L) for multi-label.
    ids: one text per example saying which one it is (an image's path, a table's row or patient id), so
    a prediction can be traced back to the patient; None when the loader knows none."""

    x: torch.Tensor
    y: torch.Tensor
    ids: list[str] | None = None

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, index) -> "Split":
        index = torch.as_tensor(index, dtype=torch.long)
        ids = None if self.ids is None else [self.ids[i] for i in index.reshape(-1).tolist()]
        return Split(self.x[index], self.y[index], ids)

    def id_list(self, name: str) -> list[str]:
        """The examples' ids; `<name>/<i>` (the split's name, the position in it) when the loader gave none."""
        return list(self.ids) if self.ids is not None else [f"{name}/{i}" for i in range(len(self))]


@dataclass
class TaskDataset:
    name: str
    modality: Modality
    task: Task
    classes: list[str]
    train: Split
    val: Split
    test: Split
    # Tabular only: the fitted encoding, so another site can be encoded the same way.
    encoder: object | None = None
    info: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def num_outputs(self) -> int:
        """Width of the model's last layer (one logit per class, also for binary)."""
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return 0 if self.modality == "tabular" else int(self.train.x.shape[1])

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    def split(self, name: str) -> Split:
        """A split by name; "all" is train, val and test in one (a whole external site, evaluated)."""
        if name == "all":
            parts = {part: self.split(part) for part in SPLIT_NAMES}
            return Split(torch.cat([s.x for s in parts.values()]), torch.cat([s.y for s in parts.values()]),
                         [i for part, s in parts.items() for i in s.id_list(part)])
        if name not in SPLIT_NAMES:
            raise MedTransferError(f"unknown split {name!r}; choose {', '.join(SPLIT_NAMES)} or all")
        return getattr(self, name)

    def with_splits(self, **splits: Split) -> "TaskDataset":
        return replace(self, **splits)
