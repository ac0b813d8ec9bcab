"""Classical tabular baselines (logistic regression), so a transfer result always has them beside it."""

from abc import abstractmethod


from ..errors import MedTransferError
from ..models.backbones import Classifier
from .base import Strategy, TransferContext, fit_logistic_head, linear_model, register


class TabularBaseline(Strategy):
    needs_source_model = False
    baseline = True
    uses_backbone = False
    modalities = ("tabular",)

    @abstractmethod
    def rows(self, ctx: TransferContext):
        """(train_x, train_y, val_x, val_y) the logistic regression is fitted and tuned on."""

    def source_data(self, ctx: TransferContext):
        if ctx.source_data is None:
            raise MedTransferError(f"{self.name} needs --source to be a source dataset such as heart:cleveland")
        if ctx.source_data.classes != ctx.target.classes:
            raise MedTransferError(f"source classes {ctx.source_data.classes} differ from target classes "
                                   f"{ctx.target.classes}")
        return ctx.source_data

    def run(self, ctx: TransferContext) -> Classifier:
        if ctx.target.modality != "tabular":
            raise MedTransferError(f"{self.name} is a tabular baseline; for images use scratch or a transfer strategy")
        model = linear_model(ctx)
        tx, ty, vx, vy = self.rows(ctx)
        fit_logistic_head(model, tx.numpy(), ty.numpy(), vx.numpy(), vy.numpy(), ctx.target.task, ctx.config)
        return model


@register
class TargetOnly(TabularBaseline):
    name = "target-only"
    summary = "logistic regression on the labelled target rows only"

    def rows(self, ctx):
        t = ctx.target
        return t.train.x, t.train.y, t.val.x, t.val.y


@register
class SourceOnly(TabularBaseline):
    name = "source-only"
    summary = "logistic regression fitted at the source site, applied unchanged to the target"
    needs_source_data = True
    needs_labels = False

    def rows(self, ctx):
        s = self.source_data(ctx)
        return s.train.x, s.train.y, s.val.x, s.val.y


@register
class Pooled(TabularBaseline):
    name = "pooled"
    summary = "logistic regression on source and labelled target rows together"
    needs_source_data = True

    def rows(self, ctx):
        import torch
        s, t = self.source_data(ctx), ctx.target
        return torch.cat([s.train.x, t.train.x]), torch.cat([s.train.y, t.train.y]), t.val.x, t.val.y
