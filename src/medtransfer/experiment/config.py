"""The experiment YAML, validated: unknown keys and bad values are named with what is allowed."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..config_files import load_yaml_config, seed_list
from ..data import parse_budget
from ..errors import MedTransferError

NO_SOURCE = "none"
DP_NONE = "none"  # the dp axis value of a cell trained without differential privacy


class TrainSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    epochs: int | None = Field(None, ge=1)
    lr: float | None = Field(None, gt=0)
    batch_size: int | None = Field(None, ge=1)
    patience: int | None = Field(None, ge=1)
    augment: bool | None = None
    image_size: Annotated[int, Field(ge=8)] | Literal["native"] | None = None
    source_epochs: int | None = Field(None, ge=1)
    class_weight: Literal["none", "balanced"] | None = None
    sampler: Literal["none", "balanced"] | None = None
    layer_decay: Annotated[float, Field(gt=0, le=1)] | Literal["flat"] | None = None  # None: the modality's default
    precision: Literal["auto", "bf16", "fp32"] | None = None
    channels_last: bool | None = None
    compile: bool | None = None


class ExperimentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    targets: list[str] = Field(min_length=1)
    sources: list[str] = [NO_SOURCE]
    backbones: list[str | None] = [None]
    strategies: list[str] = Field(min_length=1)
    budgets: list[str | int] = ["all"]
    # Differential privacy as a grid axis (the privacy-utility curve): "none" and/or --dp values such as
    # "epsilon=1"; strategies that cannot train by DP-SGD (tag dp_sgd) run once, without DP, as references.
    dp: list[str] = [DP_NONE]
    seeds: int | list[int] = 3
    # Each seed also redraws the target's train/val/test split (repeated hold-out): for cohorts so
    # small that one fixed test split decides the comparison (Switzerland has 4 test patients without disease).
    resplit: bool = False
    train: TrainSettings = TrainSettings()
    data_root: str | None = None
    target_column: str | None = None  # csv: targets
    group_column: str | None = None
    id_column: str | None = None
    drop_columns: list[str] = []
    text_column: str | None = None  # text-csv: targets
    # More unlabelled images per image target, as `transfer --unlabelled`: {target spec: folder:PATH}.
    unlabelled: dict[str, str] = {}
    # The clinical evaluation of every cell (see `medtransfer transfer --help`), chosen on validation.
    positive: str | None = None
    threshold: str | float | None = None
    calibrate: Literal["none", "temperature", "platt", "isotonic"] = "none"
    keep_weights: bool = False  # cells keep predictions and metrics; weights only on request
    n_boot: int = Field(1000, ge=0)
    # Cells left out of the full cross product, each entry a partial cell: {source: X, strategy: full} skips
    # every full cell from X (a value may be a list). For the pairs a grid cannot afford, e.g. fine-tuning
    # the largest source at its native size on CPUs, while its cheap linear probe stays in the same report.
    skip: list[dict[str, str | int | list[str | int]]] = []

    @field_validator("threshold")
    @classmethod
    def known_rule(cls, rule):
        from ..evaluation.threshold import check_rule_syntax
        try:
            check_rule_syntax(rule)
        except MedTransferError as exc:
            raise ValueError(str(exc).replace(" (option --threshold)", "")) from None
        return rule

    @field_validator("name")
    @classmethod
    def plain_name(cls, name: str) -> str:
        """The name becomes the folder experiments/<name>: a path here would write somewhere else."""
        if "/" in name or "\\" in name or ".." in name or "\0" in name or name.strip() in ("", "."):
            raise ValueError("must be a plain name such as heart-sites, not a path (no /, \\ or ..); "
                             "choose the folder with --out")
        return name

    @field_validator("strategies")
    @classmethod
    def known_strategies(cls, names: list[str]) -> list[str]:
        from ..strategies import STRATEGIES
        bad = [n for n in names if n not in STRATEGIES]
        if bad:
            raise ValueError(f"unknown strategy {bad[0]!r}; choose from {', '.join(sorted(STRATEGIES))}")
        return names

    @field_validator("budgets")
    @classmethod
    def valid_budgets(cls, budgets: list) -> list[str]:
        for b in budgets:
            try:
                parse_budget(str(b))
            except MedTransferError as exc:
                raise ValueError(str(exc)) from None
        return [str(b) for b in budgets]

    @field_validator("dp", mode="before")
    @classmethod
    def dp_levels(cls, levels) -> list[str]:
        """Each entry a --dp value (or none), checked now; kept as written, since it names the cells."""
        from ..training.privacy import dp_levels
        return dp_levels(levels, error=ValueError)

    @field_validator("seeds")
    @classmethod
    def seed_list(cls, seeds) -> list[int]:
        return seed_list(seeds)

    @model_validator(mode="after")
    def skip_names_grid_values(self):
        """Each skip entry names only grid axes, with values the grid has: a typo skips nothing silently."""
        axes = {"target": self.targets, "source": self.sources, "backbone": self.backbones,
                "strategy": self.strategies, "budget": self.budgets, "dp": self.dp}
        for entry in self.skip:
            if not entry:
                raise ValueError("skip: an empty entry would skip every cell; name an axis, e.g. {strategy: full}")
            for key, value in entry.items():
                if key not in axes:
                    raise ValueError(f"skip: unknown key {key!r}; allowed: {', '.join(axes)}")
                for v in value if isinstance(value, list) else [value]:
                    if str(v) not in [str(a) for a in axes[key]]:
                        raise ValueError(f"skip: {key} {v!r} is not in the grid's {key}s "
                                         f"({', '.join(str(a) for a in axes[key])})")
        return self

    @model_validator(mode="after")
    def unlabelled_for_targets(self):
        """Each unlabelled folder belongs to a target of the grid: a typo would add nothing, silently."""
        for target, folder in self.unlabelled.items():
            if target not in self.targets:
                raise ValueError(f"unlabelled: {target!r} is not one of the targets ({', '.join(self.targets)})")
            if not folder.startswith("folder:"):
                raise ValueError(f"unlabelled: {target}: {folder!r} is not a folder: spec; give folder:<path>")
        return self

    @model_validator(mode="after")
    def sources_for_transfer(self):
        from ..strategies import STRATEGIES
        needs = [s for s in self.strategies if STRATEGIES[s].needs_source()]
        if needs and all(s == NO_SOURCE for s in self.sources):
            raise ValueError(f"strategy {needs[0]!r} needs a source: list one under sources")
        return self


def load_config(path: Path) -> tuple[ExperimentConfig, str]:
    return load_yaml_config(path, ExperimentConfig, "experiment config", "name, targets, strategies",
                            lambda loc: ExperimentConfig.model_fields if len(loc) == 1 else TrainSettings.model_fields)
