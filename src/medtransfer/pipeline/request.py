"""The typed requests the pipelines run on. The API, the CLI and experiment grids build one of these
instead of passing two dozen keyword arguments along; each option has exactly one name."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from numbers import Integral, Real
from pathlib import Path

from ..data import TaskDataset, check_options_used, is_dataset_spec, load_dataset, reads
from ..defaults import N_BOOT, TRAINING
from ..errors import MedTransferError
from ..evaluation.calibration import CALIBRATIONS
from ..evaluation.threshold import check_rule_syntax
from ..models.backbones import pick_size
from ..progress import SILENT, Progress
from ..training.distributed import check_devices
from ..training.loop import (ACCELERATORS, FLAT, IMBALANCE, PRECISIONS, TrainConfig, layer_decay_value,
                             resolve_accelerator)
from ..training.privacy import DPConfig, parse_dp


def check_int(name: str, value, minimum: int, flag: str | None = None, optional: bool = True) -> None:
    """The one check of an integer option: a whole number (not a bool) of at least `minimum`; None
    (the default) passes when `optional`. The error names the option and its command-line flag."""
    if value is None and optional:
        return
    if isinstance(value, Integral) and not isinstance(value, bool) and value >= minimum:
        return
    where = f" ({flag})" if flag else ""
    raise MedTransferError(f"{name} must be a whole number >= {minimum}, got {value!r}{where}")


def check_positive(name: str, value, flag: str | None = None) -> None:
    """A finite number > 0 (None: the default)."""
    if value is None:
        return
    if isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value) and value > 0:
        return
    where = f" ({flag})" if flag else ""
    raise MedTransferError(f"{name} must be a number > 0, got {value!r}{where}")


def check_accelerator(value) -> None:
    if value not in ("auto", *ACCELERATORS):
        raise MedTransferError(f"accelerator must be one of auto, {', '.join(ACCELERATORS)}, got {value!r} (--device)")


def check_choice(name: str, value, choices, flag: str) -> None:
    """None (the default) or one of `choices`."""
    if value is not None and value not in choices:
        raise MedTransferError(f"{name} must be one of {', '.join(choices)}, got {value!r} ({flag})")


@dataclass(frozen=True)
class DataOptions:
    """How dataset specs are read: the MedMNIST data root, the label, group and id columns of tables,
    columns to leave out."""
    data_root: str | Path | None = None
    target: str | None = None  # label column (csv:, manifest:)
    group: str | None = None  # patient/group column (csv:, manifest:) or DICOM tag (folder:)
    id: str | None = None  # identifier column (csv:): kept as the row's id, never a feature
    drop: tuple[str, ...] = ()  # columns that are not features (csv:)
    text: str | None = None  # the column holding the texts (text-csv:)

    def __post_init__(self):
        drop = (self.drop,) if isinstance(self.drop, str) else tuple(self.drop or ())
        object.__setattr__(self, "drop", drop)

    def load(self, spec: str, encoder=None, split_seed: int = 0) -> TaskDataset:
        return load_dataset(spec, data_root=self.data_root, target=self.target, group=self.group, id=self.id,
                            drop=self.drop, encoder=encoder, split_seed=split_seed, text=self.text)

    def columns(self) -> dict:
        """The column options by name, as `check_options_used` takes them."""
        return dict(target=self.target, group=self.group, id=self.id, drop=self.drop, text=self.text)

    def used_by(self, *specs: str | None) -> "DataOptions":
        """These options without a label or group column that none of `specs` reads (a grid-wide
        target column for a cell of heart: sites, a csv: target's column for a heart: source): a request
        refuses an option none of its datasets reads, since it would be silently ignored."""
        specs = [s for s in specs if s and is_dataset_spec(s)]
        used = frozenset().union(*(reads(s) for s in specs))
        return replace(self, target=self.target if "target" in used else None,
                       group=self.group if "group" in used else None,
                       id=self.id if "id" in used else None, drop=self.drop if "drop" in used else (),
                       text=self.text if "text" in used else None)


def layer_decay_option(text: str | None) -> float | str | None:
    """--layer-decay as typed: a number (checked by TrainOptions) or flat; None keeps the modality's default."""
    if text is None or text.strip().lower() == FLAT:
        return None if text is None else FLAT
    try:
        return float(text)
    except ValueError:
        raise MedTransferError(f"--layer-decay must be a number in (0, 1] or {FLAT}, got {text!r}") from None


@dataclass(frozen=True)
class TrainOptions:
    """Overrides of the per-modality training defaults (`defaults.TRAINING`); None keeps the default."""
    epochs: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    patience: int | None = None
    augment: bool | None = None
    class_weight: str | None = None  # none | balanced (default: none, see defaults.TRAINING)
    sampler: str | None = None  # none | balanced
    layer_decay: float | str | None = None  # full / lp-ft / l2-sp: a decay in (0, 1], or "flat" (0.1 x the head)
    precision: str | None = None  # auto | bf16 | fp32
    channels_last: bool | None = None
    compile: bool | None = None
    devices: int | None = None  # data-parallel processes per node (DDP); batch_size stays the global batch
    num_nodes: int | None = None

    def __post_init__(self):
        # Checked once, here, for every door (API, CLI, grids): epochs 0 would return the untrained model
        # as if trained, batch size 0 divides by zero, lr 0 trains nothing.
        check_int("epochs", self.epochs, 1, "--epochs")
        check_int("batch_size", self.batch_size, 1, "--batch-size")
        check_int("patience", self.patience, 1, "--patience")
        check_positive("lr", self.lr, "--lr")
        if self.augment not in (None, True, False):
            raise MedTransferError(f"augment must be true or false, got {self.augment!r}")
        check_choice("class_weight", self.class_weight, IMBALANCE, "--class-weight")
        check_choice("sampler", self.sampler, IMBALANCE, "--sampler")
        check_choice("precision", self.precision, PRECISIONS, "--precision")
        layer_decay_value(self.layer_decay)
        for name in ("channels_last", "compile"):
            if getattr(self, name) not in (None, True, False):
                raise MedTransferError(f"{name} must be true or false, got {getattr(self, name)!r}")
        check_int("devices", self.devices, 1, "--devices")
        check_int("num_nodes", self.num_nodes, 1, "--num-nodes")
        if self.world > 1 and self.compile:
            raise MedTransferError(f"--compile runs on one device (its eager fall-back is per process), and this run "
                                   f"asks for {self.world} processes; drop --compile or --devices / --num-nodes")
        if self.world > 1 and self.batch_size is not None and self.batch_size // self.world < 2:
            raise MedTransferError(f"--batch-size {self.batch_size} is the global batch: over {self.world} devices it "
                                   "leaves fewer than 2 examples per device; raise it or use fewer --devices")

    @property
    def world(self) -> int:
        """Processes of a data-parallel run: devices x nodes (1: one process, no DDP)."""
        return (self.devices or 1) * (self.num_nodes or 1)

    def config(self, row: str, seed: int, accelerator: str = "auto", progress: bool = True) -> TrainConfig:
        """The loop's settings: the defaults of `row` (a modality, or "ssl") with these overrides."""
        values = dict(TRAINING[row])
        values.update({k: v for k, v in vars(self).items() if v is not None})
        values["layer_decay"] = layer_decay_value(values.get("layer_decay"))
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

    def check_settings(self) -> None:
        check_int("n_boot", self.n_boot, 0, "--n-boot", optional=False)
        check_accelerator(self.accelerator)
        check_devices(self.training.devices or 1, self.training.num_nodes or 1, resolve_accelerator(self.accelerator))


def check_image_size(value) -> None:
    pick_size(value, 0)  # the one rule: None (the default) or a whole number of pixels >= MIN_IMAGE_SIZE


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
    positive: str | None = None  # binary: the positive class (None: the rule of data/positive.py)
    threshold: str | float | None = None  # the operating-point rule (None: 0.5 binary, argmax multiclass)
    calibrate: str = "none"  # none | temperature | platt | isotonic, fitted on validation
    dp: DPConfig | str | dict | None = None  # --dp "epsilon=E,delta=D,clip=C": DP-SGD (Opacus); None: no DP
    unlabelled: str | None = None  # folder:<path>: more target images without labels (`pipeline.unlabelled`)

    def __post_init__(self):
        """Every option checked before any work: a bad value is one line naming it, never a default
        silently put in its place nor a crash after training."""
        self.dp = parse_dp(self.dp)
        if not isinstance(self.data, str) or not self.data:
            raise MedTransferError(f"data must be a dataset spec such as heart:hungary, got {self.data!r} (--data)")
        if self.source is not None and not isinstance(self.source, str):
            self.source = str(self.source)
        check_int("seed", self.seed, 0, "--seed", optional=False)
        check_int("split_seed", self.split_seed, 0, "--split-seed", optional=False)
        check_int("source_epochs", self.source_epochs, 1, "--source-epochs")
        check_image_size(self.image_size)
        self.check_settings()
        if self.positive is not None and (not isinstance(self.positive, str) or not self.positive):
            raise MedTransferError(f"positive must be a class name, got {self.positive!r} (--positive)")
        if self.unlabelled is not None and (not isinstance(self.unlabelled, str) or not self.unlabelled):
            raise MedTransferError(f"unlabelled must be a spec such as folder:./more_scans, got {self.unlabelled!r} "
                                   "(--unlabelled)")
        check_rule_syntax(self.threshold)
        check_choice("calibrate", self.calibrate, CALIBRATIONS, "--calibrate")
        sources = [self.source] if self.source and is_dataset_spec(self.source) else []
        check_options_used([self.data, *sources], **self.loading.columns())


@dataclass(frozen=True)
class SSLOptions:
    """Self-supervised settings (None: the method's default); see `ssl.pretrain_ssl`."""
    temperature: float | None = None
    queue_size: int | None = None
    momentum: float | None = None
    views: object = None  # ViewConfig fields as a dict or ["name=value", ...]
    monitor: bool = True
    limit: int | None = None

    def __post_init__(self):
        check_positive("temperature", self.temperature, "--temperature")
        check_int("queue_size", self.queue_size, 1, "--queue-size")
        check_int("limit", self.limit, 1, "--limit")
        if self.momentum is not None and not (isinstance(self.momentum, Real) and 0 <= self.momentum < 1):
            raise MedTransferError(f"momentum must be a number in [0, 1), got {self.momentum!r} (--momentum)")


@dataclass
class PretrainRequest(RunSettings):
    data: list[str]  # one labelled dataset (supervised), or image datasets to pool (simclr, moco)
    method: str = "supervised"
    backbone: str | None = None
    seed: int = 0
    image_size: int | None = None
    ssl: SSLOptions = field(default_factory=SSLOptions)

    def __post_init__(self):
        check_int("seed", self.seed, 0, "--seed", optional=False)
        check_image_size(self.image_size)
        self.check_settings()


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

    def __post_init__(self):
        check_int("seed", self.seed, 0, "--seed", optional=False)
        check_int("n_perm", self.n_perm, 0, "--permutations", optional=False)
        check_int("n_boot", self.n_boot, 0, "--n-boot", optional=False)
        check_int("max_samples", self.max_samples, 1, "--max-samples")
        check_accelerator(self.accelerator)
        check_options_used([self.source, self.target], **self.loading.columns())
