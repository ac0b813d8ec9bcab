"""Self-supervised source models: SimCLR and MoCo v2 on (unlabelled) medical images, trained by the
one training loop (`training.fit`) and saved as ordinary medtransfer checkpoints."""

from __future__ import annotations

from ..registry import import_submodules
from .base import METHODS, ContrastiveMethod
from .pretrain import SSL_DEFAULTS, SSLResult, combine_images, pretrain_ssl, split_specs

import_submodules(__name__)  # every method file registers itself

__all__ = ["METHODS", "ContrastiveMethod", "SSL_DEFAULTS", "SSLResult", "combine_images", "pretrain_ssl",
           "split_specs"]
