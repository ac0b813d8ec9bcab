"""Transfer strategies, one file each, registered by name."""

from . import (baselines, coral, dann, full, head, l2sp, linear_probe, lp_ft, mmd, partial,  # noqa: F401
               prior_shift, scratch, source_model)  # (registers them)
from .base import STRATEGIES, Strategy, TransferContext, get_strategy, register

__all__ = ["STRATEGIES", "Strategy", "TransferContext", "get_strategy", "register"]
