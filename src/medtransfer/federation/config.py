"""The federated YAML, validated: unknown keys and bad values are named with what is allowed."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..config_files import load_yaml_config, seed_list
from ..errors import MedTransferError

STRATEGIES = ("fedavg", "fedprox", "fedadam")  # Flower's FedAvg, FedProx and FedAdam (server/strategy.py)
ENGINES = ("simulation", "grpc")  # Flower's simulation engine (Ray), or client processes over gRPC on 127.0.0.1
TABULAR_SCHEMES = ("heart", "csv")


class FederatedConfig(BaseModel):
    """Sites, Flower strategies and the training each site runs. `epochs` of the local-only and pooled
    references defaults to rounds x local_epochs (the passes a site makes over its data in a federation)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    sites: list[str] = Field(min_length=2)
    strategies: list[Literal[STRATEGIES]] = Field(list(STRATEGIES), min_length=1)
    rounds: int = Field(20, ge=1)
    local_epochs: int = Field(2, ge=1)
    lr: float = Field(3e-3, gt=0)
    batch_size: int = Field(32, ge=1)
    weight_decay: float = Field(1e-4, ge=0)
    proximal_mu: float = Field(0.1, gt=0)  # FedProx's proximal weight mu
    server_lr: float = Field(0.03, gt=0)  # FedAdam's server learning rate eta
    server_tau: float = Field(1e-3, gt=0)  # FedAdam's adaptivity tau
    personalise_epochs: int = Field(20, ge=0)  # local fine-tuning after federation; 0: no personalised model
    personalise_lr: float | None = Field(None, gt=0)  # default: lr
    epochs: int | None = Field(None, ge=1)  # local-only and pooled references (default rounds x local_epochs)
    patience: int = Field(20, ge=1)  # early stopping of the references and of the personalisation
    backbone: str = "mlp"  # mlp, mlp:64,32 or linear (logistic regression)
    seeds: int | list[int] = 3
    split_seed: int = Field(0, ge=0)
    source: str | None = None  # a run folder or a tabular source dataset: its encoding and weights start the run
    source_epochs: int | None = Field(None, ge=1)
    engine: Literal["simulation", "grpc"] = "simulation"
    # DP-SGD at every site (Opacus), one federation per level: none, "epsilon=1", ... (the --dp syntax)
    dp: list[str] = ["none"]
    target_column: str | None = None  # csv: sites
    group_column: str | None = None
    id_column: str | None = None
    drop_columns: list[str] = []
    positive: str | None = None
    threshold: str | float | None = None  # each site's operating point, chosen on its validation split
    # (None: youden for a binary task, argmax for a multiclass one)
    n_boot: int = Field(1000, ge=0)
    data_root: str | None = None

    @field_validator("name")
    @classmethod
    def plain_name(cls, name: str) -> str:
        if "/" in name or "\\" in name or ".." in name or "\0" in name or name.strip() in ("", "."):
            raise ValueError("must be a plain name such as heart-federated, not a path; choose the folder with --out")
        return name

    @field_validator("sites")
    @classmethod
    def tabular_sites(cls, sites: list[str]) -> list[str]:
        for site in sites:
            scheme, sep, _ = site.partition(":")
            if not sep or scheme not in TABULAR_SCHEMES:
                raise ValueError(f"site {site!r} is not a table: a site is heart:<hospital> (cleveland, hungary, "
                                 "switzerland, va) or csv:<path>")
        if len(set(sites)) < len(sites):
            raise ValueError("the same site is listed twice")
        return sites

    @field_validator("strategies")
    @classmethod
    def distinct(cls, names: list[str]) -> list[str]:
        if len(set(names)) < len(names):
            raise ValueError("the same strategy is listed twice")
        return names

    @field_validator("backbone")
    @classmethod
    def tabular_backbone(cls, name: str) -> str:
        from ..models.backbones import describe
        try:
            describe(name, "tabular", 0, 1)
        except MedTransferError as exc:
            raise ValueError(str(exc)) from None
        return name

    @field_validator("threshold")
    @classmethod
    def known_rule(cls, rule):
        from ..evaluation.threshold import check_rule_syntax
        try:
            return check_rule_syntax(rule)
        except MedTransferError as exc:
            raise ValueError(str(exc).replace(" (option --threshold)", "")) from None

    @field_validator("dp", mode="before")
    @classmethod
    def dp_levels(cls, levels) -> list[str]:
        from ..training.privacy import dp_levels
        return dp_levels(levels, error=ValueError)

    @field_validator("seeds")
    @classmethod
    def seed_list(cls, seeds) -> list[int]:
        return seed_list(seeds)

    @model_validator(mode="after")
    def csv_needs_target(self):
        if any(s.startswith("csv:") for s in self.sites) and not self.target_column:
            raise ValueError("csv: sites need target_column, the label column every site's table has")
        return self

    @model_validator(mode="after")
    def private_strategies(self):
        from ..training.privacy import NONE
        if "fedprox" in self.strategies and any(level != NONE for level in self.dp):
            raise ValueError("fedprox cannot train with dp: its proximal term adds a gradient DP-SGD's per-example "
                             "clipping does not see; use strategies [fedavg, fedadam] with dp")
        return self

    @property
    def reference_epochs(self) -> int:
        return self.epochs or self.rounds * self.local_epochs


def load_federated_config(path: Path) -> tuple[FederatedConfig, str]:
    """The validated config and its text (copied into the output folder)."""
    return load_yaml_config(path, FederatedConfig, "federated config", "name, sites, strategies")
