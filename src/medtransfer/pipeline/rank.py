"""Rank candidate sources for a target *before* any fine-tuning, one straight line: target loaded once
-> for each source: the source model resolved exactly as `transfer` resolves it (a source dataset
pretrained once and cached by the same pipeline), its frozen backbone features on the target's budgeted
labelled training examples -> LogME, and LEEP / NCE where the source has a classifier head with known
classes -> a table sorted by LogME. Optionally checked against an experiment grid: Kendall's tau
between each score and the validation-chosen fine-tuned test AUC of each source, and between each score
and the source's linear-probe test AUC (what the scores model: a linear layer on the frozen features).

Why: fine-tuning every candidate source to find the best one costs a grid; these scores cost one
forward pass over the few labelled target examples per source (and the features are cached, so a
later linear probe of the same source on the same examples reads them back)."""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace

from ..data import TaskDataset, apply_budget, check_options_used, is_dataset_spec, parse_budget, require_classes
from ..errors import MedTransferError
from ..evaluation import grid_choice_key
from ..evaluation.transferability import leep, logme, nce
from ..models.backbones import spec_for
from ..models.checkpoint import read_meta
from ..models.inference import extract_features, predict_proba
from ..models.sources import SLICES, STACK, Source, check_compatible, fit_source, run_folder, stack_members
from ..progress import SILENT, Progress
from ..runs import check_writable, commit_dir, staging_dir, write_json
from ..strategies import STRATEGIES, get_strategy
from ..training.loop import resolve_accelerator
from .multi_source import is_multi_source, parse_multi_spec
from .request import DataOptions, TransferRequest, check_accelerator, check_image_size, check_int
from .source import load_source_data, resolve_source, source_encoder

SCORES = ("logme", "leep", "nce")
VIEW_STRATEGY = "linear-probe"  # how rank sees a source: its frozen backbone (and head), as a linear probe does
SINGLE_LABEL = ("binary", "multiclass")


@dataclass
class RankRequest:
    data: str  # the target dataset spec
    sources: list[str]  # candidate sources, each as `transfer --source` takes it
    budget: str | int | None = None  # labelled target training examples scored on, drawn as transfer draws them
    seed: int = 0
    loading: DataOptions = field(default_factory=DataOptions)
    image_size: int | None = None
    backbone: str | None = None  # the architecture a source dataset is pretrained with
    source_epochs: int | None = None  # epochs when a source dataset is pretrained first
    accelerator: str = "auto"
    against: str | Path | None = None  # an experiment folder whose results.csv the scores are checked against
    out: str | Path | None = None  # where rank.json and rank.md go (None: nothing written)
    overwrite: bool = False
    progress: Progress = SILENT

    def __post_init__(self):
        if not isinstance(self.data, str) or not self.data:
            raise MedTransferError(f"data must be a dataset spec such as heart:hungary, got {self.data!r} (--data)")
        if isinstance(self.sources, str) or not all(isinstance(s, str) and s.strip() for s in self.sources or []):
            raise MedTransferError(f"sources must be a list of source specs, got {self.sources!r} (--sources)")
        self.sources = [s.strip() for s in self.sources]
        if not self.sources:
            raise MedTransferError("no sources to rank: give at least one, e.g. --sources heart:cleveland,heart:va "
                                   "(run folders, weights files, imagenet:…, timm:…, multi:… or source datasets)")
        twice = sorted({s for s in self.sources if self.sources.count(s) > 1})
        if twice:
            raise MedTransferError(f"source {twice[0]!r} is given twice in --sources; give each source once")
        check_int("seed", self.seed, 0, "--seed", optional=False)
        check_int("source_epochs", self.source_epochs, 1, "--source-epochs")
        check_image_size(self.image_size)
        check_accelerator(self.accelerator)
        if parse_budget(self.budget) == 0:
            raise MedTransferError("rank scores sources on labelled target examples, so --budget 0 is refused; give "
                                   "a budget such as 20, or leave it out to use every training label")
        for spec in self.sources:
            check_source_spec(spec)
        datasets = [s for s in self.sources if is_dataset_spec(s)]
        check_options_used([self.data, *datasets], **self.loading.columns())

    def transfer_request(self, source: str) -> TransferRequest:
        """The request `transfer` would get for this source (how its model is resolved and cached)."""
        return TransferRequest(self.data, VIEW_STRATEGY, source, budget=self.budget, seed=self.seed,
                               backbone=self.backbone, image_size=self.image_size, source_epochs=self.source_epochs,
                               loading=self.loading, accelerator=self.accelerator, progress=self.progress)


