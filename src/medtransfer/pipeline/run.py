"""The part of the transfer pipeline after loading: strategy -> evaluate (validation, then the test
split, touched once) -> run folder. Also how a source dataset is pretrained (scratch, every label)."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..data import TaskDataset, apply_budget
from ..data.positive import Positive, positive_class
from ..errors import MedTransferError
from ..evaluation import compute_metrics
from ..evaluation.calibration import check_calibration
from ..evaluation.threshold import parse_rule
from ..models.backbones import Classifier, describe, spec_for
from ..models.inference import predict_proba
from ..models.sources import Source, check_compatible, check_tokenizer, fit_source, signal_warning
from ..progress import SILENT
from ..runs import predictions_frame
from ..strategies import Strategy, TransferContext, get_strategy
from ..training import distributed
from ..training.loop import FitResult
from .operating import Decision, class_names, counts, decide, decided, scoring_options, test_warnings
from .request import TransferRequest
from .run_folder import RunResult, versions, write_run
from .unlabelled import ExtraUnlabelled, duplicate_warning


def run_transfer(request: TransferRequest, target: TaskDataset, out: Path | None,
                 strategy: Strategy | None = None, source: Source | None = None,
                 source_data: TaskDataset | None = None, started: float | None = None,
                 extra: ExtraUnlabelled | None = None) -> RunResult:
    """The pipeline from a loaded target on (also how a source dataset is pretrained: scratch, no source).
    `extra`: more unlabelled target images (--unlabelled), beside the training split's inputs."""
    started = time.perf_counter() if started is None else started
    strategy = strategy or get_strategy(request.strategy)
    positive = check_target(request, target)
    features = target.info.get("features")
    if source is not None:
        source = fit_source(source, target.modality, target.in_channels)  # a grey source on RGB images, or back
        check_compatible(source.model, target.modality, target.in_channels, features, rate=target.info.get("rate"),
                         tokenizer=target.info.get("tokenizer"))
    budgeted = apply_budget(target, request.budget, request.seed)
    if source is not None:
        architecture, spec = source.model.architecture, source.model.spec
    else:
        architecture = describe(request.backbone, target.modality, target.in_channels, len(features or []))
        spec = spec_for(target, request.image_size)
        check_tokenizer(architecture.get("tokenizer"), target.info.get("tokenizer"))  # text: same vocabulary
    config = request.training.config(target.modality, request.seed, request.accelerator,
                                     progress=request.progress is not SILENT)
    ctx = TransferContext(budgeted, config, architecture, spec, source.model if source else None, source_data,
                          source.classes if source else None,
                          unlabelled=target.train.x if extra is None else torch.cat([target.train.x, extra.x]),
                          progress=request.progress,
                          dp=request.dp)
    model = strategy.run(ctx)
    if request.dp is not None and (ctx.fit_result is None or ctx.fit_result.dp is None):
        raise MedTransferError(f"--dp: strategy {strategy.name!r} did not train through the DP-SGD loop, so the "
                               "result would not be private; use full, head, partial or scratch")
    decision = decide(model, budgeted, positive, request.threshold, request.calibrate)
    metrics, predictions, test_notes = evaluate_splits(model, budgeted, request.n_boot, request.seed, decision)
    fit = ctx.fit_result
    metrics["fit"] = {"best_epoch": fit.best_epoch, "epochs_run": fit.epochs_run, "val_score": fit.best_score,
                      "seconds": round(fit.seconds, 3)} if fit else {}
    metrics["fit"]["total_seconds"] = round(time.perf_counter() - started, 3)
    if fit is not None and fit.dp is not None:
        metrics["dp"] = fit.dp  # the accountant's epsilon after the steps taken, and what it rests on
    loading = request.loading
    resolved = {
        "data": request.data, "strategy": request.strategy, "source": request.source,
        "source_description": source.description if source else None, "budget": request.budget,
        "n_train_labels": len(budgeted.train), "n_val_labels": len(budgeted.val), "n_test": len(budgeted.test),
        "seed": request.seed, "split_seed": request.split_seed, "backbone": architecture.get("name"),
        "architecture": architecture, "input": spec.to_dict(), "train": asdict(config), "target": loading.target,
        "group": loading.group, "data_root": str(loading.data_root) if loading.data_root else None,
        "classes": target.classes, "task": target.task, "positive": positive.name if positive else None,
        "positive_rule": positive.how if positive else None, "threshold": decision.point.rule,
        "calibrate": request.calibrate, "id_column": loading.id, "drop": list(loading.drop),
        "text_column": target.info.get("text_column"), "data_fingerprint": target.info.get("fingerprint"),
        **({"unlabelled": extra.record} if extra is not None else {}),
        **({"dp": asdict(request.dp)} if request.dp is not None else {}),
        **({"data_parallel": parallel} if (parallel := distributed.record(config.devices, config.num_nodes)) else {}),
        "strategy_notes": ctx.notes, "versions": versions(),
        "created": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    warnings = [*target.info.get("warnings", []), *fit_warnings(fit, source is not None), *dp_warnings(fit),
                *duplicate_warning(extra), *ctx.warnings, *decision.warnings,
                *test_notes, *filter(None, [signal_warning(spec, target) if source is not None else None])]
    result = RunResult(model, metrics, predictions, resolved, None, budgeted, warnings)
    if out is not None:
        write_run(result, out, target, fit.history if fit else [], request.output.weights,
                  decision.to_model_json(target.classes))
        result.out = out
    return result


def check_target(request: TransferRequest, target: TaskDataset) -> Positive | None:
    """The options that depend on the loaded target's task, checked before any training: the positive
    class (returned; None unless binary), the threshold rule and the calibration method."""
    positive = positive_class(target, request.positive, request.data)
    parse_rule(request.threshold, target.task)
    check_calibration(request.calibrate, target.task)
    return positive


def fit_warnings(fit: FitResult | None, has_source: bool) -> list[str]:
    """What the user must hear about the training: a run whose selected epoch is 0 returns the weights it
    started from (random ones for a model trained from scratch) although it trained."""
    if fit is None:
        return []
    warnings = []
    if fit.diverged_epoch:
        warnings.append(f"training diverged at epoch {fit.diverged_epoch} (the loss was not finite) and stopped "
                        f"there; epoch {fit.best_epoch} was kept; a lower learning rate (--lr) may do better")
    if fit.best_epoch != 0 or fit.epochs_run < 1:
        return warnings
    scores = [h.get("val_score") for h in fit.history]
    started = ("the model as it was before the first training step (the source model, with a random new head "
               "when the target's classes differ from the source's)") if has_source else \
        "its untrained, random initial weights"
    if all(v is None or v != v for v in scores):  # nan everywhere: no epoch could be compared
        why = ("the validation score is undefined at every epoch (does the validation split hold only one "
               "class?), so no epoch could be selected")
    else:
        why = f"no epoch of {fit.epochs_run} beat the validation score before training ({fit.best_score:.4f})"
    return [*warnings, f"the selected model is from epoch 0, i.e. {started}: {why}; check the learning rate, the "
            "epochs and the validation split, or treat this result as untrained"]


def dp_warnings(fit: FitResult | None) -> list[str]:
    """What a DP run's guarantee does not say: a delta as large as 1/n is no guarantee worth the name."""
    dp = fit.dp if fit is not None else None
    if not dp or dp["delta"] < 1 / max(dp["n_private"], 1):
        return []
    return [f"--dp: delta {dp['delta']:g} is at least 1/n (n = {dp['n_private']} private examples), which allows "
            "one example to be exposed outright; give a smaller delta, e.g. delta=1e-5"]


def check_probabilities(prob, where: str) -> None:
    """Non-finite probabilities (NaN weights, NaN inputs) would be scored or argmax-ed as class 0."""
    if not np.isfinite(prob).all():
        raise MedTransferError(f"the model gives non-finite probabilities on {where}: its weights or these inputs "
                               "hold NaN or infinite values; check the inputs, or retrain with a lower learning rate")


def evaluate_splits(model: Classifier, budgeted: TaskDataset, n_boot: int, seed: int,
                    decision: Decision) -> tuple[dict, pd.DataFrame, list[str]]:
    """Metrics with CIs and per-sample predictions on validation, then test (touched once, after every
    choice was made on validation), at the run's operating point with its positive class; and what the
    test split warns of (one class decided for everyone, too few examples of a class)."""
    metrics, frames, options = {}, [], scoring_options(decision.point, budgeted.classes)
    warnings: list[str] = []
    for name in ("val", "test"):
        split = budgeted.split(name)
        if len(split) == 0:  # budget 0: no labelled target validation examples
            metrics[name] = {}
            continue
        prob = predict_proba(model, split.x, budgeted.task)
        check_probabilities(prob, f"the {name} split of {budgeted.name}")
        metrics[name] = compute_metrics(split.y.numpy(), prob, budgeted.task, n_boot=n_boot, seed=seed, **options)
        predicted = decided(prob, budgeted.task, decision.point)
        frames.append(predictions_frame(name, split.y.numpy(), prob, budgeted.classes, split.id_list(name),
                                        class_names(predicted, budgeted.classes)))
        if name == "test":
            warnings = test_warnings(budgeted, predicted, decision)
            if predicted is not None:
                metrics["test_counts"] = {"n": len(split), "per_class": counts(split.y.numpy(), budgeted.classes)}
                metrics["predicted_counts"] = counts(predicted, budgeted.classes)
    metrics["operating_point"] = decision.point.to_dict(budgeted.classes)
    if decision.calibration is not None:
        metrics["calibration"] = decision.calibration
    return metrics, pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(), warnings
