import torch

from ..defaults import PROBE_SCALING_MAX
from ..models.backbones import Classifier
from .base import Strategy, TransferContext, extract_features, fit_logistic_head, register


def scaling_inputs(ctx: TransferContext) -> torch.Tensor | None:
    """The target's training inputs (labels unused) whose feature statistics standardise a probe: up to
    PROBE_SCALING_MAX of them, drawn with a fixed seed so that every budget and seed of a grid shares them and
    their cached features. None when they would not be more than the labelled examples (then those serve)."""
    pool = ctx.unlabelled
    if pool is None or len(ctx.target.train) >= min(len(pool), PROBE_SCALING_MAX):
        return None
    if len(pool) > PROBE_SCALING_MAX:
        keep = torch.randperm(len(pool), generator=torch.Generator().manual_seed(0))[:PROBE_SCALING_MAX]
        pool = pool[keep.sort().values]
    return pool


def linear_probe(ctx: TransferContext, strategy: str) -> Classifier:
    """Frozen source backbone; features extracted once; logistic-regression head (C on validation).
    The features come from the feature cache (`models.feature_cache`): a grid's linear-probe cells on one
    source and dataset compute each example's features once, whatever their budget and seed. Below the
    full budget they are standardised on the target's unlabelled training inputs (`scaling_inputs`)."""
    model = ctx.target_model(strategy, new_head=True)
    train, val = ctx.target.train, ctx.target.val
    pool = scaling_inputs(ctx)
    scale_x = None if pool is None else extract_features(model, pool)
    fit_logistic_head(model, extract_features(model, train.x), train.y.numpy(),
                      extract_features(model, val.x), val.y.numpy(), ctx.target.task, ctx.config, scale_x=scale_x)
    ctx.notes["feature_scaling"] = (f"features standardised on {len(pool)} unlabelled target inputs (the training "
                                    "split's, labels unused, and any --unlabelled images)" if pool is not None else
                                    "features standardised on the labelled training examples")
    return model


@register
class LinearProbe(Strategy):
    name = "linear-probe"
    reads_unlabelled = True  # its probe standardises features on the unlabelled inputs
    summary = ("feature copy: frozen source backbone, features extracted once (standardised on the target's "
               "training inputs), logistic-regression head")

    def run(self, ctx: TransferContext) -> Classifier:
        model = linear_probe(ctx, self.name)
        # The backbone stays the source's, frozen. Marked so, the evaluation that follows (validation
        # and test, `models.inference.predict_proba`) reads the same cached features instead of running
        # the backbone again. lp-ft calls `linear_probe` itself and fine-tunes, so it is not frozen there.
        model.preprocess.requires_grad_(False)
        model.backbone.requires_grad_(False)
        return model
