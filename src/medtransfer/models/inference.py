"""The one batched inference pass: slices of a tensor through a function, without gradients.

Why one helper: evaluation, linear probes, prior-shift correction, shift diagnosis and the SSL
monitor all run a model over many inputs. Doing it in one place keeps the rules the same everywhere:
no autograd graph, bounded memory (fixed-size slices), the model in eval mode and its training flag
restored afterwards, outputs as float32 on the CPU (or kept on the device when the caller computes on).
"""

from __future__ import annotations

import contextlib
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..defaults import EVAL_BATCH_SIZE


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


def predict_proba(model: nn.Module, x: torch.Tensor, task: str, batch_size: int = EVAL_BATCH_SIZE,
                  device: torch.device | str | None = None) -> np.ndarray:
    """Class (or label) probabilities for a tensor of inputs, in eval mode, in batches.
    The softmax / sigmoid runs per batch on the device, before the copy to the CPU."""
    device = device or device_of(model)
    if len(x) == 0:
        return np.zeros((0, 0))
    with eval_mode(model):
        return batched(lambda xb: probabilities(model(xb).float(), task), x, batch_size, device).numpy()


def extract_features(model: nn.Module, x: torch.Tensor, batch_size: int = EVAL_BATCH_SIZE) -> np.ndarray:
    """Backbone features (`model.features`), float32, in eval mode."""
    if len(x) == 0:
        return np.zeros((0, model.num_features), np.float32)
    with eval_mode(model):
        return batched(model.features, x, batch_size, device_of(model)).numpy()


def logits(model: nn.Module, x: torch.Tensor, batch_size: int = EVAL_BATCH_SIZE) -> np.ndarray:
    """Model outputs before the softmax, float32, in eval mode."""
    if len(x) == 0:
        return np.zeros((0, model.head.out_features), np.float32)
    with eval_mode(model):
        return batched(model, x, batch_size, device_of(model)).numpy()


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
