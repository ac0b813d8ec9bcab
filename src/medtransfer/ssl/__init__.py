"""Self-supervised source models: SimCLR and MoCo v2 on (unlabelled) medical images, trained by the
one training loop (`training.fit`) and saved as ordinary medtransfer checkpoints."""

from __future__ import annotations

from . import moco, simclr  # noqa: F401  (register the methods)
from .base import METHODS, ContrastiveMethod
from .pretrain import SSL_DEFAULTS, SSLResult, combine_images, pretrain_ssl, split_specs

__all__ = ["METHODS", "ContrastiveMethod", "SSL_DEFAULTS", "SSLResult", "combine_images", "pretrain_ssl",
           "split_specs"]
