"""Which class is "positive" in a binary task: what sensitivity, PPV and the threshold are about.

Why a rule and not "index 1": class order is alphabetical or file order, so "cancer/healthy" would make
"healthy" the positive class and every sensitivity printed would be the specificity for cancer. The
rule, in order (documented in the README):
1. `--positive CLASS`, when given;
2. the class the dataset declares (heart: disease; MedMNIST: pneumonia, malignant, ...);
3. when exactly one class is named like a negative finding (normal, healthy, benign, negative, control,
   none, absent, no ..., not ..., 0, false), the other one;
4. otherwise the second class, with a warning asking for `--positive`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import MedTransferError
from .base import TaskDataset

NEGATIVE_WORDS = {"normal", "healthy", "benign", "negative", "control", "controls", "none", "absent", "no", "non",
                  "not", "without", "0", "false"}


@dataclass(frozen=True)
class Positive:
    index: int  # of the positive class in dataset.classes
    name: str
    how: str  # why this class: the rule that chose it, for the log, metrics.json and the model card
    warning: str | None = None  # when it was only a default


def looks_negative(name: str) -> bool:
    return bool(set(re.split(r"[^a-z0-9]+", str(name).lower())) & NEGATIVE_WORDS)


def positive_class(dataset: TaskDataset, requested: str | None = None, where: str = "") -> Positive | None:
    """The positive class of a binary dataset by the rule above; None for other tasks (where `requested`
    is refused: their metrics are per class, one-vs-rest)."""
    classes, where = [str(c) for c in dataset.classes], where or dataset.name
    if dataset.task != "binary":
        if requested is not None:
            raise MedTransferError(f"--positive {requested} applies to binary tasks, and {where} is {dataset.task} "
                                   f"({len(classes)} classes); its sensitivity, specificity, PPV and NPV are "
                                   "reported for every class, one against the rest: drop --positive")
        return None
    if requested is not None:
        if str(requested) not in classes:
            raise MedTransferError(f"--positive {requested!r} is not a class of {where}; its classes are "
                                   f"{', '.join(map(repr, classes))}")
        return Positive(classes.index(str(requested)), str(requested), "--positive")
    declared = dataset.info.get("positive")
    if declared in classes:
        return Positive(classes.index(declared), declared, "declared by the dataset")
    negative = [looks_negative(c) for c in classes]
    if sum(negative) == 1:
        index = negative.index(False)
        return Positive(index, classes[index], f"the other class, {classes[1 - index]!r}, names a negative finding")
    return Positive(1, classes[1], "the second class (no class names a negative finding)",
                    f"the positive class was not stated: {classes[1]!r} (the second of {classes}) is taken; state it "
                    "with --positive CLASS, since sensitivity, PPV and the threshold are about that class")
