"""Physiological signals (N, C, T) through a 1D-CNN or a recurrent network.

- `cnn1d`: the residual 1D-CNN of Wang et al. 2017 ("Time series classification from scratch with deep
  neural networks"), the standard baseline of the UCR archive: three residual blocks of three convolutions
  (kernels 7, 5, 3: odd, so "same" padding is symmetric; 64, 128, 128 filters), global average pooling.
  Options after a colon: `width=32` (the first block's filters; the others twice that), `stride=4` (average
  pooling over 4 samples first: a 1,024-sample EEG segment costs a quarter).
- `lstm`, `gru`: a recurrent network; options after a colon, comma-separated: `hidden=64`, `layers=1`,
  `bi` (bidirectional), `stride=4` (a strided convolution first, one step per 4 samples: a 1,024-sample
  EEG segment is then 256 steps, which a CPU can afford). Features: the mean over time and the last step
  of the top layer, concatenated. E.g. `gru:hidden=64,bi,stride=4`.

Both are length-agnostic (pooling over time), so a source trained on 140-sample beats runs on 96-sample
beats; what must match is the sampling rate, checked from the input spec.
"""

from __future__ import annotations

import torch
from torch import nn

from ...errors import MedTransferError
from .base import BackboneKind, register_kind

RNN_CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}
OPTIONS = {"cnn1d": {"width": 64, "stride": 1},
           "lstm": {"hidden": 64, "layers": 1, "bi": False, "stride": 1}}
OPTIONS["gru"] = OPTIONS["lstm"]


class ResidualBlock1d(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernels=(7, 5, 3)):
        super().__init__()
        layers = []
        for i, k in enumerate(kernels):
            layers += [nn.Conv1d(c_in if i == 0 else c_out, c_out, k, padding="same", bias=False),
                       nn.BatchNorm1d(c_out)]
            if i < len(kernels) - 1:
                layers.append(nn.ReLU())
        self.body = nn.Sequential(*layers)
        self.shortcut = nn.Sequential(nn.Conv1d(c_in, c_out, 1, bias=False), nn.BatchNorm1d(c_out))
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.body(x) + self.shortcut(x))


class ResNet1d(nn.Module):
    """Three residual blocks, then the mean over time (Wang et al. 2017)."""

    def __init__(self, channels: int, width: int = 64, stride: int = 1):
        super().__init__()
        self.stem = nn.AvgPool1d(stride) if stride > 1 else None
        widths = [width, 2 * width, 2 * width]
        self.block1 = ResidualBlock1d(channels, widths[0])
        self.block2 = ResidualBlock1d(widths[0], widths[1])
        self.block3 = ResidualBlock1d(widths[1], widths[2])
        self.out_features = widths[2]

    def forward(self, x):
        if self.stem is not None:
            x = self.stem(x)
        return self.block3(self.block2(self.block1(x))).mean(dim=2)


class Recurrent1d(nn.Module):
    """[strided convolution ->] stacked LSTM/GRU layers (one module each, so the first ones can be
    frozen) -> [mean over time, last step]."""

    def __init__(self, cell: str, channels: int, hidden: int, layers: int, bi: bool, stride: int):
        super().__init__()
        self.stem = (nn.Sequential(nn.Conv1d(channels, hidden, stride, stride=stride), nn.ReLU())
                     if stride > 1 else None)
        width = hidden if stride > 1 else channels
        directions = 2 if bi else 1
        for i in range(layers):
            self.add_module(f"rnn{i}", RNN_CELLS[cell](width, hidden, batch_first=True, bidirectional=bi))
            width = hidden * directions
        self.layers = layers
        self.out_features = 2 * width

    def forward(self, x):
        if self.stem is not None:
            x = self.stem(x)
        h = x.transpose(1, 2)  # (N, T, C): batch_first
        for i in range(self.layers):
            h, _ = getattr(self, f"rnn{i}")(h)
        return torch.cat([h.mean(dim=1), h[:, -1]], dim=1)


def parse_options(name: str) -> dict:
    """`gru:hidden=64,bi,stride=4` -> {"family": "gru", "hidden": 64, "layers": 1, "bi": True, "stride": 4}."""
    family, _, rest = name.partition(":")
    options = dict(OPTIONS[family])
    example = "cnn1d:width=32,stride=4" if family == "cnn1d" else f"{family}:hidden=64,bi,stride=4"
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, eq, value = item.partition("=")
        if key == "bi" and not eq and "bi" in options:
            options["bi"] = True
            continue
        if key not in options or key == "bi" or not eq:
            known = ", ".join(k if k == "bi" else f"{k}=N" for k in options)
            raise MedTransferError(f"bad {family} backbone {name!r}: its options are {known}, e.g. {example}")
        try:
            options[key] = int(value)
        except ValueError:
            options[key] = 0
        if options[key] < 1:
            raise MedTransferError(f"bad {family} backbone {name!r}: {key} must be a whole number >= 1, e.g. {example}")
    return {"family": family, **options}


@register_kind
class Signal1D(BackboneKind):
    name = "signal1d"
    modality = "signal"

    def claims(self, name: str) -> bool:
        return name.partition(":")[0] in OPTIONS

    def refuse(self, name: str) -> str:
        return f"backbone {name!r} does not take signals; signals take cnn1d, lstm or gru (e.g. gru:hidden=64,bi)"

    def describe(self, name: str, channels: int, n_features: int) -> dict:
        return {"kind": self.name, "name": name, "in_chans": channels, **parse_options(name)}

    def build(self, architecture: dict) -> tuple[nn.Module, int]:
        a = architecture
        if a["family"] == "cnn1d":
            backbone = ResNet1d(a["in_chans"], a["width"], a["stride"])
        else:
            backbone = Recurrent1d(a["family"], a["in_chans"], a["hidden"], a["layers"], a["bi"], a["stride"])
        return backbone, backbone.out_features
