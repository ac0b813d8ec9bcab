"""What the domain-adaptation strategies (`dann`, `coral`, `mmd`) share: the data they train on,
how they pick a model without target labels, and one training step through the one loop.

Data. Labelled: the source dataset's training split plus whatever labelled target examples the
budget allows (none with --budget 0). Unlabelled: the target's *whole* training split without its
labels (`TransferContext.unlabelled`). Each step takes a labelled batch (the loop's) and an
unlabelled target batch of the same size, drawn with the loop's seeded generator inside the
`batch_loss` hook; both go through the backbone together (one batch, as in TLlib, so BatchNorm
sees both hospitals), the head's cross-entropy is taken on the labelled part and an alignment loss
(a small `nn.Module`: domain discriminator, CORAL, MK-MMD) between the two feature batches.

What trains: everything, as in `full` (backbone at 0.1 x the head's learning rate, one warm-up
epoch), plus the alignment module's own parameters (the discriminator) as a further parameter group.

Model selection. With labelled target validation examples of every class (a budget > 0) the
validation AUC on them picks the epoch, and the source model itself stays eligible (as for every
strategy). Without them (--budget 0) the source validation split's AUC picks among the *adapted*
epochs (the untrained source model is not eligible, or selection on source data would simply
return it): the usual source-risk criterion, which favours adapted models that still classify the
source well. `TransferContext.notes["selection"]` records which one was used.
"""

from __future__ import annotations

import math
from abc import abstractmethod

import torch
from torch import nn

from ..data.base import Split
from ..errors import MedTransferError
from ..models.backbones import Classifier
from ..training.augment import augment_batch
from ..training.loop import class_weights, loss_fn
from .base import Strategy, TransferContext
from .full import BACKBONE_LR_RATIO


class AdaptationModel(nn.Module):
    """A classifier with an alignment loss beside it, for the loop. forward(x) -> the classifier's
    logits (validation, prediction); forward(x, y, x_target) -> classification loss on (x, y) +
    weight x alignment(features of x, features of x_target): the training loss, so the whole step
    runs under the loop's precision (Fabric wraps forward)."""

    def __init__(self, classifier: Classifier, alignment: nn.Module, task: str, weight: float = 1.0,
                 class_weight: torch.Tensor | None = None):
        super().__init__()
        self.classifier = classifier
        self.alignment = alignment
        self.weight = weight
        self.criterion = loss_fn(task, class_weight)
        self.aligned = learned_features(classifier)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, x_target: torch.Tensor | None = None):
        if y is None:
            return self.classifier(x)
        features = self.classifier.features(torch.cat([x, x_target]))
        source, target = features[:len(x)], features[len(x):]
        loss = self.criterion(self.classifier.head(source), y)
        return loss + self.weight * self.alignment(source[:, self.aligned].float(), target[:, self.aligned].float())


