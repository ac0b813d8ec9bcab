"""The layering of docs/ARCHITECTURE.md, checked on the source: every import (top-level or inside a
function) goes to the same package or a lower layer, and no module imports itself back in a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "medtransfer"

# Lowest first. A module may import its own package and anything in a lower layer, nothing else.
LAYERS = [
    {"__init__", "errors", "defaults"},
    {"registry", "progress", "runs", "config_files"},
    {"data"},
    {"evaluation"},
    {"models"},
    {"training"},
    {"strategies", "ssl"},
    {"pipeline"},
    {"experiment", "federation"},
    {"reporting"},
    {"api"},
    {"demo", "serve"},
    {"cli", "__main__"},
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(dotted: str) -> bool:
    path = SRC.parent / dotted.replace(".", "/")
    return path.with_suffix(".py").is_file() or path.is_dir()


def imports(path: Path) -> set[str]:
    """The medtransfer modules `path` imports, as dotted names."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "medtransfer"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "medtransfer":
                continue
            found.add(target)
            found |= {f"{target}.{a.name}" for a in node.names if is_module(f"{target}.{a.name}")}
    return found


def component(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


MODULES = {module_name(p): p for p in SRC.rglob("*.py")}


def test_every_package_has_a_layer():
    assert {component(m) for m in MODULES} <= set(LAYER), "add the new package to LAYERS and to ARCHITECTURE.md"


def test_no_import_goes_up_or_sideways():
    bad = []
    for name, path in MODULES.items():
        own = component(name)
        for target in imports(path):
            other = component(target)
            if other != own and (LAYER[other] > LAYER[own] or (LAYER[other] == LAYER[own] and own != "__init__")):
                bad.append(f"{name} imports {target}")
    assert not bad, "\n".join(sorted(bad))


def test_no_import_cycle():
    graph = {name: {t for t in imports(path) if t in MODULES and t != name} for name, path in MODULES.items()}
    # a package's __init__ re-exports its modules: the edge package -> module is not a cycle by itself
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in graph[node]:
            if nxt.startswith(node + "."):
                continue
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in graph:
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(cycles)
