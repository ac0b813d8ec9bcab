"""Deep CORAL (Sun & Saenko 2016): align the second-order statistics of source and target features.

The loss is the squared difference of the two feature covariance matrices, plus that of the two
means (as in TLlib's `CorrelationAlignmentLoss`), each averaged over entries: zero for identical
batches, growing with the shift. It has no parameters of its own.
"""

from __future__ import annotations

import torch
from torch import nn

from .adaptation import AdaptationStrategy, PairLoss
from .base import TransferContext, register


def coral_loss(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    mean_s, mean_t = source.mean(0, keepdim=True), target.mean(0, keepdim=True)
    cs, ct = source - mean_s, target - mean_t
    cov_s = cs.t() @ cs / max(len(source) - 1, 1)
    cov_t = ct.t() @ ct / max(len(target) - 1, 1)
    return (mean_s - mean_t).pow(2).mean() + (cov_s - cov_t).pow(2).mean()


@register
class CORAL(AdaptationStrategy):
    name = "coral"
    summary = "Deep CORAL: match source and target feature means and covariances (Sun & Saenko 2016)"

    def alignment(self, ctx: TransferContext) -> nn.Module:
        return PairLoss(coral_loss)
