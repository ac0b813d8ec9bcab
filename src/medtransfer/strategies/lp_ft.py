from ..models.backbones import Classifier
from .base import Strategy, TransferContext, register
from .full import BACKBONE_LR_RATIO, fine_tune_all, layer_decay
from .linear_probe import linear_probe


@register
class LinearProbeThenFineTune(Strategy):
    name = "lp-ft"
    reads_unlabelled = True  # its probe standardises features on the unlabelled inputs
    summary = "linear probe first, then full fine-tuning from it (Kumar et al. 2022)"
    data_parallel = True  # the probe is a deterministic fit every rank repeats; the fine-tuning runs with DDP

    def run(self, ctx: TransferContext) -> Classifier:
        model = linear_probe(ctx, self.name)
        # The head already fits: move it no faster than the backbone's top stage (flat rule: the whole
        # backbone's rate; layer-wise decay: the rate of the stage under the head), so features are not distorted.
        decay = layer_decay(ctx.config)
        return fine_tune_all(ctx, model, head_lr_ratio=BACKBONE_LR_RATIO if decay is None else decay)