def check_source_spec(spec: str) -> None:
    """Refuse a source that names nothing (a typo) before any work: one line, not a row of the table."""
    if is_dataset_spec(spec) or run_folder(spec) is not None or Path(spec).expanduser().is_file():
        return
    if is_multi_source(spec):
        parse_multi_spec(spec)
        return
    if spec.startswith((STACK, SLICES)):  # each member named right; what they cannot hold is the row's reason
        for member in stack_members(spec) if spec.startswith(STACK) else [spec[len(SLICES):]]:
            if member:
                check_source_spec(member)
        return
    if spec.startswith("imagenet:"):
        from ..models.imagenet import IMAGENET_SOURCES
        if spec.partition(":")[2] not in IMAGENET_SOURCES:
            raise MedTransferError(f"unknown source {spec!r}: known ImageNet models are "
                                   f"{', '.join('imagenet:' + n for n in sorted(IMAGENET_SOURCES))}")
        return
    if spec.startswith("timm:") and spec.partition(":")[2]:
        return
    raise MedTransferError(f"unknown source {spec!r}: give a run folder, a weights file, imagenet:<name>, timm:<name>, "
                           "multi:<dataset>,<dataset>,…, stack:<source>+<source>+…, slices:<source> or a source dataset (medtransfer "
                           "datasets lists the schemes)")


@dataclass
class SourceScore:
    source: str
    description: str | None = None
    logme: float | None = None
    leep: float | None = None  # None: the source has no classifier head with known classes (or not single-label)
    nce: float | None = None
    n_features: int | None = None  # width of the frozen features LogME read
    seconds: float = 0.0  # resolving the source (pretraining it when not cached), features and scores
    refused: str | None = None  # why the source cannot run on this target (then no scores)
    note: str | None = None  # why LEEP / NCE are missing
    grid_auc: float | None = None  # --against: the validation-chosen fine-tuned test AUC of this source
    grid_strategy: str | None = None  # --against: the strategy (and backbone) that AUC is from
    grid_seeds: int | None = None
    probe_auc: float | None = None  # --against: the source's linear-probe test AUC in the grid (seed mean)


@dataclass
class RankResult:
    data: str
    task: str
    classes: list[str]
    budget: str | int | None
    seed: int
    n_train: int  # labelled target training examples the scores read
    scores: list[SourceScore]  # sorted: by LogME (best first), then the refused sources in the order given
    against: dict | None = None  # experiment, budget, tau per score (with the chosen and the probe AUCs)
    seconds: float = 0.0
    out: Path | None = None

    def to_dict(self) -> dict:
        data = asdict(self)
        data["out"] = str(self.out) if self.out else None
        return data


def rank(request: RankRequest, write_report=None) -> RankResult:
    """Score every source on the target's budgeted training examples; `write_report(result, folder)`
    writes the human-readable report beside rank.json when saving."""
    started = time.perf_counter()
    out = Path(request.out) if request.out is not None else None
    if out is not None:
        check_writable(out, request.overwrite)
    grid = None
    if request.against:
        grid = grid_aucs(Path(request.against), request.data, request.budget)  # a wrong folder is named first
        request = as_grid_ran(request, Path(request.against))
    target = request.loading.load(request.data)
    require_classes(target, request.data)
    n_train = len(apply_budget(target, request.budget, request.seed).train)  # a budget too large fails here
    targets = {None: target}  # the target as each distinct tabular source encoding sees it (images: once)
    task = request.progress.start(f"ranking {len(request.sources)} sources on {request.data}", len(request.sources))
    scores = []
    for spec in request.sources:
        task.update(description=f"ranking: {spec}")
        scores.append(score_source(request, spec, targets))
        task.update(advance=1)
    task.close()
    scores = sorted((s for s in scores if s.refused is None), key=lambda s: -s.logme) + \
        [s for s in scores if s.refused is not None]
    against = None
    if grid is not None:
        for s in scores:
            s.grid_auc, s.grid_strategy, s.grid_seeds = grid["aucs"].get(s.source, (None, None, None))
            s.probe_auc = grid["probe"].get(s.source, (None,))[0]
        against = {"experiment": str(request.against), "budget": grid["budget"],
                   "tau": {name: kendall(scores, name) for name in SCORES},
                   "tau_probe": {name: kendall(scores, name, "probe_auc") for name in SCORES},
                   "missing": [s.source for s in scores if s.refused is None and s.grid_auc is None]}
    result = RankResult(request.data, target.task, target.classes, request.budget, request.seed, n_train, scores,
                        against, round(time.perf_counter() - started, 3))
    if out is not None:
        stage = staging_dir(out)
        write_json(stage / "rank.json", result.to_dict())
        if write_report is not None:
            write_report(result, stage)
        commit_dir(stage, out)
        result.out = out
    return result


