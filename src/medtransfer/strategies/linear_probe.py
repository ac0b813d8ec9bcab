from ..models.backbones import Classifier
from .base import Strategy, TransferContext, extract_features, fit_logistic_head, register


def linear_probe(ctx: TransferContext, strategy: str) -> Classifier:
    """Frozen source backbone; features extracted once; logistic-regression head (C on validation).
    The features come from the feature cache (`models.feature_cache`): a grid's linear-probe cells on one
    source and dataset compute each example's features once, whatever their budget and seed."""
    model = ctx.target_model(strategy, new_head=True)
    train, val = ctx.target.train, ctx.target.val
    fit_logistic_head(model, extract_features(model, train.x), train.y.numpy(),
                      extract_features(model, val.x), val.y.numpy(), ctx.target.task, ctx.config)
    return model


@register
class LinearProbe(Strategy):
    name = "linear-probe"
    summary = "feature copy: frozen source backbone, features extracted once, logistic-regression head"

    def run(self, ctx: TransferContext) -> Classifier:
        model = linear_probe(ctx, self.name)
        # The backbone stays the source's, frozen. Marked so, the evaluation that follows (validation
        # and test, `models.inference.predict_proba`) reads the same cached features instead of running
        # the backbone again. lp-ft calls `linear_probe` itself and fine-tunes, so it is not frozen there.
        model.preprocess.requires_grad_(False)
        model.backbone.requires_grad_(False)
        return model
