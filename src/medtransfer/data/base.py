"""The in-memory dataset every loader returns: tensors per split, plus what the task is."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

import torch

Task = Literal["binary", "multiclass", "multilabel"]
Modality = Literal["image2d", "image3d", "tabular"]


@dataclass
class Split:
    """x: float32 images (N, C, H, W[, D]) scaled to [0, 1], or tabular features (N, F).
    y: int64 (N,) class indices, or float32 (N, L) for multi-label."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, index) -> "Split":
        index = torch.as_tensor(index, dtype=torch.long)
        return Split(self.x[index], self.y[index])


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
        return {"train": self.train, "val": self.val, "test": self.test}[name]

    def with_splits(self, **splits: Split) -> "TaskDataset":
        return replace(self, **splits)