class PairLoss(nn.Module):
    """A parameter-free alignment loss(source features, target features) as a module (CORAL, MMD)."""

    def __init__(self, loss):
        super().__init__()
        self.loss = loss

    def forward(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss(source, target)


def learned_features(classifier: Classifier) -> slice:
    """The part of the features that training can move: all of them, except for the wide-and-deep
    tabular MLP, whose features begin with the raw inputs passed through unchanged (aligning those is
    impossible, and a discriminator would separate the sites on them alone)."""
    arch = classifier.architecture
    if arch.get("kind") == "mlp" and arch.get("skip") and arch.get("hidden"):
        return slice(arch["in_features"], None)
    return slice(None)


def require_adaptation_data(ctx: TransferContext, strategy: str) -> None:
    if ctx.source_data is None:
        raise MedTransferError(f"{strategy} needs --source to be a source dataset (e.g. heart:cleveland or "
                               "medmnist:pneumoniamnist): it trains on the labelled source data beside the unlabelled "
                               "target data")
    if ctx.source_data.classes != ctx.target.classes:
        raise MedTransferError(f"{strategy} needs source and target to share their classes (the same diagnosis at "
                               f"another hospital); source {ctx.source_data.classes}, target {ctx.target.classes}")
    if ctx.unlabelled is None or len(ctx.unlabelled) == 0:
        raise MedTransferError(f"{strategy} needs unlabelled target examples; the target's training split is empty")
    shape_s, shape_t = tuple(ctx.source_data.train.x.shape[1:]), tuple(ctx.unlabelled.shape[1:])
    if shape_s != shape_t:
        raise MedTransferError(f"{strategy}: source inputs are {shape_s} but target inputs are {shape_t}; give both "
                               "datasets at one size and channel count (e.g. both medmnist:…@64)")


def labelled_split(ctx: TransferContext) -> Split:
    """The labelled source training split plus the budgeted labelled target examples."""
    source, target = ctx.source_data.train, ctx.target.train
    if len(target) == 0:
        return source
    return Split(torch.cat([source.x, target.x.to(source.x.dtype)]), torch.cat([source.y, target.y]))


def selection_split(ctx: TransferContext) -> tuple[Split, str, bool]:
    """(validation split, what it is, whether the untrained source model stays eligible)."""
    val = ctx.target.val
    if len(val) and (ctx.target.task == "multilabel" or len(torch.unique(val.y)) == ctx.target.num_classes):
        return val, f"target validation split ({len(val)} labelled examples)", True
    return ctx.source_data.val, (f"source validation split ({len(ctx.source_data.val)} examples; no labelled "
                                 "target validation examples of every class), adapted epochs only"), False


def total_steps(ctx: TransferContext, n_train: int) -> int:
    """Optimizer steps the loop will take at most (for schedules such as DANN's GRL ramp)."""
    batch = min(ctx.config.batch_size, n_train)
    return max(math.ceil(n_train / batch), ctx.config.min_steps_per_epoch) * ctx.config.epochs


def unlabelled_batch_loss(unlabelled: torch.Tensor, modality: str, augment: bool):
    """The loop's batch_loss: the labelled batch, an unlabelled target batch of the same size drawn
    with the loop's generator, both augmented alike, through AdaptationModel.forward."""
    held = {"x": unlabelled}

    def batch_loss(model: nn.Module, xb: torch.Tensor, yb: torch.Tensor, generator: torch.Generator):
        pool = held["x"]
        if pool.device != xb.device:  # moved to the training device once
            pool = held["x"] = pool.to(xb.device)
        index = torch.randint(len(pool), (len(xb),), generator=generator).to(xb.device)
        xt = pool[index]
        if augment:
            xb, xt = augment_batch(xb, modality, generator), augment_batch(xt, modality, generator)
        return model(xb, yb, xt)
    return batch_loss


def adapt(ctx: TransferContext, strategy: str, alignment: nn.Module, weight: float = 1.0) -> Classifier:
    """Fine-tune the source model on labelled source (+ target) data while `alignment` pulls the
    source and target feature distributions together; returns the selected classifier."""
    require_adaptation_data(ctx, strategy)
    classifier = ctx.target_model(strategy)
    train = labelled_split(ctx)
    val, selection, keep_initial = selection_split(ctx)
    if hasattr(alignment, "total_steps"):
        alignment.total_steps = total_steps(ctx, len(train))
    model = AdaptationModel(classifier, alignment, ctx.target.task, weight,
                            class_weights(train.y, ctx.target.task, ctx.config.class_weight, ctx.target.num_outputs))
    lr = ctx.config.lr
    groups = [{"params": classifier.backbone.parameters(), "lr": lr * BACKBONE_LR_RATIO},
              {"params": classifier.head.parameters(), "lr": lr}]
    extra = [p for p in alignment.parameters() if p.requires_grad]
    if extra:
        groups.append({"params": extra, "lr": lr})
    ctx.notes.update(selection=selection, labelled_source=len(ctx.source_data.train),
                     labelled_target=len(ctx.target.train), unlabelled_target=len(ctx.unlabelled))
    batch_loss = unlabelled_batch_loss(ctx.unlabelled, ctx.target.modality, ctx.config.augment)
    ctx.fit(model, groups, train=train, val=val, batch_loss=batch_loss, keep_initial=keep_initial,
            warmup_epochs=max(ctx.config.warmup_epochs, 1.0))
    return classifier


class AdaptationStrategy(Strategy):
    """Base of dann / coral / mmd: `alignment(ctx)` builds the loss module; `weight` scales it."""
    needs_source_data = True
    needs_unlabelled_target = True
    needs_labels = False
    weight = 1.0

    @abstractmethod
    def alignment(self, ctx: TransferContext) -> nn.Module:
        """The loss module that aligns source and target features (it may hold parameters)."""

    def run(self, ctx: TransferContext) -> Classifier:
        require_adaptation_data(ctx, self.name)
        return adapt(ctx, self.name, self.alignment(ctx), self.weight)
