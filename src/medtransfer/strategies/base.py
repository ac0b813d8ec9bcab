"""Strategy registry and the context a strategy works in.

A strategy decides which parameters train and how fast, and what the target model starts from;
the one training loop (`training.fit`) does the rest. Adding a method = one file + `@register`.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

from ..data.base import TaskDataset
from ..errors import MedTransferError
from ..models.backbones import Classifier, InputSpec, create_model
from ..training.loop import FitResult, TrainConfig, fit, predict_proba, selection_score

STRATEGIES: dict[str, type["Strategy"]] = {}


def register(cls):
    STRATEGIES[cls.name] = cls
    return cls


def get_strategy(name: str) -> "Strategy":
    if name not in STRATEGIES:
        raise MedTransferError(f"unknown strategy {name!r}; choose one of: {', '.join(sorted(STRATEGIES))}")
    return STRATEGIES[name]()


@dataclass
class TransferContext:
    target: TaskDataset  # after the label budget
    config: TrainConfig
    architecture: dict  # what `scratch` builds
    spec: InputSpec  # input spec for a model built from scratch
    source_model: Classifier | None = None
    source_data: TaskDataset | None = None  # tabular baselines fit on source rows
    source_classes: list[str] | None = None  # the source model's own task, when known
    fit_result: FitResult | None = None
    # The target's whole training split without its labels (every example, not only the budgeted
    # ones): what domain adaptation and prior-shift correction learn from. None when not given.
    unlabelled: torch.Tensor | None = None
    notes: dict = field(default_factory=dict)  # what a strategy decided (selection split, estimated prior)

    def fit(self, model: nn.Module, groups: list[dict], frozen: list[nn.Module] = (), extra_loss=None,
            *, train=None, val=None, batch_loss=None, score_fn=None, keep_initial: bool = True,
            **overrides) -> nn.Module:
        """The one training loop on the labelled target data (or on `train` / `val` when a strategy
        trains on more than the target's labels, e.g. source + target for domain adaptation)."""
        config = replace(self.config, **overrides) if overrides else self.config
        self.fit_result = fit(model, groups, self.target.train if train is None else train,
                              self.target.val if val is None else val, self.target.task,
                              self.target.modality, config, frozen=list(frozen), extra_loss=extra_loss,
                              batch_loss=batch_loss, score_fn=score_fn, keep_initial=keep_initial)
        return model

    def require_source_model(self, strategy: str) -> Classifier:
        if self.source_model is None:
            raise MedTransferError(f"strategy {strategy!r} needs --source (a run folder, weights file, "
                                   "imagenet:…, timm:… or a source dataset)")
        return self.source_model

    def target_model(self, strategy: str, new_head: bool = False) -> Classifier:
        """A copy of the source model. Its head is kept when the source was trained on the same
        classes (another hospital, same diagnosis), else replaced by a fresh one for the target."""
        model = copy.deepcopy(self.require_source_model(strategy))
        if new_head or self.source_classes != self.target.classes:
            torch.manual_seed(self.config.seed)
            model.reset_head(self.target.num_outputs)
        return model


class Strategy(ABC):
    name = ""
    summary = ""
    # True for the strategies that work without any labelled target example (--budget 0).
    unlabelled_ok = False
    uses_backbone = True  # False: the result does not depend on --backbone (logistic-regression baselines)

    @classmethod
    def accepts(cls, backbone: str | None) -> bool:
        """Whether the strategy can run on this backbone (an experiment grid skips the pairs it cannot)."""
        return True

    @abstractmethod
    def run(self, ctx: TransferContext) -> Classifier:
        """Return the fitted target model."""


@torch.no_grad()
def extract_features(model: Classifier, x: torch.Tensor, batch_size: int = 512) -> np.ndarray:
    was_training = model.training
    model.eval()
    out = torch.cat([model.features(x[i:i + batch_size]).float() for i in range(0, len(x), batch_size)])
    model.train(was_training)
    return out.numpy()


def fit_logistic_head(model: Classifier, train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray,
                      val_y: np.ndarray, task: str, seed: int, grid=(0.01, 0.1, 1.0, 10.0)) -> float:
    """Fit scikit-learn logistic regression on (standardised) features, C chosen on validation,
    and write it into the model's linear head. Returns the validation score."""
    from sklearn.linear_model import LogisticRegression

    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    train_z, val_z = (train_x - mean) / std, (val_x - mean) / std
    best = None
    for c in grid:
        if task == "multilabel":
            fits = [LogisticRegression(C=c, max_iter=2000).fit(train_z, train_y[:, j])
                    for j in range(train_y.shape[1])]
            coef = np.concatenate([f.coef_ for f in fits]); bias = np.concatenate([f.intercept_ for f in fits])
            prob = 1 / (1 + np.exp(-(val_z @ coef.T + bias)))
        else:
            clf = LogisticRegression(C=c, max_iter=2000, random_state=seed).fit(train_z, train_y)
            coef, bias = clf.coef_, clf.intercept_
            if coef.shape[0] == 1:  # binary: softmax over [-z/2, z/2] equals sigmoid(z)
                coef, bias = np.concatenate([-coef / 2, coef / 2]), np.array([-bias[0] / 2, bias[0] / 2])
            prob = full_proba(clf, val_z, model.head.out_features)
            if len(clf.classes_) < model.head.out_features:
                raise MedTransferError("a class is missing from the labelled training examples; raise the budget")
        score = selection_score(val_y, prob, task)
        if best is None or score > best[0]:
            best = (score, coef, bias)
    score, coef, bias = best
    weight = coef / std[None, :]  # fold the standardisation into the head
    model.head.weight.data = torch.as_tensor(weight, dtype=torch.float32)
    model.head.bias.data = torch.as_tensor(bias - weight @ mean, dtype=torch.float32)
    return score


def full_proba(clf, x: np.ndarray, n_classes: int) -> np.ndarray:
    prob = np.zeros((len(x), n_classes))
    prob[:, clf.classes_] = clf.predict_proba(x)
    return prob


def linear_model(ctx: TransferContext) -> Classifier:
    """Logistic regression as a Classifier (identity backbone), for the tabular baselines."""
    n = ctx.target.train.x.shape[1]
    arch = {"kind": "mlp", "name": "linear", "in_features": n, "hidden": [], "dropout": 0.0}
    return create_model(arch, ctx.spec, ctx.target.num_outputs)


def predict(model: Classifier, split, task: str) -> np.ndarray:
    return predict_proba(model, split.x, task)
