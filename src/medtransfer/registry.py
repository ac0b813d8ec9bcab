"""Name -> implementation registries, timm-style: a decorator registers, `get` looks up.

Every extension point (dataset schemes, backbone kinds, strategies, metrics) is one `Registry`, so
adding one is adding one file whose decorator names it; nothing else lists names. A package whose
modules register themselves calls `import_submodules(__name__)` once, so a new file is found
without an import line anywhere.
"""

from __future__ import annotations

import importlib
import pkgutil

from .errors import MedTransferError


class Registry(dict):
    """A dict of name -> object, in registration order, with a decorator and a friendly lookup."""

    def __init__(self, what: str):
        super().__init__()
        self.what = what  # "strategy", "dataset scheme", ...: used in error messages

    def register(self, name: str | None = None):
        """Decorator: `@REGISTRY.register("csv")`, or bare `@REGISTRY.register()` for a class with `.name`."""
        def add(obj):
            key = name or getattr(obj, "name", None)
            if not key:
                raise ValueError(f"a {self.what} needs a name to be registered")
            self[key] = obj
            return obj
        return add

    def get(self, name, default=None):
        return super().get(name, default)

    def lookup(self, name: str):
        """The entry for `name`, or a MedTransferError naming the choices."""
        if name not in self:
            raise MedTransferError(f"unknown {self.what} {name!r}; choose one of: {', '.join(sorted(self))}")
        return self[name]


def import_submodules(package: str) -> None:
    """Import every module of `package` (so their decorators run)."""
    module = importlib.import_module(package)
    for info in pkgutil.iter_modules(module.__path__):
        importlib.import_module(f"{package}.{info.name}")
