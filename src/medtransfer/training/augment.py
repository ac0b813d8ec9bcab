"""Batched, on-device augmentations for image and signal batches (no per-sample Python on the hot path)."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small CPU tensor (random draws from a CPU generator, so a seed gives the same augmentation on
    every device) onto `device` without a host sync: a plain copy to CUDA waits for the GPU to finish
    its queued work, once per step; a pinned, non-blocking copy does not."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def random_affine(x: torch.Tensor, generator: torch.Generator | None = None, degrees: float = 10.0,
                  translate: float = 0.08, scale: tuple[float, float] = (0.9, 1.1)) -> torch.Tensor:
    """Small rotations, shifts and zooms: plausible for X-ray, CT and ultrasound; no flips (anatomy
    has a side) and no colour changes. One affine_grid + grid_sample for the whole 2D batch."""
    n = x.shape[0]
    rand = to_device(torch.rand(n, 4, generator=generator, device="cpu"), x.device)
    angle = (rand[:, 0] * 2 - 1) * math.radians(degrees)
    zoom = scale[0] + rand[:, 1] * (scale[1] - scale[0])
    shift = (rand[:, 2:] * 2 - 1) * translate * 2  # grid coordinates span [-1, 1]
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def signal_augment(x: torch.Tensor, generator: torch.Generator | None = None, jitter: float = 0.03,
                   scaling: float = 0.1, shift: float = 0.1, mask: float = 0.1) -> torch.Tensor:
    """Signals (N, C, T), per example, all batched: Gaussian jitter (`jitter` x the example's std), amplitude
    scaling by 1 ± `scaling` per channel, a circular time shift of up to `shift` of the length, and one span
    of up to `mask` of the length set to the channel's mean (a dropped-out stretch). No flips: an inverted
    ECG is another lead, not the same beat."""
    n, c, t = x.shape
    rand = to_device(torch.rand(n, c + 3, generator=generator, device="cpu"), x.device)
    noise = to_device(torch.randn(n, c, t, generator=generator, device="cpu"), x.device)
    level = x.std(dim=2, keepdim=True)
    mean = x.mean(dim=2, keepdim=True)
    x = x + jitter * level * noise.to(x.dtype)
    x = mean + (x - mean) * (1 + (rand[:, :c, None] * 2 - 1) * scaling).to(x.dtype)
    steps = torch.arange(t, device=x.device)
    offset = ((rand[:, c] * 2 - 1) * shift * t).round().long()
    index = (steps[None, :] - offset[:, None]) % t  # roll each example by its own offset
    x = torch.gather(x, 2, index[:, None, :].expand(n, c, t))
    width = (rand[:, c + 1] * mask * t).long()
    start = (rand[:, c + 2] * (t - width).clamp(min=0)).long()
    span = (steps[None, :] >= start[:, None]) & (steps[None, :] < (start + width)[:, None])
    return torch.where(span[:, None, :], mean, x)


def augment_batch(x: torch.Tensor, modality: str, generator: torch.Generator | None = None) -> torch.Tensor:
    if modality == "signal":
        return signal_augment(x, generator)
    if modality == "image2d":
        return random_affine(x, generator)
    if modality == "image3d":  # random shift by up to 2 voxels per axis, as one roll per batch
        shifts = torch.randint(-2, 3, (3,), generator=generator).tolist()
        return torch.roll(x, shifts=shifts, dims=(2, 3, 4))
    return x


# ----------------------------------------------------------------------------- self-supervised views


@dataclass
class ViewConfig:
    """Random views for contrastive pretraining on medical images, all batched tensor ops.

    Geometry (one affine_grid + grid_sample per batch): random resized crop covering `crop_scale` of
    the image area with aspect ratio in `ratio`, a small rotation (±`degrees`), flips with the given
    probabilities. Intensity (with probability `p_intensity`, per image): brightness shift ±`brightness`,
    contrast factor 1 ± `contrast` around the image mean, gamma in `gamma`; the same factor on every
    channel, so grayscale stays grayscale (no colour jitter or hue). Gaussian blur with probability
    `p_blur`, sigma (in output pixels) uniform in `blur_sigma`, one grouped separable convolution.
    `size` resizes the views (the backbone's input size: no second resize later); None keeps H x W.
    """

    crop_scale: tuple[float, float] = (0.35, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    degrees: float = 10.0
    hflip: float = 0.5
    vflip: float = 0.0
    p_intensity: float = 0.8
    brightness: float = 0.2
    contrast: float = 0.2
    gamma: tuple[float, float] = (0.7, 1.4)
    p_blur: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 1.5)
    size: int | None = None

    @classmethod
    def parse(cls, items: dict | list[str] | None) -> "ViewConfig":
        """From {name: value} or ["name=value", "crop_scale=0.5,1"]; bad names and values are one line."""
        from ..errors import MedTransferError

        config = parse_options(cls, items)
        for name in ("hflip", "vflip", "p_intensity", "p_blur"):
            if not 0 <= getattr(config, name) <= 1:
                raise MedTransferError(f"view option {name}={getattr(config, name)} must be a probability in [0, 1]")
        if not 0 < config.crop_scale[0] <= config.crop_scale[1] <= 1:
            raise MedTransferError(f"view option crop_scale={config.crop_scale} must satisfy 0 < low <= high <= 1")
        return config


@dataclass
class SignalViewConfig:
    """Random views of signals (N, C, T) for contrastive pretraining: `signal_augment` made stronger than
    the supervised default, as time-series SimCLR does (Gaussian jitter, amplitude scaling, a circular
    time shift, one masked span; no flips: an inverted ECG is another lead). Each value is that
    augmentation's size as `signal_augment` reads it."""

    jitter: float = 0.1
    scaling: float = 0.2
    shift: float = 0.2
    mask: float = 0.25

    @classmethod
    def parse(cls, items: dict | list[str] | None) -> "SignalViewConfig":
        from ..errors import MedTransferError

        config = parse_options(cls, items)
        for name in ("shift", "mask"):
            if not 0 <= getattr(config, name) <= 1:
                raise MedTransferError(f"view option {name}={getattr(config, name)} must be a share of the "
                                       "length in [0, 1]")
        for name in ("jitter", "scaling"):
            if getattr(config, name) < 0:
                raise MedTransferError(f"view option {name}={getattr(config, name)} must be >= 0")
        return config


def parse_options(cls, items: dict | list[str] | None):
    """A view dataclass from {name: value} or ["name=value", "crop_scale=0.5,1"]; bad names and values are
    one line naming the accepted ones."""
    from ..errors import MedTransferError

    if isinstance(items, cls):
        return items
    values = {}
    pairs = items.items() if isinstance(items, dict) else [s.partition("=")[::2] for s in items or []]
    names = {f.name: f for f in fields(cls)}
    for name, value in pairs:
        name = name.strip().replace("-", "_")
        if name not in names:
            raise MedTransferError(f"unknown view option {name!r}; choose from {', '.join(names)}")
        default = getattr(cls, name)
        try:
            if isinstance(value, str):
                parts = [float(v) for v in value.split(",")]
                value = tuple(parts) if isinstance(default, tuple) else (
                    int(parts[0]) if name == "size" else parts[0])
                if len(parts) != (len(default) if isinstance(default, tuple) else 1):
                    raise ValueError
            values[name] = tuple(value) if isinstance(default, tuple) else value
        except (ValueError, TypeError):
            shape = "two numbers like 0.5,1.0" if isinstance(default, tuple) else "one number"
            raise MedTransferError(f"bad view option {name}={value!r}: give {shape}") from None
    return cls(**values)


def _uniform(rand: torch.Tensor, bounds: tuple[float, float]) -> torch.Tensor:
    return bounds[0] + rand * (bounds[1] - bounds[0])


def random_view(x: torch.Tensor, generator: torch.Generator | None = None,
                config: ViewConfig = ViewConfig()) -> torch.Tensor:
    """One random view of every image of a 2D batch (N, C, H, W) in [0, 1]; values stay in [0, 1]."""
    n, c = x.shape[:2]
    size = (config.size, config.size) if config.size else tuple(x.shape[2:])
    rand = to_device(torch.rand(n, 14, generator=generator, device="cpu"), x.device).to(x.dtype)
    # geometry: crop of area fraction s and aspect r, inside the image, rotated and flipped
    area = _uniform(rand[:, 0], config.crop_scale)
    log_ratio = _uniform(rand[:, 1], (math.log(config.ratio[0]), math.log(config.ratio[1])))
    w = torch.sqrt(area * torch.exp(log_ratio)).clamp(max=1.0)  # half-widths in grid units ([-1, 1] spans 2)
    h = torch.sqrt(area / torch.exp(log_ratio)).clamp(max=1.0)
    cx, cy = (rand[:, 2] * 2 - 1) * (1 - w), (rand[:, 3] * 2 - 1) * (1 - h)
    angle = (rand[:, 4] * 2 - 1) * math.radians(config.degrees)
    fx = torch.where(rand[:, 5] < config.hflip, -1.0, 1.0).to(x.dtype) * w
    fy = torch.where(rand[:, 6] < config.vflip, -1.0, 1.0).to(x.dtype) * h
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([torch.stack([cos * fx, -sin * fy, cx], 1), torch.stack([sin * fx, cos * fy, cy], 1)], 1)
    grid = F.affine_grid(theta, [n, c, *size], align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    # intensity: contrast around the per-image mean, brightness shift, gamma; same on every channel
    on = (rand[:, 7] < config.p_intensity).to(x.dtype).view(n, 1, 1, 1)
    contrast = 1 + on * (rand[:, 8].view(n, 1, 1, 1) * 2 - 1) * config.contrast
    shift = on * (rand[:, 9].view(n, 1, 1, 1) * 2 - 1) * config.brightness
    log_gamma = _uniform(rand[:, 10], (math.log(config.gamma[0]), math.log(config.gamma[1])))
    gamma = torch.exp(on.flatten() * log_gamma).view(n, 1, 1, 1)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = ((out - mean) * contrast + mean + shift).clamp(0, 1).pow(gamma)
    # blur: a per-image gaussian kernel (a delta when off), one grouped separable convolution
    if config.p_blur > 0:
        out = _gaussian_blur(out, torch.where(rand[:, 11] < config.p_blur,
                                              _uniform(rand[:, 12], config.blur_sigma), torch.zeros_like(rand[:, 12])),
                             max(config.blur_sigma))
    return out.clamp_(0, 1)


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, max_sigma: float) -> torch.Tensor:
    n, c, height, width = x.shape
    radius = max(1, math.ceil(3 * max_sigma))
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-offsets[None] ** 2 / (2 * sigma.clamp(min=1e-3)[:, None] ** 2))  # sigma ~0: a delta
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (N*C, K)
    flat = x.reshape(1, n * c, height, width)
    flat = F.pad(flat, (radius, radius, radius, radius), mode="replicate")
    flat = F.conv2d(flat, kernel[:, None, None, :], groups=n * c)
    flat = F.conv2d(flat, kernel[:, None, :, None], groups=n * c)
    return flat.reshape(n, c, height, width)


def two_views(x: torch.Tensor, generator: torch.Generator | None = None,
              config: ViewConfig | SignalViewConfig = ViewConfig()) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent random views of a batch (2D images, or signals with a SignalViewConfig), made in one
    batched call."""
    if x.ndim == 3 and isinstance(config, SignalViewConfig):
        views = signal_augment(torch.cat([x, x]), generator, config.jitter, config.scaling, config.shift, config.mask)
        return views[:len(x)], views[len(x):]
    if x.ndim != 4 or not isinstance(config, ViewConfig):
        raise ValueError(f"self-supervised views take 2D image batches (N, C, H, W) with a ViewConfig or signals "
                         f"(N, C, T) with a SignalViewConfig, not shape {tuple(x.shape)} with {type(config).__name__}")
    views = random_view(torch.cat([x, x]), generator, config)
    return views[:len(x)], views[len(x):]
