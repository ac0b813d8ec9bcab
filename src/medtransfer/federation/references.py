"""Where every model of a federated run starts, and the references a federation is compared with: each
site alone (local-only), every site's training rows pooled in one place (the non-private upper reference)
and the source model as it is. They train with the same loop, settings and starting weights as the sites
do in a federation, with early stopping on validation (each site's own; pooled: all sites' together)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..data import Split, TaskDataset
from ..data.tabular import TabularEncoder
from ..models.backbones import Classifier
from ..training.loop import fit
from .model import architecture_for, build_model, load_arrays, probabilities, to_arrays, train_config

Predictions = dict[str, tuple[np.ndarray, np.ndarray]]  # site -> (validation, test) class probabilities


@dataclass
class Start:
    """Where every model of the run starts: the source model's weights (the same for every seed), or random
    weights drawn from the seed."""
    backbone: str
    n_outputs: int
    source: Classifier | None = None

    def __call__(self, seed: int, encoder: TabularEncoder) -> tuple[dict, list[np.ndarray]]:
        """(architecture, weights as Flower arrays): what `Schedule` starts each federation from."""
        if self.source is not None:
            return self.source.architecture, to_arrays(self.source)
        architecture = architecture_for(self.backbone, encoder)
        return architecture, to_arrays(build_model(architecture, encoder, self.n_outputs, seed))

    def model(self, seed: int, encoder: TabularEncoder) -> Classifier:
        architecture, arrays = self(seed, encoder)
        model = build_model(architecture, encoder, self.n_outputs)
        load_arrays(model, arrays)
        return model


def train(model: Classifier, train_split: Split, val: Split, task: str, settings) -> Classifier:
    fit(model, [{"params": list(model.parameters())}], train_split, val, task, "tabular", settings)
    return model


def local_only(datasets: dict[str, TaskDataset], start: Start, encoder: TabularEncoder, seed: int,
               options: dict) -> Predictions:
    """Each site trains alone on its training split."""
    out = {}
    for site, data in datasets.items():
        model = train(start.model(seed, encoder), data.train, data.val, data.task, train_config(seed=seed, **options))
        out[site] = (probabilities(model, data.val, data.task), probabilities(model, data.test, data.task))
    return out


def pooled(datasets: dict[str, TaskDataset], start: Start, encoder: TabularEncoder, seed: int,
           options: dict) -> Predictions:
    """One model on every site's training rows together (validation: every site's validation rows)."""
    parts = list(datasets.values())
    model = train(start.model(seed, encoder), concat([d.train for d in parts]), concat([d.val for d in parts]),
                  parts[0].task, train_config(seed=seed, **options))
    return {site: (probabilities(model, d.val, d.task), probabilities(model, d.test, d.task))
            for site, d in datasets.items()}


def source_only(datasets: dict[str, TaskDataset], start: Start, encoder: TabularEncoder) -> Predictions:
    """The source model at every site, untouched."""
    model = start.model(0, encoder)
    return {site: (probabilities(model, d.val, d.task), probabilities(model, d.test, d.task))
            for site, d in datasets.items()}


def concat(splits: list[Split]) -> Split:
    return Split(torch.cat([s.x for s in splits]), torch.cat([s.y for s in splits]),
                 [i for s in splits for i in s.id_list("train")])
