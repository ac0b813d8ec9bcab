"""Post-hoc calibration as a part of the model: a map from the head's logits to calibrated logits.

Why inside the model rather than beside it: every door that turns inputs into probabilities (the run's
own evaluation, `evaluate`, `predict`, and later export and serving) runs the model's forward, so a
calibration fitted on validation can never be forgotten by one of them. The numbers are buffers (saved
in model.safetensors); model.json records the method and size so the loader builds the same module.

The parameters are fitted by `evaluation.calibration.fit_calibration`; `calibrate_logits` there is the
numpy reference this module matches:
- temperature: logits / T;
- platt (binary): softmax gives sigmoid(a (l1 - l0) + b), as [a l0 - b/2, a l1 + b/2];
- isotonic (binary): the positive probability mapped through the isotonic knots (linear interpolation,
  clamped at the ends), returned as logits [0, logit(p)]. The interpolation is a sum of clamped ramps,
  elementwise operations only, so it exports to ONNX as it is.
"""

from __future__ import annotations

import torch
from torch import nn

METHODS = ("temperature", "platt", "isotonic")
EPS = 1e-6


class Calibration(nn.Module):
    def __init__(self, method: str, num_outputs: int, knots: int = 0):
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"unknown calibration {method!r}; expected one of {', '.join(METHODS)}")
        self.method = method
        self.register_buffer("scale", torch.ones(1))
        self.register_buffer("bias", torch.zeros(num_outputs))
        self.register_buffer("knots_x", torch.zeros(knots))
        self.register_buffer("knots_y", torch.zeros(knots))

    @classmethod
    def from_params(cls, method: str, params: dict, num_outputs: int) -> "Calibration":
        """The module for parameters fitted by `fit_calibration`."""
        module = cls(method, num_outputs, len(params.get("x", ())))
        if method == "temperature":
            module.scale.fill_(1.0 / float(params["temperature"]))
        elif method == "platt":
            module.scale.fill_(float(params["a"]))
            module.bias.copy_(torch.tensor([-params["b"] / 2, params["b"] / 2], dtype=torch.float32))
        else:
            module.knots_x.copy_(torch.as_tensor(params["x"], dtype=torch.float32))
            module.knots_y.copy_(torch.as_tensor(params["y"], dtype=torch.float32))
        return module

    def describe(self) -> dict:
        """What model.json records: enough to build this module before its buffers are loaded."""
        return {"method": self.method, "knots": int(self.knots_x.numel())}

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        if self.method != "isotonic":
            return logits * self.scale + self.bias
        q = torch.softmax(logits.float(), dim=1)[:, 1:2]
        x, y = self.knots_x, self.knots_y
        ramps = ((q - x[:-1]) / (x[1:] - x[:-1]).clamp(min=1e-12)).clamp(0, 1)
        p = (y[0] + (ramps * (y[1:] - y[:-1])).sum(dim=1, keepdim=True)).clamp(EPS, 1 - EPS)
        return torch.cat([torch.zeros_like(p), torch.log(p) - torch.log1p(-p)], dim=1).to(logits.dtype)
