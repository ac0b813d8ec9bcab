"""A checkpoint = `model.safetensors` (weights) + `model.json` (architecture, input spec, task,
classes, tabular encoding, provenance). No pickles: safe to load from anyone."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import MedTransferError
from ..runs import dumps
from .backbones import Classifier, InputSpec, create_model
from .calibration import METHODS as CALIBRATIONS
from .calibration import Calibration

WEIGHTS, META = "model.safetensors", "model.json"


def file_sha256(path: Path) -> str:
    """A file's SHA-256, read in blocks (weights and exported models can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_version(directory: Path, weights: str | None = None) -> str:
    """"<run folder name>@<first 12 hex digits of the weights' SHA-256>": one version string for the served
    model and the exported file of the same run (a retrained run in the same folder gets another)."""
    return f"{Path(directory).resolve().name}@{(weights or file_sha256(Path(directory) / WEIGHTS))[:12]}"


REQUIRED = {"architecture": dict, "input": dict, "task": str, "classes": list, "num_outputs": int}


def save_checkpoint(directory: Path, model: Classifier, task: str, classes: list[str],
                    encoder: dict | None, provenance: dict, weights: bool = True,
                    data_shape: list[int] | None = None, extra: dict | None = None) -> None:
    """`data_shape`: the shape of one training example as the data loader decoded it (images:
    [channels, height, width]), so new image files are decoded exactly as the training images were.
    `extra`: more model.json keys (the positive class, the operating point, the id column)."""
    directory.mkdir(parents=True, exist_ok=True)
    if weights:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(directory / WEIGHTS))
    meta = {"format": "medtransfer-checkpoint/1", "architecture": model.architecture,
            "input": model.spec.to_dict(), "task": task, "classes": classes,
            "num_outputs": model.head.out_features, "encoder": encoder, "provenance": provenance}
    if data_shape is not None:
        meta["data_shape"] = [int(n) for n in data_shape]
    if model.calibration is not None:
        meta["calibration"] = model.calibration.describe()
    meta.update(extra or {})
    (directory / META).write_text(dumps(meta, indent=2))


def read_meta(directory: Path) -> dict:
    """model.json, checked: valid JSON holding every key a checkpoint needs, each of the right type."""
    path = Path(directory) / META
    if not path.is_file():
        raise MedTransferError(f"{directory} is not a medtransfer run or checkpoint folder (no {META})")
    try:
        meta = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise MedTransferError(f"{path} is not valid JSON ({exc}); the checkpoint is damaged: re-run the "
                               "transfer that wrote it or restore the file") from None
    if not isinstance(meta, dict):
        raise MedTransferError(f"{path} is not a medtransfer checkpoint (not a JSON object); re-run the transfer "
                               "that wrote it or restore the file")
    for key, kind in REQUIRED.items():
        if key not in meta:
            raise MedTransferError(f"{path} lacks the required key {key!r} (it needs "
                                   f"{', '.join(map(repr, REQUIRED))}); re-run the transfer that wrote it or "
                                   "restore the file")
        if not isinstance(meta[key], kind) or isinstance(meta[key], bool):
            raise MedTransferError(f"{path}: {key!r} must be a JSON {kind.__name__}, got {meta[key]!r}; re-run the "
                                   "transfer that wrote it or restore the file")
    for key, inner in (("architecture", ("kind",)), ("input", ("modality",))):
        missing = [k for k in inner if k not in meta[key]]
        if missing:
            raise MedTransferError(f"{path}: {key!r} lacks {', '.join(map(repr, missing))}; re-run the transfer "
                                   "that wrote it or restore the file")
    return meta


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
    try:
        spec = InputSpec.from_dict(meta["input"])
    except (TypeError, KeyError, ValueError) as exc:
        raise MedTransferError(f"{directory / META}: 'input' is not a valid input spec ({exc}); re-run the "
                               "transfer that wrote it or restore the file") from None
    model = create_model(meta["architecture"], spec, meta["num_outputs"])
    model.calibration = calibration_module(meta, directory)
    load_state_strict(model, read_weights(directory / WEIGHTS), str(directory / WEIGHTS))
    return model, meta


def calibration_module(meta: dict, directory: Path) -> Calibration | None:
    """The (empty) calibration module model.json describes, for its buffers to load into; None when the
    run was not calibrated (and for checkpoints older than calibration)."""
    described = meta.get("calibration")
    if described is None:
        return None
    if not isinstance(described, dict) or described.get("method") not in CALIBRATIONS or \
            not isinstance(described.get("knots", 0), int):
        raise MedTransferError(f"{directory / META}: 'calibration' must be {{\"method\": one of "
                               f"{', '.join(CALIBRATIONS)}, \"knots\": a whole number}}, got {described!r}; re-run the "
                               "transfer that wrote it or restore the file")
    return Calibration(described["method"], meta["num_outputs"], described.get("knots", 0))


def read_weights(path: Path) -> dict:
    """The tensors of a .safetensors file; a truncated or damaged file is named, not a library error."""
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own SafetensorError (and OSError) for a bad file
        reason = " ".join(str(exc).split()) or exc.__class__.__name__
        raise MedTransferError(f"{path} is truncated or corrupt, not a readable safetensors file ({reason}); "
                               "re-run the transfer that wrote it or copy the file again") from None
