"""The typed requests the pipelines run on. The API, the CLI and experiment grids build one of these
instead of passing two dozen keyword arguments along; each option has exactly one name."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..data import TaskDataset, load_dataset
from ..defaults import N_BOOT, TRAINING
from ..progress import SILENT, Progress
from ..training.loop import TrainConfig


@dataclass(frozen=True)
class DataOptions:
    """How dataset specs are read: the MedMNIST data root, the label and group columns of csv: tables."""
    data_root: str | Path | None = None
    target: str | None = None  # label column (csv:)
    group: str | None = None  # patient/group column (csv:)

    def load(self, spec: str, encoder=None, split_seed: int = 0) -> TaskDataset:
        return load_dataset(spec, data_root=self.data_root, target=self.target, group=self.group,
                            encoder=encoder, split_seed=split_seed)


@dataclass(frozen=True)
class TrainOptions:
    """Overrides of the per-modality training defaults (`defaults.TRAINING`); None keeps the default."""
    epochs: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    patience: int | None = None
    augment: bool | None = None

    def config(self, row: str, seed: int, accelerator: str = "auto", progress: bool = True) -> TrainConfig:
        """The loop's settings: the defaults of `row` (a modality, or "ssl") with these overrides."""
        values = dict(TRAINING[row])
        values.update({k: v for k, v in vars(self).items() if v is not None})
        return TrainConfig(seed=seed, accelerator=accelerator, progress=progress, **values)


@dataclass(frozen=True)
class Output:
    """Where a run is written: `out` (None: a fresh folder under runs/), whether an existing one may be
    replaced, whether anything is written at all, and whether the weights are kept."""
    out: str | Path | None = None
    overwrite: bool = False
    save: bool = True
    weights: bool = True


@dataclass(kw_only=True)
class RunSettings:
    """What every training pipeline shares: how data are read and trained on, where the run goes."""
    loading: DataOptions = field(default_factory=DataOptions)
    training: TrainOptions = field(default_factory=TrainOptions)
    output: Output = field(default_factory=Output)
    accelerator: str = "auto"
    n_boot: int = N_BOOT
    progress: Progress = SILENT


@dataclass
class TransferRequest(RunSettings):
    data: str  # the target dataset spec
    strategy: str = "full"
    source: str | None = None  # run folder, weights file, imagenet:/timm: weights, or a source dataset spec
    budget: str | int | None = None  # labelled target examples: 40, "5%", "all", 0
    seed: int = 0
    split_seed: int = 0  # redraws the target's split where medtransfer draws it (repeated hold-out)
    backbone: str | None = None
    image_size: int | None = None
    source_epochs: int | None = None  # epochs when a source dataset is pretrained first


@dataclass(frozen=True)
class SSLOptions:
    """Self-supervised settings (None: the method's default); see `ssl.pretrain_ssl`."""
    temperature: float | None = None
    queue_size: int | None = None
    momentum: float | None = None
    views: object = None  # ViewConfig fields as a dict or ["name=value", ...]
    monitor: bool = True
    limit: int | None = None


@dataclass
class PretrainRequest(RunSettings):
    data: list[str]  # one labelled dataset (supervised), or image datasets to pool (simclr, moco)
    method: str = "supervised"
    backbone: str | None = None
    seed: int = 0
    image_size: int | None = None
    ssl: SSLOptions = field(default_factory=SSLOptions)


@dataclass
class ShiftRequest:
    source: str
    target: str
    model: str | Path | None = None  # run folder of the source model
    loading: DataOptions = field(default_factory=DataOptions)
    seed: int = 0
    n_perm: int = 1000
    max_samples: int | None = 2000
    n_boot: int = 200
    accelerator: str = "auto"
    output: Output = field(default_factory=Output)
