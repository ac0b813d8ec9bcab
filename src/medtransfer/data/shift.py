"""`shift:<kind>[:<strength>]:<dataset>`: an image dataset as another scanner would have acquired it.

A known, synthetic acquisition shift, so a benchmark can measure how much a source model loses on
it and how much of that an adaptation strategy wins back. The transform is applied to every split
(train, val, test) of the wrapped dataset, labels untouched; it is deterministic (the noise is
seeded per split), keeps shape and dtype, and keeps images in [0, 1]. Shifts compose:
`shift:noise:shift:blur:medmnist:pneumoniamnist` blurs, then adds noise.

Kinds (default strength in brackets):

* `gamma` [1.8]: intensity curve x ** g (g > 1 darkens the mid-tones: another detector response or
  look-up table).
* `contrast` [0.5]: contrast scaled by c around each image's mean (a narrower window, another kVp).
* `brightness` [0.15]: an offset added to every pixel (a calibration offset), clipped to [0, 1].
* `blur` [1.0]: Gaussian blur, sigma in pixels of the stored image (a softer reconstruction kernel,
  a larger focal spot, motion).
* `noise` [0.08]: additive Gaussian noise with this SD on the [0, 1] scale (a lower dose).
* `lowres` [2]: downsampled by the factor (area average) and upsampled back (bilinear): a
  lower-resolution detector.
* `scanner` [1.0]: another scanner, several at once, scaled by s: gamma 1 + 0.5 s, contrast
  1 - 0.3 s, blur 0.7 s px, noise 0.04 s.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
import torch.nn.functional as F

from ..errors import MedTransferError
from .base import Split, TaskDataset
from .fingerprint import dataset_fingerprint, digest
from .schemes import LoadOptions, load_spec, reads, register_scheme

KINDS = {
    "gamma": (1.8, "intensity curve x**g (another detector response)"),
    "contrast": (0.5, "contrast scaled by c around each image's mean (another window / kVp)"),
    "brightness": (0.15, "offset added to every pixel (a calibration offset)"),
    "blur": (1.0, "Gaussian blur, sigma in stored pixels (a softer kernel, larger focal spot)"),
    "noise": (0.08, "additive Gaussian noise, SD on the [0, 1] scale, seeded (a lower dose)"),
    "lowres": (2.0, "downsampled by the factor and upsampled back (a lower-resolution detector)"),
    "scanner": (1.0, "another scanner: gamma 1+0.5s, contrast 1-0.3s, blur 0.7s px, noise 0.04s"),
}
NOISE_SEED = 20240611  # fixed: the same spec gives the same images on every machine and call
SPLITS = ("train", "val", "test")
CHUNK = 2048  # images per transform call, bounds memory on large datasets


def parse_shift(arg: str) -> tuple[str, float, str]:
    """'gamma:medmnist:pneumoniamnist' -> ('gamma', 1.8, 'medmnist:pneumoniamnist');
    'blur:1.5:medmnist:breastmnist' -> ('blur', 1.5, 'medmnist:breastmnist')."""
    kind, _, rest = arg.partition(":")
    kind = kind.strip().lower()
    if kind not in KINDS:
        raise MedTransferError(f"unknown shift kind {kind!r} in 'shift:{arg}'; choose one of: {', '.join(KINDS)} "
                               "(e.g. shift:gamma:1.8:medmnist:pneumoniamnist)")
    head, sep, tail = rest.partition(":")
    strength = KINDS[kind][0]
    try:
        strength, rest = float(head), tail
    except ValueError:
        pass  # no strength given: `rest` is the dataset
    if not rest or ":" not in rest:
        raise MedTransferError(f"'shift:{arg}' names no dataset; use shift:{kind}[:strength]:<dataset>, "
                               f"e.g. shift:{kind}:medmnist:pneumoniamnist")
    check_strength(kind, strength)
    return kind, strength, rest


def check_strength(kind: str, s: float) -> None:
    ok = {"gamma": s > 0, "contrast": s >= 0, "brightness": -1 <= s <= 1, "blur": s >= 0, "noise": s >= 0,
          "lowres": s >= 1, "scanner": 0 <= s <= 3}[kind]
    if not ok or not math.isfinite(s):
        limits = {"gamma": "> 0", "contrast": ">= 0", "brightness": "in [-1, 1]", "blur": ">= 0 (pixels)",
                  "noise": ">= 0", "lowres": ">= 1 (a factor)", "scanner": "in [0, 3]"}[kind]
        raise MedTransferError(f"shift strength {s} for {kind!r} must be {limits}")


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (N, C, H, W) images, reflect padding, per channel."""
    if sigma <= 0:
        return x
    radius = max(1, int(math.ceil(3 * sigma)))
    radius = min(radius, x.shape[-1] - 1, x.shape[-2] - 1)
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    kernel = torch.exp(-t ** 2 / (2 * sigma ** 2))
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    out = F.pad(x, (radius, radius, 0, 0), mode="reflect")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    out = F.pad(out, (0, 0, radius, radius), mode="reflect")
    return F.conv2d(out, kernel.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def low_resolution(x: torch.Tensor, factor: float) -> torch.Tensor:
    h, w = x.shape[-2:]
    small = (max(1, round(h / factor)), max(1, round(w / factor)))
    return F.interpolate(F.interpolate(x, size=small, mode="area"), size=(h, w), mode="bilinear", align_corners=False)


def apply_shift(x: torch.Tensor, kind: str, strength: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """The shift on a batch of [0, 1] images (N, C, H, W[, D]); same shape and dtype, values in [0, 1]."""
    dtype = x.dtype
    x = x.float()
    spatial = x.ndim == 4
    if kind in ("blur", "lowres") and not spatial:
        raise MedTransferError(f"shift {kind!r} is for 2D images; 3D volumes take gamma, contrast, brightness or noise")
    if kind == "gamma":
        out = x.clamp(0, 1) ** strength
    elif kind == "contrast":
        mean = x.mean(dim=tuple(range(1, x.ndim)), keepdim=True)
        out = mean + strength * (x - mean)
    elif kind == "brightness":
        out = x + strength
    elif kind == "blur":
        out = gaussian_blur(x, strength)
    elif kind == "noise":
        out = x + strength * torch.randn(x.shape, generator=generator)
    elif kind == "lowres":
        out = low_resolution(x, strength)
    else:  # scanner
        out = apply_shift(x, "gamma", 1 + 0.5 * strength)
        out = apply_shift(out, "contrast", max(0.0, 1 - 0.3 * strength))
        if spatial:
            out = apply_shift(out, "blur", 0.7 * strength)
        out = apply_shift(out, "noise", 0.04 * strength, generator)
    return out.clamp_(0, 1).to(dtype)


def shift_split(split: Split, kind: str, strength: float, seed: int) -> Split:
    generator = torch.Generator().manual_seed(seed)
    parts = [apply_shift(split.x[i:i + CHUNK], kind, strength, generator) for i in range(0, len(split.x), CHUNK)]
    x = torch.cat(parts) if parts else split.x.clone()
    return Split(x.contiguous(), split.y, split.ids)  # the same examples: the same ids


def shifted_dataset(dataset: TaskDataset, kind: str, strength: float) -> TaskDataset:
    if dataset.modality == "tabular":
        raise MedTransferError(f"shift:{kind} transforms images; {dataset.name} is a table")
    splits = {name: shift_split(dataset.split(name), kind, strength, NOISE_SEED + i) for i, name in enumerate(SPLITS)}
    label = f"{strength:g}"
    info = dict(dataset.info, shift={"kind": kind, "strength": strength, "description": KINDS[kind][1],
                                     "of": dataset.name},
                fingerprint=digest("shift", kind, strength, NOISE_SEED, dataset_fingerprint(dataset)))
    return replace(dataset, name=f"shift:{kind}:{label}:{dataset.name}", info=info, **splits)


@register_scheme("shift", help="an image dataset under a known, seeded acquisition shift (every split, labels "
                               "kept): shift:<kind>[:<strength>]:<dataset>, kind gamma, contrast, brightness, blur, "
                               "noise, lowres or scanner, e.g. shift:gamma:1.8:medmnist:pneumoniamnist",
                 reads=lambda arg: reads(parse_shift(arg)[2]))  # what the wrapped dataset reads
def load_shifted(arg: str, options: LoadOptions) -> TaskDataset:
    """The wrapped dataset is loaded with the same options, so shifts compose with any scheme."""
    kind, strength, inner = parse_shift(arg)
    return shifted_dataset(load_spec(inner, options), kind, strength)
