"""A checkpoint = `model.safetensors` (weights) + `model.json` (architecture, input spec, task,
classes, tabular encoding, provenance). No pickles: safe to load from anyone."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import MedTransferError
from .backbones import Classifier, InputSpec, create_model

WEIGHTS, META = "model.safetensors", "model.json"


def save_checkpoint(directory: Path, model: Classifier, task: str, classes: list[str],
                    encoder: dict | None, provenance: dict, weights: bool = True) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    if weights:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(directory / WEIGHTS))
    meta = {"format": "medtransfer-checkpoint/1", "architecture": model.architecture,
            "input": model.spec.to_dict(), "task": task, "classes": classes,
            "num_outputs": model.head.out_features, "encoder": encoder, "provenance": provenance}
    (directory / META).write_text(json.dumps(meta, indent=2))


def read_meta(directory: Path) -> dict:
    path = Path(directory) / META
    if not path.is_file():
        raise MedTransferError(f"{directory} is not a medtransfer run or checkpoint folder (no {META})")
    return json.loads(path.read_text())


def load_state_strict(model: torch.nn.Module, state: dict, where: str) -> None:
    """Load weights strictly; a mismatch names the missing and unexpected keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        parts = [f"missing keys {missing[:8]}{'…' if len(missing) > 8 else ''}" if missing else "",
                 f"unexpected keys {unexpected[:8]}{'…' if len(unexpected) > 8 else ''}" if unexpected else "",
                 f"shape mismatch {[(k, tuple(state[k].shape), tuple(own[k].shape)) for k in wrong[:4]]}" if wrong else ""]
        raise MedTransferError(f"weights in {where} do not fit the model: " + "; ".join(p for p in parts if p))
    model.load_state_dict(state, strict=True)


def load_checkpoint(directory: Path) -> tuple[Classifier, dict]:
    directory = Path(directory)
    meta = read_meta(directory)
    if not (directory / WEIGHTS).is_file():
        raise MedTransferError(f"{directory} has no {WEIGHTS} (an experiment cell run without keep_weights)")
    model = create_model(meta["architecture"], InputSpec.from_dict(meta["input"]), meta["num_outputs"])
    load_state_strict(model, load_file(str(directory / WEIGHTS)), str(directory / WEIGHTS))
    return model, meta
