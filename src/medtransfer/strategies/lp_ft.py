from ..models.backbones import Classifier
from .base import Strategy, TransferContext, register
from .full import BACKBONE_LR_RATIO, fine_tune_all
from .linear_probe import linear_probe


@register
class LinearProbeThenFineTune(Strategy):
    name = "lp-ft"
    summary = "linear probe first, then full fine-tuning from it (Kumar et al. 2022)"

    def run(self, ctx: TransferContext) -> Classifier:
        model = linear_probe(ctx, self.name)
        # The head already fits: move it no faster than the backbone, so features are not distorted.
        return fine_tune_all(ctx, model, head_lr_ratio=BACKBONE_LR_RATIO)
