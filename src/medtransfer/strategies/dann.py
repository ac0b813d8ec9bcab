"""DANN: domain-adversarial training (Ganin & Lempitsky 2015; Ganin et al. 2016, JMLR).

A small discriminator learns to tell source features from target features; a gradient reversal
layer between the backbone and the discriminator turns its gradient around, so the backbone learns
features the discriminator cannot separate (while the head still classifies the labelled data).
The reversal coefficient ramps from 0 to 1 as lambda_p = 2 / (1 + exp(-10 p)) - 1 over the
training progress p, so the noisy early discriminator does not disturb the source features.
In TLlib's shape: `GradientReverse`, `DomainDiscriminator`, `DomainAdversarialLoss`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .adaptation import AdaptationStrategy
from .base import TransferContext, register


class GradientReverseFunction(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by -coeff."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, coeff: float) -> torch.Tensor:
        ctx.coeff = coeff
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad.neg() * ctx.coeff, None


def grad_reverse(x: torch.Tensor, coeff: float = 1.0) -> torch.Tensor:
    return GradientReverseFunction.apply(x, coeff)


def ganin_coefficient(progress: float, gamma: float = 10.0) -> float:
    """lambda_p = 2 / (1 + exp(-gamma p)) - 1: 0 at the start, close to 1 at the end."""
    return 2.0 / (1.0 + math.exp(-gamma * min(max(progress, 0.0), 1.0))) - 1.0


class DomainDiscriminator(nn.Sequential):
    """Features -> one logit (source vs target): two hidden layers with BatchNorm and ReLU."""

    def __init__(self, in_features: int, hidden: int):
        super().__init__(nn.Linear(in_features, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                         nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                         nn.Linear(hidden, 1))


class DomainAdversarialLoss(nn.Module):
    """Binary cross-entropy of the discriminator (source = 1, target = 0), each domain weighted
    half, on gradient-reversed features. Every call in training mode advances the GRL ramp by one
    step of `total_steps` (set by the strategy; a fixed coefficient when it is None)."""

    def __init__(self, discriminator: nn.Module, total_steps: int | None = None, max_coeff: float = 1.0):
        super().__init__()
        self.discriminator = discriminator
        self.total_steps = total_steps
        self.max_coeff = max_coeff
        self.step = 0

    @property
    def coefficient(self) -> float:
        if not self.total_steps:
            return self.max_coeff
        return self.max_coeff * ganin_coefficient(self.step / self.total_steps)

    def forward(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        coeff = self.coefficient
        if self.training:
            self.step += 1
        logits = self.discriminator(grad_reverse(torch.cat([source, target]), coeff)).squeeze(1)
        labels = torch.cat([torch.ones(len(source)), torch.zeros(len(target))]).to(logits)
        losses = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
        return 0.5 * (losses[:len(source)].mean() + losses[len(source):].mean())


@register
class DANN(AdaptationStrategy):
    name = "dann"
    summary = "domain-adversarial: a discriminator on the features, gradient reversal (Ganin et al. 2016)"

    def alignment(self, ctx: TransferContext) -> nn.Module:
        from .adaptation import learned_features
        width = len(range(ctx.source_model.num_features)[learned_features(ctx.source_model)])
        torch.manual_seed(ctx.config.seed)
        return DomainAdversarialLoss(DomainDiscriminator(width, hidden=min(1024, max(64, width))))