def score_source(request: RankRequest, spec: str, targets: dict) -> SourceScore:
    """One source's row: its scores, or the one-line reason it cannot run on this target."""
    started = time.perf_counter()
    transfer = request.transfer_request(spec)
    source_data = load_source_data(transfer)
    if source_data is not None:
        require_classes(source_data, spec)
    try:
        target = encoded_target(request, spec, source_data, targets)
        features = target.info.get("features")
        if source_data is not None:  # what its pretraining would build, checked before pretraining it
            planned = spec_for(source_data, request.image_size)
            check_compatible(SimpleNamespace(spec=planned), target.modality, target.in_channels, features, adapt=True,
                             rate=target.info.get("rate"))
        source = resolve_source(transfer, get_strategy(VIEW_STRATEGY), target, source_data)
        source = fit_source(source, target.modality, target.in_channels)
        check_compatible(source.model, target.modality, target.in_channels, features, rate=target.info.get("rate"))
        row = scores_of(request, spec, source, head_task(spec, source_data), target)
    except MedTransferError as exc:
        row = SourceScore(spec, refused=str(exc))
    row.seconds = round(time.perf_counter() - started, 3)
    return row


def scores_of(request: RankRequest, spec: str, source: Source, head: str | None, target: TaskDataset) -> SourceScore:
    """LogME on the source's frozen features of the budgeted training examples; LEEP and NCE from its
    head's probabilities when it has a single-label head with known classes (`head`: that head's task)."""
    model = source.model.requires_grad_(False)  # frozen, never trained here: its outputs reuse the cached features
    model.to(resolve_accelerator(request.accelerator))
    try:
        train = apply_budget(target, request.budget, request.seed).train
        y = train.y.numpy()
        f = extract_features(model, train.x)
        row = SourceScore(spec, source.description, logme=logme(f, y, target.task), n_features=int(f.shape[1]))
        if target.task not in SINGLE_LABEL:
            row.note = "no LEEP / NCE: they need a single-label target"
        elif not source.classes or head not in SINGLE_LABEL:
            row.note = ("no LEEP / NCE: the source has no single-label classifier head with known classes "
                        "(ImageNet, timm, self-supervised, multi-dataset, stacked and slices: sources give features only)")
        else:
            prob = predict_proba(model, train.x, head)
            row.leep, row.nce = leep(prob, y), nce(prob.argmax(axis=1), y)
    finally:
        model.cpu()
    return row


def encoded_target(request: RankRequest, spec: str, source_data: TaskDataset | None, targets: dict) -> TaskDataset:
    """The target as `transfer` loads it for this source: encoded like a tabular source (once per distinct
    encoding); images and sources without an encoding share the one target loaded at the start."""
    encoder = source_encoder(spec, source_data)
    if encoder is None:
        return targets[None]
    key = json.dumps(encoder.to_dict(), sort_keys=True, default=str)
    if key not in targets:
        targets[key] = request.loading.load(request.data, encoder=encoder)
    return targets[key]


def head_task(spec: str, source_data: TaskDataset | None) -> str | None:
    """The task of the source model's own head: its dataset's, or the one its run folder records."""
    if source_data is not None:
        return source_data.task
    folder = run_folder(spec)
    return read_meta(folder).get("task") if folder is not None else None


def kendall(scores: list[SourceScore], name: str, auc: str = "grid_auc") -> dict:
    """Kendall's tau (tau-b) between a score and the grid's AUCs (`auc`: the validation-chosen ones, or
    `probe_auc`), over the sources that have both."""
    from scipy.stats import kendalltau

    pairs = [(getattr(s, name), getattr(s, auc)) for s in scores
             if getattr(s, name) is not None and getattr(s, auc) is not None]
    entry = {"tau": None, "p": None, "n": len(pairs)}
    if len(pairs) < 2:
        entry["why"] = "fewer than two sources have both this score and a grid AUC"
        return entry
    x, y = zip(*pairs)
    tau, p = kendalltau(x, y)
    if not math.isfinite(tau):
        entry["why"] = "undefined: the scores or the AUCs are all equal"
        return entry
    entry.update(tau=float(tau), p=float(p))
    return entry


GRID_SETTINGS = (("image_size", "--image-size"), ("source_epochs", "--source-epochs"))


