import copy

from ..errors import MedTransferError
from ..models.backbones import Classifier
from .base import Strategy, TransferContext, register


def unchanged_source(ctx: TransferContext, strategy: str) -> Classifier:
    """A copy of the source classifier, refused when it does not predict the target's classes."""
    model = ctx.require_source_model(strategy)
    if ctx.source_classes != ctx.target.classes:
        raise MedTransferError(f"{strategy} applies the source classifier to the target, so both need the same "
                               f"classes; the source predicts {ctx.source_classes}, the target has {ctx.target.classes}")
    return copy.deepcopy(model)


@register
class SourceModel(Strategy):
    name = "source-model"
    summary = "the source model applied unchanged (no target data used): the neural source-only baseline"
    needs_labels = False
    baseline = True

    def run(self, ctx: TransferContext) -> Classifier:
        return unchanged_source(ctx, self.name)
