"""L2-SP (Li, Grandvalet & Davoine 2018): fine-tune everything, but pull the weights back toward
the source's instead of toward zero, so a few labels adjust the source model rather than erase it."""

import torch

from ..models.backbones import Classifier
from .base import Strategy, TransferContext, register
from .full import fine_tune_all

ALPHA = 0.1  # strength of the pull toward the source weights
BETA = 0.01  # plain L2 on a new head (a kept source head is pulled toward itself with ALPHA)


def l2sp_penalty(model: Classifier, start: dict[str, torch.Tensor], new_head: bool):
    """A closure for the training loop: alpha/2 |w - w_source|^2 (+ beta/2 |head|^2 when the head is new)."""
    pairs = [(p, start[n]) for n, p in model.named_parameters()
             if p.requires_grad and not (new_head and n.startswith("head."))]
    head = list(model.head.parameters()) if new_head else []

    def penalty() -> torch.Tensor:
        total = sum(((p - s.to(p.device)) ** 2).sum() for p, s in pairs) * (ALPHA / 2)
        return total + sum((p ** 2).sum() for p in head) * (BETA / 2)
    return penalty


@register
class L2SP(Strategy):
    name = "l2-sp"
    summary = "full, with an L2 pull toward the source weights instead of weight decay (Li et al. 2018)"
    data_parallel = True  # the penalty is the same on every rank; --devices N trains it with DDP

    def run(self, ctx: TransferContext) -> Classifier:
        model = ctx.target_model(self.name)
        new_head = ctx.source_classes != ctx.target.classes
        start = {n: p.detach().clone() for n, p in model.named_parameters()}
        return fine_tune_all(ctx, model, weight_decay=0.0, extra_loss=l2sp_penalty(model, start, new_head))
