"""Transfer strategies, one file each, registered by name."""

from . import baselines, full, head, l2sp, linear_probe, lp_ft, partial, scratch  # noqa: F401  (registers them)
from .base import STRATEGIES, Strategy, TransferContext, get_strategy, register

__all__ = ["STRATEGIES", "Strategy", "TransferContext", "get_strategy", "register"]
