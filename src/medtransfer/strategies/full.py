"""Full fine-tuning, and the parameter groups that full, lp-ft and l2-sp share.

Layer-wise learning-rate decay (LLRD, as in BEiT / ULMFiT's discriminative rates): the backbone stage
nearest the head learns at lr x decay, each stage below it at one more factor of decay, so the
generic early features a small target cannot re-learn move least. The decay comes from the run's
config (`layer_decay`: its modality's default in `defaults.TRAINING`, chosen on validation, or the
user's); None is the flat rule, the whole backbone at BACKBONE_LR_RATIO x the head's rate.
"""

from __future__ import annotations

from ..models.backbones import Classifier
from ..training.loop import layer_decay_value
from .base import Strategy, TransferContext, register

BACKBONE_LR_RATIO = 0.1  # the flat rule: the whole backbone at a tenth of the head's learning rate


def layer_decay(config) -> float | None:
    """The run's decay, `config.layer_decay` (None: the flat rule), checked to lie in (0, 1]."""
    return layer_decay_value(getattr(config, "layer_decay", None))


def param_groups(model: Classifier, lr: float, head_lr: float, decay: float | None) -> list[dict]:
    """Optimizer groups: the head at `head_lr`; the backbone flat at lr x BACKBONE_LR_RATIO (decay None),
    or stage by stage at lr x decay**depth, depth 1 for the stage under the head (`Classifier.stages()`,
    input to output). Weights before the first stage (the stem) are one level deeper than it, as in
    timm and BEiT; weights between two stages go with the later one (the feature level they produce:
    EfficientNet's blocks.3 with blocks.4), weights after the last stage (a final conv) with the last.
    Each group names its `stage` and `depth` so a run's schedule can be read back."""
    if decay is None:
        return [{"params": list(model.backbone.parameters()), "lr": lr * BACKBONE_LR_RATIO, "stage": "backbone"},
                {"params": list(model.head.parameters()), "lr": head_lr, "stage": "head"}]
    stages = model.stages()
    grouped = {len(stages) + 1: ("stem", [])}  # depth -> (stage name, its parameters)
    pending, seen = [], False  # parameters outside every stage, waiting for the stage after them
    for name, param in model.backbone.named_parameters():
        index = next((i for i, stage in enumerate(stages) if name == stage or name.startswith(stage + ".")), None)
        if index is None:
            (pending if seen else grouped[len(stages) + 1][1]).append(param)
            continue
        seen = True
        depth = len(stages) - index
        grouped.setdefault(depth, (stages[index], []))[1].extend([*pending, param])
        pending = []
    if pending:
        grouped[1][1].extend(pending)
    groups = [{"params": params, "lr": lr * decay ** depth, "stage": stage, "depth": depth}
              for depth, (stage, params) in sorted(grouped.items(), reverse=True) if params]
    return groups + [{"params": list(model.head.parameters()), "lr": head_lr, "stage": "head", "depth": 0}]


def fine_tune_all(ctx: TransferContext, model: Classifier, head_lr_ratio: float = 1.0, **fit_options) -> Classifier:
    """Everything trains, after a warm-up: decaying stage by stage when the run has a layer decay, else the
    whole backbone at a tenth of the head's learning rate (`param_groups`)."""
    lr = ctx.config.lr
    groups = param_groups(model, lr, lr * head_lr_ratio, layer_decay(ctx.config))
    return ctx.fit(model, groups, warmup_epochs=max(ctx.config.warmup_epochs, 1.0), **fit_options)


@register
class Full(Strategy):
    name = "full"
    summary = "fine-tune everything, one warm-up epoch; backbone stages at the head's LR x decay^depth (images, " \
              "signals: 0.7) or all at 0.1 x (flat: volumes, tables, text)"
    dp_sgd = True  # --dp trains it with DP-SGD
    data_parallel = True  # --devices N trains it with DDP

    def run(self, ctx: TransferContext) -> Classifier:
        return fine_tune_all(ctx, ctx.target_model(self.name))
