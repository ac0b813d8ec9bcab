from ..models.backbones import Classifier
from .base import Strategy, TransferContext, extract_features, fit_logistic_head, register


def linear_probe(ctx: TransferContext, strategy: str) -> Classifier:
    """Frozen source backbone; features extracted once; logistic-regression head (C on validation)."""
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
        return linear_probe(ctx, self.name)
