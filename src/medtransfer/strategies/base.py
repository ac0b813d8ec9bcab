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
from ..defaults import C_GRID
from ..errors import MedTransferError
from ..models.backbones import Classifier, InputSpec, create_model, describe
from ..models.inference import extract_features  # noqa: F401 (re-exported for the strategies)
from ..models.logistic import fit_logistic
from ..progress import SILENT, Progress
from ..registry import Registry
from ..training.loop import FitResult, TrainConfig, fit
from ..training.privacy import DPConfig

STRATEGIES = Registry("strategy")  # name -> Strategy class


def register(cls):
    """Class decorator: registers a strategy under its `name`."""
    return STRATEGIES.register()(cls)


def get_strategy(name: str) -> "Strategy":
    return STRATEGIES.lookup(name)()


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
    # ones), followed by any --unlabelled images (`pipeline.unlabelled`): what domain adaptation and
    # prior-shift correction learn from, and what a linear probe's features are standardised on
    # (`linear_probe.scaling_inputs`). None when not given.
    unlabelled: torch.Tensor | None = None
    notes: dict = field(default_factory=dict)  # what a strategy decided (selection split, estimated prior)
    warnings: list[str] = field(default_factory=list)  # what the user must hear about those decisions
    progress: Progress = SILENT  # where the training loop reports its epochs
    dp: DPConfig | None = None  # --dp: the loop trains with DP-SGD (only strategies tagged `dp_sgd` are given one)

    def fit(self, model: nn.Module, groups: list[dict], frozen: list[nn.Module] = (), extra_loss=None,
            *, train=None, val=None, batch_loss=None, score_fn=None, keep_initial: bool = True,
            **overrides) -> nn.Module:
        """The one training loop on the labelled target data (or on `train` / `val` when a strategy
        trains on more than the target's labels, e.g. source + target for domain adaptation)."""
        config = replace(self.config, **overrides) if overrides else self.config
        self.fit_result = fit(model, groups, self.target.train if train is None else train,
                              self.target.val if val is None else val, self.target.task,
                              self.target.modality, config, frozen=list(frozen), extra_loss=extra_loss,
                              batch_loss=batch_loss, score_fn=score_fn, keep_initial=keep_initial,
                              progress=self.progress, dp=self.dp)
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
        model.calibration = None  # fitted for the source's own head and data; the run fits its own
        if new_head or self.source_classes != self.target.classes:
            torch.manual_seed(self.config.seed)
            model.reset_head(self.target.num_outputs)
        return model


class Strategy(ABC):
    """A transfer method. Its tags (class attributes, sklearn-style) say what it needs and what it is;
    the pipeline, experiment grids, reports, the demo and the CLI derive everything from them."""
    name = ""
    summary = ""
    needs_source_model = True  # starts from a source model (weights, a run, or a source dataset pretrained first)
    needs_source_data = False  # fits on the labelled source dataset itself: --source must be a dataset
    needs_unlabelled_target = False  # learns from the target's unlabelled training inputs
    # Reads them when given (`TransferContext.unlabelled`): the linear probe's feature scaling, and every
    # strategy that needs them. --unlabelled is refused for a strategy that would ignore it.
    reads_unlabelled = False
    needs_labels = True  # False: works without labelled target examples (--budget 0)
    baseline = False  # a reference transfer methods are compared with, never "the best transfer method"
    uses_backbone = True  # False: the result does not depend on --backbone (logistic-regression baselines)
    modalities: tuple[str, ...] | None = None  # the data it takes (None: any); e.g. ("text",) for TF-IDF
    # Trains the target's labelled examples only through the one loop with a per-example loss, so `--dp`
    # (DP-SGD) covers everything it learns from them. False: a closed-form fit (logistic regression, a
    # linear probe's head), a loss coupling examples, or no target training at all: --dp is refused.
    dp_sgd = False
    # Trains only through the one loop, with a loss that is a mean over a batch's examples (plus terms that
    # do not depend on the batch), so a device's equal share of every batch and DDP's averaged gradients
    # make the global batch's step: `--devices N` is allowed. False: a closed-form fit, no training, or a
    # loss that couples a batch's examples (batch statistics, an unlabelled batch drawn inside the step,
    # per-batch dataset weights), which N shares would compute differently: refused, not approximated.
    data_parallel = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.unlabelled_ok = not cls.needs_labels  # the older name of the label tag
        cls.reads_unlabelled = cls.reads_unlabelled or cls.needs_unlabelled_target

    @classmethod
    def needs_source(cls) -> bool:
        """Whether a --source of any kind is required (False: run once, whatever the sources)."""
        return cls.needs_source_model or cls.needs_source_data

    @classmethod
    def accepts(cls, backbone: str | None) -> bool:
        """Whether the strategy can run on this backbone (an experiment grid skips the pairs it cannot)."""
        return True

    @abstractmethod
    def run(self, ctx: TransferContext) -> Classifier:
        """Return the fitted target model."""


def fit_logistic_head(model: Classifier, train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray,
                      val_y: np.ndarray, task: str, config: TrainConfig, grid=C_GRID, standardize: bool = True,
                      scale_x: np.ndarray | None = None) -> float:
    """Fit scikit-learn logistic regression on (standardised) features, C chosen on validation AUC,
    and write it into the model's linear head. Returns the validation score. The run's seed and
    `--class-weight` come from `config` (a balanced sampler means balanced weights here: no batches).
    `scale_x`: the rows that standardise the features (default `train_x`; see `models.logistic`)."""
    weighting = "balanced" if "balanced" in (config.class_weight, config.sampler) else "none"
    fitted = fit_logistic(train_x, train_y, val_x, val_y, task, model.head.out_features, config.seed, grid=grid,
                          class_weight=weighting, standardize=standardize, scale_x=scale_x)
    weight, bias = fitted.folded()  # the standardisation folded into the head
    model.head.weight.data = torch.as_tensor(weight, dtype=torch.float32)
    model.head.bias.data = torch.as_tensor(bias, dtype=torch.float32)
    return fitted.score


def linear_model(ctx: TransferContext) -> Classifier:
    """Logistic regression as a Classifier (identity backbone), for the tabular baselines."""
    n = ctx.target.train.x.shape[1]
    return create_model(describe("linear", "tabular", 0, n), ctx.spec, ctx.target.num_outputs)
