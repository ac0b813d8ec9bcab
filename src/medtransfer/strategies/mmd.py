"""DAN-style multi-kernel MMD (Long et al. 2015): pull the source and target feature distributions
together by minimising their maximum mean discrepancy under a family of Gaussian kernels.

MMD^2 = mean k(s, s') + mean k(t, t') - 2 mean k(s, t) (the biased estimate on the two batches),
with k the average of Gaussian kernels exp(-|a - b|^2 / (a_i sigma^2)), sigma^2 the mean squared
distance in the batch (not back-propagated) and a_i in {1/4, 1/2, 1, 2, 4} (TLlib's
`MultipleKernelMaximumMeanDiscrepancy` with `GaussianKernel(alpha=2**k)`). Zero for identical
batches; no parameters of its own.
"""

from __future__ import annotations

import torch
from torch import nn

from .adaptation import AdaptationStrategy, PairLoss
from .base import TransferContext, register

KERNEL_SCALES = (0.25, 0.5, 1.0, 2.0, 4.0)


def mk_mmd(source: torch.Tensor, target: torch.Tensor, scales=KERNEL_SCALES) -> torch.Tensor:
    x = torch.cat([source, target])
    sq = x.pow(2).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2 * x @ x.t()).clamp_min(0)
    sigma2 = d2.detach().sum() / max(len(x) * (len(x) - 1), 1)
    sigma2 = torch.clamp(sigma2, min=1e-8)
    kernel = sum(torch.exp(-d2 / (s * sigma2)) for s in scales) / len(scales)
    n = len(source)
    return kernel[:n, :n].mean() + kernel[n:, n:].mean() - 2 * kernel[:n, n:].mean()


@register
class MMD(AdaptationStrategy):
    name = "mmd"
    summary = "DAN: minimise a multi-kernel Gaussian MMD between source and target features (Long et al. 2015)"

    def alignment(self, ctx: TransferContext) -> nn.Module:
        return PairLoss(mk_mmd)
