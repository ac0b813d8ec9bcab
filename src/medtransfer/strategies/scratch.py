from ..models.backbones import Classifier, create_model
from .base import Strategy, TransferContext, register


@register
class Scratch(Strategy):
    name = "scratch"
    summary = "same architecture, random initialisation: the baseline every transfer is compared with"
    needs_source_model = False
    baseline = True
    dp_sgd = True  # --dp trains it with DP-SGD
    data_parallel = True  # --devices N trains it with DDP

    def run(self, ctx: TransferContext) -> Classifier:
        import torch

        torch.manual_seed(ctx.config.seed)
        model = create_model(ctx.architecture, ctx.spec, ctx.target.num_outputs)
        return ctx.fit(model, [{"params": model.parameters()}])
