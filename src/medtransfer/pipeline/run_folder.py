"""What a pipeline returns (`RunResult`) and the run folder it writes: checkpoint, config.json,
metrics.json, predictions.csv and log.txt, staged beside `out` and swapped in only when complete."""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from .. import __version__
from ..data import TaskDataset
from ..errors import MedTransferError
from ..models.backbones import Classifier
from ..models.checkpoint import save_checkpoint
from ..runs import check_writable, code_digest, commit_dir, default_run_dir, dumps, staging_dir, strict, write_json
from .model_card import model_card
from .multi_source import MULTI_SOURCE_TASK
from .request import Output

SELF_SUPERVISED_TASK = "self-supervised"  # model.json "task" of an SSL source: no classes, a placeholder head


@dataclass
class RunResult:
    model: Classifier
    metrics: dict  # {"val": {...}, "test": {...}, "fit": {...}}
    predictions: pd.DataFrame
    config: dict
    out: Path | None = None
    dataset: TaskDataset | None = field(default=None, repr=False)
    # What the user must know about this result (e.g. it kept its untrained weights); also in
    # metrics.json ("warnings") and log.txt. Empty when all went as planned.
    warnings: list[str] = field(default_factory=list)


def versions() -> dict:
    """The software a run ran with; `medtransfer_code` tells apart two edits of one version (`runs.code_digest`)."""
    import timm
    return {"medtransfer": __version__, "medtransfer_code": code_digest(), "torch": torch.__version__,
            "timm": timm.__version__, "python": platform.python_version(),
            "device": "cuda" if torch.cuda.is_available() else "cpu"}


def output_dir(output: Output, *default_parts, root: str = "runs") -> Path | None:
    """The folder a run will write (checked writable before any work), or None when nothing is saved."""
    if not output.save:
        return None
    out = Path(output.out) if output.out else default_run_dir(*default_parts, root=root)
    check_writable(out, output.overwrite)
    return out


def write_run(result: RunResult, out: Path, dataset: TaskDataset, history: list[dict], weights: bool = True,
              decided: dict | None = None) -> None:
    """The run folder, staged and swapped in whole. `decided`: model.json's record of what the run chose on
    validation (positive class, operating point), which `predict` and `evaluate` apply to new data."""
    stage = staging_dir(out)
    encoder = dataset.encoder.to_dict() if dataset.encoder is not None else None
    provenance = {k: result.config[k] for k in ("data", "strategy", "source", "source_description", "budget",
                                                "n_train_labels", "seed", "versions")}
    provenance["test_metrics"] = {k: v["value"] for k, v in result.metrics["test"].items()}
    data_shape = list(dataset.input_shape) if dataset.modality != "tabular" else None
    extra = dict(decided or {})
    if result.config.get("id_column"):
        extra["id_column"] = result.config["id_column"]
    if result.config.get("text_column"):  # text: the column `predict` reads texts from
        extra["text_column"] = result.config["text_column"]
    if result.config.get("strategy_notes"):  # what the strategy did to the weights (e.g. LoRA merged)
        provenance["strategy_notes"] = result.config["strategy_notes"]
    if result.config.get("data_parallel"):  # trained by N processes (DDP)
        provenance["data_parallel"] = result.config["data_parallel"]
    save_checkpoint(stage, result.model, dataset.task, dataset.classes, encoder, provenance, weights,
                    data_shape=data_shape, extra=extra)
    write_json(stage / "config.json", result.config)
    metrics = with_warnings(result.metrics, result.warnings)
    write_json(stage / "metrics.json", metrics)
    (stage / "model_card.md").write_text(model_card(result.config, strict(metrics)), encoding="utf-8")
    result.predictions.to_csv(stage / "predictions.csv", index=False)
    lines = [f"medtransfer {__version__} run: {result.config['strategy']} on {result.config['data']}",
             *(dumps(h) for h in history),
             "test: " + ", ".join(f"{k}={v['value']:.4f}" for k, v in result.metrics["test"].items()),
             *(f"warning: {w}" for w in result.warnings)]
    (stage / "log.txt").write_text("\n".join(lines) + "\n")
    commit_dir(stage, out)


def with_warnings(metrics: dict, warnings: list[str]) -> dict:
    """metrics.json's content: the metrics, plus "warnings" when there are any."""
    return dict(metrics, warnings=list(warnings)) if warnings else metrics


def write_pretrain_run(result: RunResult, out: Path, history: list[dict]) -> None:
    """A self-supervised run folder: the checkpoint (classes [] so every transfer builds a new head),
    config.json, metrics.json (monitor, fit) and log.txt; no predictions (there is no classifier)."""
    stage = staging_dir(out)
    config = result.config
    provenance = {"method": config["method"], "data": config["data"], "epochs": result.metrics["fit"]["epochs_run"],
                  "best_epoch": result.metrics["fit"]["best_epoch"], "epochs_planned": config["train"]["epochs"],
                  "n_images": config["n_images"], "seed": config["seed"], "settings": config["method_settings"],
                  "views": config["views"], "monitor": result.metrics["monitor"], "versions": config["versions"]}
    save_checkpoint(stage, result.model, SELF_SUPERVISED_TASK, [], None, provenance)
    write_json(stage / "config.json", config)
    write_json(stage / "metrics.json", with_warnings(result.metrics, result.warnings))
    lines = [f"medtransfer {__version__} run: {config['method']} pretraining on {', '.join(config['data'])}",
             *(dumps(h) for h in history), *(f"warning: {w}" for w in result.warnings)]
    (stage / "log.txt").write_text("\n".join(lines) + "\n")
    commit_dir(stage, out)


def require_classifier(meta: dict, run: Path) -> None:
    if meta.get("task") == SELF_SUPERVISED_TASK:
        raise MedTransferError(f"{run} is a self-supervised source model (no classifier head): transfer it first, "
                               f"e.g. medtransfer transfer --source {run} --strategy linear-probe --data …")
    if meta.get("task") == MULTI_SOURCE_TASK:
        raise MedTransferError(f"{run} is a multi-dataset source model (one head per source dataset, no classifier of "
                               f"any one task): transfer it first, e.g. medtransfer transfer --source {run} "
                               "--strategy linear-probe --data …")
