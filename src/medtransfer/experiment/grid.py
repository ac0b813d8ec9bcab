"""The grid: targets x backbones x strategies x sources x budgets x seeds, as cells with stable ids."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from ..data import SCHEMES
from ..runs import clean_name
from .config import DP_NONE, NO_SOURCE, ExperimentConfig


@dataclass(frozen=True)
class Cell:
    target: str
    source: str
    backbone: str | None
    strategy: str
    budget: str
    seed: int
    dp: str = DP_NONE  # a --dp value, or none

    def id(self, settings: dict) -> str:
        """Readable, and unique for the cell *and* its settings: a changed setting is a new cell. A cell
        without DP keeps the id it had before the dp axis existed (resumed grids find their cells)."""
        parts = [short(self.target), short(self.source), self.backbone or "default", self.strategy, self.budget,
                 f"s{self.seed}"] + ([] if self.dp == DP_NONE else [f"dp-{self.dp}"])
        name = "_".join(clean_name(p) for p in parts).replace("%", "pct")
        coordinates = asdict(self)
        if self.dp == DP_NONE:
            del coordinates["dp"]
        settings = settings | {"defaults": defaults_table()}
        digest = hashlib.sha256(json.dumps([coordinates, settings], sort_keys=True).encode()).hexdigest()[:8]
        return f"{name}_{digest}"


def defaults_table() -> dict:
    """Every default a cell trains and evaluates with (`defaults`: training per modality, input sizes, C grids,
    bootstrap), as JSON: part of each cell's id, so a grid begun under other defaults (an upgrade, a tuned
    recipe) is never resumed with cells trained by them, and written beside the grid (defaults.json)."""
    from .. import defaults

    return json.loads(json.dumps({k: v for k, v in vars(defaults).items() if k.isupper()}, sort_keys=True))


def short(spec: str) -> str:
    """A dataset spec's last name (medmnist:organamnist -> organamnist, folder:a/b -> b); weights
    (imagenet:…) and specs that wrap another spec (shift:gamma:medmnist:…) whole."""
    scheme, sep, rest = spec.partition(":")
    if sep and (scheme not in SCHEMES or ":" in rest):
        return spec
    return Path(rest if sep else spec).name or spec


def grid(config: ExperimentConfig) -> list[Cell]:
    from ..strategies import STRATEGIES

    cells = []
    for target in config.targets:
        for i, backbone in enumerate(config.backbones):
            for strategy in config.strategies:
                tags = STRATEGIES[strategy]
                if i and not tags.uses_backbone:
                    continue  # a logistic-regression baseline is the same whatever the backbone: run it once
                if not tags.accepts(backbone):
                    continue  # e.g. partial on a linear model: no stages to unfreeze
                sources = [s for s in config.sources if s != NO_SOURCE] if tags.needs_source() else [NO_SOURCE]
                levels = config.dp if tags.dp_sgd else [DP_NONE]  # no DP-SGD: once, without DP, as a reference
                for source in sources:
                    for budget in config.budgets:
                        cells += [Cell(target, source, backbone, strategy, budget, seed, dp) for dp in levels
                                  for seed in config.seeds]
    return [cell for cell in cells if not any(skipped(cell, entry) for entry in config.skip)]


def skipped(cell: Cell, entry: dict) -> bool:
    """Whether `cell` matches every axis the skip entry names (a list value: any of its values)."""
    for key, value in entry.items():
        values = value if isinstance(value, list) else [value]
        if str(getattr(cell, key)) not in [str(v) for v in values]:
            return False
    return True


def settings_of(config: ExperimentConfig) -> dict:
    """What changes a cell's result besides its coordinates: training, the columns read, the positive class,
    operating point, calibration, bootstrap and unlabelled folders (the data root and keep_weights do not).
    A setting at its default is left out, so a grid begun before it was part of the id keeps its cell ids;
    any other value is another cell, so a grid whose settings changed is refused, never resumed with its
    old results."""
    settings = {"train": config.train.model_dump(), "target_column": config.target_column,
                "group_column": config.group_column}
    fields = type(config).model_fields
    for name in ("text_column", "resplit", "id_column", "drop_columns", "positive", "threshold", "calibrate",
                 "n_boot", "unlabelled"):
        value = getattr(config, name)
        if value != fields[name].default:
            settings[name] = sorted(value) if name == "drop_columns" else value
    return settings
