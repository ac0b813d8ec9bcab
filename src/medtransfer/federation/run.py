"""A federated run from its config: every site checked, the source resolved, the Flower run (statistics,
then every strategy x seed federation and its personalisation), the references, every (site, method,
seed) scored, and the results folder: results.csv, predictions.csv, federation.json, config.yaml and
one checkpoint per federated model (models/<strategy>-seed<k>, usable by `medtransfer predict`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..data import TaskDataset
from ..data.positive import positive_class
from ..data.tabular import TabularEncoder
from ..errors import MedTransferError
from ..evaluation.threshold import parse_rule
from ..models.checkpoint import save_checkpoint
from ..pipeline import DataOptions, Output, TransferRequest
from ..pipeline.run_folder import versions
from ..pipeline.source import load_source_data, resolve_source, source_encoder
from ..progress import SILENT, Progress
from ..runs import check_writable, commit_dir, default_run_dir, staging_dir, write_json
from ..strategies import get_strategy
from ..training.privacy import NONE
from . import references
from .config import FederatedConfig
from .engines import ENGINES
from .model import load_arrays
from .references import Start
from .schedule import Federation, Schedule
from .scoring import score
from .sites import SiteData

@dataclass
class FederatedResult:
    out: Path | None
    results: pd.DataFrame  # one row per site x method x seed (results.csv)
    predictions: pd.DataFrame  # validation and test probabilities per site x method x seed (predictions.csv)
    federations: list[Federation]  # the federated models (selected round's weights), histories, predictions
    encoder: TabularEncoder  # the shared encoding
    received: list[dict]  # what the sites' clients sent: step, site, array shapes, metric keys
    summary: dict = field(default_factory=dict)  # federation.json


def run_federated(config: FederatedConfig, config_text: str = "", out: str | Path | None = None, *,
                  engine: str | None = None, overwrite: bool = False, progress: Progress = SILENT) -> FederatedResult:
    started = time.perf_counter()
    engine = engine or config.engine
    if engine not in ENGINES:
        raise MedTransferError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r} (option --engine)")
    out = Path(out) if out is not None else default_run_dir(config.name, root="federated")
    check_writable(out, overwrite)
    sites = [SiteData(spec, config.target_column, config.group_column, config.id_column, tuple(config.drop_columns),
                      config.split_seed, config.data_root) for spec in config.sites]
    own = {site.spec: site.load() for site in sites}  # every site readable before Flower starts
    check_one_task(own)
    first = own[sites[0].spec]
    positive = positive_class(first, config.positive, sites[0].spec)  # refused now, not after the training
    rule = parse_rule(config.threshold if config.threshold is not None else
                      ("youden" if first.task == "binary" else None), first.task)
    start, encoder, source_note = resolve_start(config, sites[0], first)

    federations = [Federation(name, seed, level) for name in config.strategies for level in config.dp
                   for seed in config.seeds]
    settings = {"epochs": config.local_epochs, "lr": config.lr, "batch_size": config.batch_size,
                "weight_decay": config.weight_decay, "personalise_epochs": config.personalise_epochs,
                "personalise_lr": config.personalise_lr or config.lr, "patience": config.patience,
                "proximal_mu": config.proximal_mu, "server_lr": config.server_lr, "server_tau": config.server_tau,
                "rounds": config.rounds}
    steps = (0 if encoder is not None else 1) + len(federations) * (config.rounds + 1)
    bar = progress.start(f"federated ({engine})", total=steps)
    schedule = Schedule([s.spec for s in sites], federations, config.rounds, settings, start, encoder, bar)
    try:
        ENGINES[engine](schedule, sites)
    finally:
        bar.close()
    federated_seconds = time.perf_counter() - started
    encoder = schedule.encoder

    datasets = {site.spec: site.load(encoder) for site in sites}
    predictions = {**reference_predictions(config, datasets, start, encoder, progress),
                   **federated_predictions(federations)}
    privacy = federated_privacy(federations)
    rows, frames = [], []
    for (method, seed), per_site in predictions.items():
        for site, (val_prob, test_prob) in per_site.items():
            row, frame = score(site, method, seed, datasets[site], positive, rule, val_prob, test_prob, config.n_boot)
            level, record = privacy.get((method, seed), {}).get(site, (NONE, None))
            row.update(dp=level, epsilon=record["epsilon_spent"] if record else None,
                       delta=record["delta"] if record else None)
            rows.append(row)
            frames.append(frame)
    summary = {
        "name": config.name, "engine": engine, "sites": config.sites, "strategies": config.strategies,
        "seeds": config.seeds, "rounds": config.rounds, "local_epochs": config.local_epochs,
        "personalise_epochs": config.personalise_epochs, "backbone": config.backbone,
        "architecture": schedule.architecture, "source": config.source, "source_description": source_note,
        "encoding": "source" if config.source else "federated statistics", "encoder": encoder.to_dict(),
        "statistics": schedule.statistics, "classes": first.classes,
        "positive": positive.name if positive is not None else None, "threshold_rule": rule, "n_boot": config.n_boot,
        "dp": config.dp,
        "federations": [{"strategy": f.strategy, "seed": f.seed, "dp": f.dp, "method": f.method(),
                         "selected_round": f.best_round, "selected_val_loss": f.best_loss, "history": f.history,
                         "personalised_epoch": f.personalised_epoch, "privacy": f.privacy,
                         "personalised_privacy": f.personalised_privacy} for f in federations],
        "seconds": {"federated": round(federated_seconds, 1), "total": round(time.perf_counter() - started, 1)},
        "versions": {**versions(), **flower_versions()},
    }
    result = FederatedResult(out, pd.DataFrame(rows), pd.concat(frames, ignore_index=True), federations, encoder,
                             schedule.received, summary)
    write_folder(result, config_text, first, start)
    return result


def federated_predictions(federations: list[Federation]) -> dict:
    """(method, seed) -> {site: (val, test) probabilities} of each federated model and its personalised form."""
    out = {}
    for federation in federations:
        for site, arrays in federation.predictions.items():
            out.setdefault((federation.method(), federation.seed), {})[site] = (arrays[0], arrays[1])
            if len(arrays) == 4:
                out.setdefault((federation.method(True), federation.seed), {})[site] = (arrays[2], arrays[3])
    return out


def federated_privacy(federations: list[Federation]) -> dict:
    """(method, seed) -> {site: (dp level, the site's DP-SGD record or None)} of each federated model and its
    personalised form."""
    out = {}
    for federation in federations:
        for personalised, records in ((False, federation.privacy), (True, federation.personalised_privacy)):
            out[federation.method(personalised), federation.seed] = {
                site: (federation.dp, records.get(site)) for site in federation.predictions}
    return out


def check_one_task(datasets: dict[str, TaskDataset]) -> None:
    items = list(datasets.items())
    spec, first = items[0]
    for other_spec, other in items[1:]:
        if other.classes != first.classes:
            raise MedTransferError(f"sites {spec} and {other_spec} have different classes ({first.classes} vs "
                                   f"{other.classes}); a federation learns one task: give every site the same labels")


def resolve_start(config: FederatedConfig, site: SiteData,
                  own: TaskDataset) -> tuple[Start, TabularEncoder | None, str]:
    """(where models start, the shared encoding when a source fixes it, the source's description). A source is
    a run folder or a tabular dataset (pretrained once by the transfer pipeline, cached); its encoding becomes
    every site's and its classifier is kept when its classes are the sites'."""
    if not config.source:
        return Start(config.backbone, own.num_outputs), None, ""
    loading = DataOptions(data_root=config.data_root, target=config.target_column, group=config.group_column,
                          id=config.id_column, drop=tuple(config.drop_columns))
    request = TransferRequest(site.spec, "full", source=config.source,
                              loading=loading.used_by(site.spec, config.source), backbone=config.backbone,
                              source_epochs=config.source_epochs, split_seed=config.split_seed, accelerator="cpu",
                              output=Output(save=False))
    source_data = load_source_data(request)
    encoder = source_encoder(config.source, source_data)
    if encoder is None:
        raise MedTransferError(f"source {config.source} holds no tabular encoding; a federated run starts from a "
                               "tabular model: a medtransfer run folder trained on a table, or a heart:/csv: dataset")
    target = site.load(encoder)
    source = resolve_source(request, get_strategy("full"), target, source_data)
    model = source.model.cpu()
    model.calibration = None
    if source.classes != target.classes:
        import torch
        torch.manual_seed(0)
        model.reset_head(target.num_outputs)
    return Start(config.backbone, own.num_outputs, model), encoder, source.description


def reference_predictions(config: FederatedConfig, datasets: dict, start: Start, encoder: TabularEncoder,
                          progress: Progress) -> dict:
    """(method, seed) -> {site: (val, test) probabilities} of local-only, pooled and (with a source whose
    classes are the sites') the source model."""
    options = dict(epochs=config.reference_epochs, lr=config.lr, batch_size=config.batch_size,
                   weight_decay=config.weight_decay, patience=config.patience)
    out = {}
    bar = progress.start("local-only and pooled references", total=2 * len(config.seeds))
    try:
        for seed in config.seeds:
            out["local", seed] = references.local_only(datasets, start, encoder, seed, options)
            bar.update(advance=1)
            out["pooled", seed] = references.pooled(datasets, start, encoder, seed, options)
            bar.update(advance=1)
    finally:
        bar.close()
    if start.source is not None and start.source.head.out_features == start.n_outputs:
        source = references.source_only(datasets, start, encoder)
        for seed in config.seeds:
            out["source", seed] = source
    return out


def write_folder(result: FederatedResult, config_text: str, first: TaskDataset, start: Start) -> None:
    """The results folder, staged and swapped in whole."""
    stage = staging_dir(result.out)
    result.results.to_csv(stage / "results.csv", index=False)
    result.predictions.to_csv(stage / "predictions.csv", index=False)
    write_json(stage / "federation.json", result.summary)
    (stage / "config.yaml").write_text(config_text)
    for federation in result.federations:
        model = start.model(federation.seed, result.encoder)
        load_arrays(model, federation.weights())
        provenance = {"method": f"federated {federation.strategy} (Flower)", "sites": result.summary["sites"],
                      "seed": federation.seed, "rounds": result.summary["rounds"],
                      "selected_round": federation.best_round, "versions": result.summary["versions"],
                      **({"dp": federation.privacy} if federation.privacy else {})}  # site -> its accountant's
        extra = {"positive": result.summary["positive"]} if result.summary["positive"] else {}
        save_checkpoint(stage / "models" / federation.folder, model, first.task,
                        first.classes, result.encoder.to_dict(), provenance, extra=extra)
    commit_dir(stage, result.out)


def flower_versions() -> dict:
    from importlib.metadata import version
    return {"flwr": version("flwr"), "ray": version("ray")}
