from ..models.backbones import Classifier
from .base import Strategy, TransferContext, register

BACKBONE_LR_RATIO = 0.1


def fine_tune_all(ctx: TransferContext, model: Classifier, head_lr_ratio: float = 1.0, **fit_options) -> Classifier:
    """Everything trains; the backbone at a tenth of the head's learning rate, after a warm-up."""
    lr = ctx.config.lr
    groups = [{"params": model.backbone.parameters(), "lr": lr * BACKBONE_LR_RATIO},
              {"params": model.head.parameters(), "lr": lr * head_lr_ratio}]
    return ctx.fit(model, groups, warmup_epochs=max(ctx.config.warmup_epochs, 1.0), **fit_options)


@register
class Full(Strategy):
    name = "full"
    summary = "fine-tune everything; backbone LR = 0.1 x head LR, one warm-up epoch"

    def run(self, ctx: TransferContext) -> Classifier:
        return fine_tune_all(ctx, ctx.target_model(self.name))
