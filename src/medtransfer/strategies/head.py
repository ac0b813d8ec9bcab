from ..models.backbones import Classifier
from .base import Strategy, TransferContext, register


@register
class Head(Strategy):
    name = "head"
    summary = "frozen source backbone, new linear head trained by AdamW"
    dp_sgd = True  # --dp trains it with DP-SGD
    data_parallel = True  # --devices N trains it with DDP

    def run(self, ctx: TransferContext) -> Classifier:
        model = ctx.target_model(self.name)
        model.backbone.requires_grad_(False)
        return ctx.fit(model, [{"params": model.head.parameters()}], frozen=[model.backbone])
