"""Batched, on-device augmentations for image batches (no per-sample Python on the hot path)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def random_affine(x: torch.Tensor, generator: torch.Generator | None = None, degrees: float = 10.0,
                  translate: float = 0.08, scale: tuple[float, float] = (0.9, 1.1)) -> torch.Tensor:
    """Small rotations, shifts and zooms: plausible for X-ray, CT and ultrasound; no flips (anatomy
    has a side) and no colour changes. One affine_grid + grid_sample for the whole 2D batch."""
    n = x.shape[0]
    rand = torch.rand(n, 4, generator=generator, device="cpu").to(x.device)
    angle = (rand[:, 0] * 2 - 1) * math.radians(degrees)
    zoom = scale[0] + rand[:, 1] * (scale[1] - scale[0])
    shift = (rand[:, 2:] * 2 - 1) * translate * 2  # grid coordinates span [-1, 1]
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def augment_batch(x: torch.Tensor, modality: str, generator: torch.Generator | None = None) -> torch.Tensor:
    if modality == "image2d":
        return random_affine(x, generator)
    if modality == "image3d":  # random shift by up to 2 voxels per axis, as one roll per batch
        shifts = torch.randint(-2, 3, (3,), generator=generator).tolist()
        return torch.roll(x, shifts=shifts, dims=(2, 3, 4))
    return x
