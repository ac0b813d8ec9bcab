"""Transfer strategies, one file each, registered by name (`@register`); every module of this
package is imported here, so a new strategy file needs no import line anywhere."""

from ..registry import import_submodules
from .base import STRATEGIES, Strategy, TransferContext, get_strategy, register

import_submodules(__name__)

__all__ = ["STRATEGIES", "Strategy", "TransferContext", "get_strategy", "register"]