def as_grid_ran(request: RankRequest, folder: Path) -> RankRequest:
    """The request with the settings the experiment pretrained its sources with (its config.yaml: image size,
    source epochs, backbone), so tau compares scores of the very source models the grid fine-tuned. A setting
    given here that differs from the grid's is refused: the tau would be about other models."""
    import yaml

    path = folder / "config.yaml"
    try:
        config = yaml.safe_load(path.read_text()) if path.is_file() else None
    except (yaml.YAMLError, OSError, UnicodeDecodeError):
        config = None
    if not isinstance(config, dict):  # results.csv alone cannot say how the sources were made
        raise MedTransferError(f"{path} is missing or unreadable: without the experiment's config (image size, "
                               "source epochs, backbones) the ranked sources may not be the ones it fine-tuned; "
                               "restore the config.yaml the experiment wrote (--against)")
    train = config.get("train") if isinstance(config.get("train"), dict) else {}
    changes = {}
    for name, flag in GRID_SETTINGS:
        ran, given = train.get(name), getattr(request, name)
        if given is None:
            changes[name] = ran
        elif str(given) != str(ran):
            shown = "its default" if ran is None else ran
            raise MedTransferError(f"{flag} {given}, but the experiment in {folder} pretrained its sources with "
                                   f"{name.replace('_', ' ')} {shown}; leave {flag} out to rank the sources it "
                                   "fine-tuned (--against)")
    backbones = config.get("backbones") or []
    if request.backbone is None and len(backbones) == 1:
        changes["backbone"] = backbones[0]
    elif request.backbone is not None and backbones and request.backbone not in backbones:
        raise MedTransferError(f"--backbone {request.backbone}, but the experiment in {folder} ran "
                               f"{', '.join(map(str, backbones))}; give one of them (--against)")
    return replace(request, **changes)


def grid_aucs(folder: Path, data: str, budget) -> dict:
    """Per source of an experiment, at `budget` on target `data`: under "aucs" the validation-chosen method,
    chosen by the experiment report's own rule (`grid_choice_key` over the non-baseline strategies; never by
    test), and its seed-mean test AUC; under "probe" the same for its linear-probe cells only (the view the
    scores take). Read before any ranking, so a wrong folder, target or budget fails at once."""
    import pandas as pd

    path = folder / "results.csv"
    if not path.is_file():
        raise MedTransferError(f"{folder} has no results.csv (--against): give an experiment folder written by "
                               "`medtransfer experiment CONFIG.yaml`")
    rows = pd.read_csv(path)
    needed = {"target", "source", "strategy", "budget", "val_auc", "test_auc"}
    missing = sorted(needed - set(rows.columns))
    if missing:
        raise MedTransferError(f"{path} has no column {', '.join(missing)}: not an experiment's results.csv "
                               "(--against)")
    targets = sorted(rows["target"].dropna().astype(str).unique())
    rows = rows[rows["target"].astype(str) == data]
    if rows.empty:
        raise MedTransferError(f"{path} holds no cell of target {data} (it has {', '.join(targets) or 'none'}); "
                               "rank the target the experiment ran (--against)")
    wanted = parse_budget(budget)
    same = rows["budget"].map(lambda b: parse_budget(None if pd.isna(b) else str(b)) == wanted)
    if not same.any():
        budgets = sorted(rows["budget"].astype(str).unique())
        raise MedTransferError(f"{path} has no cell of {data} at budget {budget if budget is not None else 'all'} "
                               f"(its budgets: {', '.join(budgets)}); give one of them as --budget")
    rows = rows[same & rows["test_auc"].notna() & rows["source"].notna()]
    rows = rows[rows["strategy"].map(lambda s: not getattr(STRATEGIES.get(s), "baseline", False))]
    has_loss = "val_log_loss" in rows.columns
    method = ["strategy", "backbone"] if "backbone" in rows.columns else ["strategy"]
    aucs, probe = {}, {}
    for source, cells in rows.groupby(rows["source"].astype(str)):
        candidates = []
        for key, group in cells.groupby(method, dropna=False):
            val = group["val_auc"].astype(float).mean()  # mean over the seeds that recorded one
            if not math.isfinite(val):
                continue
            loss = group["val_log_loss"].astype(float).mean() if has_loss else math.nan
            key = key if isinstance(key, tuple) else (key,)
            name = "/".join(str(k) for k in key if not pd.isna(k))
            candidates.append((grid_choice_key(val, loss, name), name,
                               float(group["test_auc"].astype(float).mean()), len(group), key[0]))
        probes = [c for c in candidates if c[4] == VIEW_STRATEGY]
        for chosen, among in ((aucs, candidates), (probe, probes)):
            if among:
                _, name, auc, seeds, _ = min(among)
                chosen[source] = (auc, name, seeds)
    return {"budget": "all" if wanted is None else str(budget), "aucs": aucs, "probe": probe}
