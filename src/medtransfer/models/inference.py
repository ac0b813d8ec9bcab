"""The one batched inference pass: slices of a tensor through a function, without gradients.

Why one helper: evaluation, linear probes, prior-shift correction, shift diagnosis and the SSL
monitor all run a model over many inputs. Doing it in one place keeps the rules the same everywhere:
no autograd graph, bounded memory (fixed-size slices), the model in eval mode and its training flag
restored afterwards, outputs as float32 on the CPU (or kept on the device when the caller computes on).

Backbone features go through the on-disk feature cache (`feature_cache`): a frozen source's features on
a dataset are computed once and reused by every linear probe, head and ranking that asks again. A model
whose preprocess and backbone have no trainable parameter (linear-probe, head) is evaluated from those
cached features too: its logits are its head on them.
"""

from __future__ import annotations

import contextlib
from itertools import chain
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..defaults import EVAL_BATCH_SIZE
from . import feature_cache
from .kinds.stack import SourceStack


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Eval mode inside the block (no dropout, frozen BatchNorm statistics); the training flag is restored after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _output(out: torch.Tensor, cpu: bool) -> torch.Tensor:
    out = out.float()
    return out.cpu() if cpu else out


@torch.no_grad()
def batched(fn: Callable, x: torch.Tensor, batch_size: int = EVAL_BATCH_SIZE,
            device: torch.device | str | None = None, cpu: bool = True):
    """fn over consecutive slices of x (moved to `device` unless None), outputs cast to float, moved to
    the CPU unless cpu=False, and concatenated. A fn returning a tuple gives a tuple of tensors.
    x must hold at least one example: callers know which empty shape they need."""
    if len(x) == 0:
        raise ValueError("batched: x is empty")
    parts = []
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size]
        out = fn(xb if device is None else xb.to(device))
        parts.append(tuple(_output(o, cpu) for o in out) if isinstance(out, tuple) else _output(out, cpu))
    if isinstance(parts[0], tuple):
        return tuple(torch.cat(column) for column in zip(*parts))
    return torch.cat(parts)


def device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def probabilities(logits: torch.Tensor, task: str) -> torch.Tensor:
    return torch.sigmoid(logits) if task == "multilabel" else torch.softmax(logits, dim=1)


def frozen_backbone(model: nn.Module) -> bool:
    """Whether the model's preprocess and backbone have parameters and none of them trains (a linear
    probe, a head on a frozen source): then its features are worth caching for evaluation too. Any
    other model is evaluated as a whole, with no hashing and nothing written."""
    if not (feature_cache.cacheable(model) and hasattr(model, "classify")):
        return False
    params = list(chain(model.preprocess.parameters(), model.backbone.parameters()))
    return bool(params) and not any(p.requires_grad for p in params)


def _outputs(model: nn.Module, x: torch.Tensor, fn: Callable, batch_size: int,
             device: torch.device | str | None) -> torch.Tensor:
    """fn(logits) for x in eval mode, in batches. A frozen backbone's features come from the feature
    cache and only the head (and calibration) runs per batch; any other model runs whole."""
    device = device or device_of(model)
    with eval_mode(model):
        if frozen_backbone(model) and feature_cache.enabled():
            feats = torch.from_numpy(extract_features(model, x, batch_size, device=device))
            return batched(lambda f: fn(model.classify(f).float()), feats, batch_size, device)
        return batched(lambda xb: fn(model(xb).float()), x, batch_size, device)


def predict_proba(model: nn.Module, x: torch.Tensor, task: str, batch_size: int = EVAL_BATCH_SIZE,
                  device: torch.device | str | None = None) -> np.ndarray:
    """Class (or label) probabilities for a tensor of inputs, in eval mode, in batches.
    The softmax / sigmoid runs per batch on the device, before the copy to the CPU."""
    if len(x) == 0:
        return np.zeros((0, 0))
    return _outputs(model, x, lambda out: probabilities(out, task), batch_size, device).numpy()


def extract_features(model: nn.Module, x: torch.Tensor, batch_size: int = EVAL_BATCH_SIZE, cache: bool = True,
                     device: torch.device | str | None = None) -> np.ndarray:
    """Backbone features (`model.features`), float32, in eval mode, on `device` (default: the model's).
    With `cache` (and MEDTRANSFER_FEATURE_CACHE not 0) rows already extracted by this exact model are
    read from the feature cache and new rows are stored there: the key covers the weights and the input
    bytes, and extraction is always in eval mode, so a hit is what computing would give. A stack's
    preprocess passes images through unchanged, so its features are its members', each as computed alone
    (the entries a linear probe of that source alone wrote)."""
    if len(x) == 0:
        return np.zeros((0, model.num_features), np.float32)
    if isinstance(getattr(model, "backbone", None), SourceStack):  # each member's features, and cache entry, alone
        return np.concatenate([extract_features(m, x, batch_size, cache, device) for m in model.backbone.members],
                              axis=1)
    device = device or device_of(model)

    def compute(rows: torch.Tensor) -> np.ndarray:
        with eval_mode(model):
            return batched(model.features, rows, batch_size, device).numpy()

    if cache and feature_cache.enabled() and feature_cache.cacheable(model):
        return feature_cache.cached_features(model, x, compute, device)
    return compute(x)


def logits(model: nn.Module, x: torch.Tensor, batch_size: int = EVAL_BATCH_SIZE) -> np.ndarray:
    """Model outputs before the softmax, float32, in eval mode."""
    if len(x) == 0:
        return np.zeros((0, model.head.out_features), np.float32)
    return _outputs(model, x, lambda out: out, batch_size, None).numpy()


def features_and_logits(model: nn.Module, x: torch.Tensor, accelerator: str = "auto",
                        batch_size: int = EVAL_BATCH_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Backbone features and head logits of `model` for `x`, in eval mode, in batches; on the GPU when
    `accelerator` allows one (the model goes back to the CPU afterwards)."""
    device = "cuda" if accelerator in ("auto", "cuda") and torch.cuda.is_available() else "cpu"

    def both(xb):
        f = model.features(xb).float()
        return f, model.classify(f)

    model.to(device)
    try:
        if len(x) == 0:
            return np.zeros((0, model.num_features), np.float32), np.zeros((0, model.head.out_features), np.float32)
        with eval_mode(model):
            feats, out = batched(both, x, batch_size, device)
    finally:
        model.cpu()
    return feats.numpy(), out.numpy()
