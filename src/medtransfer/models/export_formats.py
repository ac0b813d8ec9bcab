"""A classifier as a file another runtime can run: ONNX (through onnxruntime, and from there TensorFlow
and others) or TorchScript (C++ / mobile PyTorch without Python).

What is exported is `Probabilities`: the whole `Classifier` (preprocess, backbone, head, calibration) followed
by the softmax / sigmoid `inference.probabilities` applies, so the file outputs the probabilities `predict`
prints, from the inputs `predict` feeds the model. The batch axis is dynamic. The run's description (classes,
operating point, input contract) goes into the file itself: ONNX `metadata_props`, TorchScript extra files.

ONNX goes through PyTorch's TorchScript-based exporter (`torch.onnx.export(dynamo=False)`) at opset `OPSET`:
it exports every backbone family here (timm 2D, MONAI 3D ResNets, the MLP, 1D-CNN, LSTM, GRU) in 0.2-6 s.
The torch.export-based exporter (`dynamo=True`, PyTorch's default since 2.9) gives the same probabilities
(max |delta p| <= 1.2e-7 on the same runs) but takes 10-20 s per model and 1.5-3.5 minutes for a GRU, and
needs torch >= 2.5; switch `dynamo` here when PyTorch drops the TorchScript-based one. TorchScript is a
trace (`torch.jit.trace`), like that exporter: the input layout is fixed by the contract, so the branches
the preprocess takes on it are the ones recorded; the batch axis (and a signal's time axis) stay free.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings

import numpy as np
import torch
from torch import nn

from ..defaults import EVAL_BATCH_SIZE
from .inference import probabilities

OPSET = 18
METADATA_FILE = "medtransfer.json"  # TorchScript: the extra file holding the description
OUTPUT = "probabilities"


class Probabilities(nn.Module):
    """The classifier and the softmax / sigmoid of its task: one graph from inputs to probabilities."""

    def __init__(self, model: nn.Module, task: str):
        super().__init__()
        self.model = model
        self.task = task

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return probabilities(self.model(x).float(), self.task)


def write_onnx(module: Probabilities, example: torch.Tensor, path, input_name: str, dynamic: dict[int, str],
               metadata: dict[str, str]) -> None:
    """`module` as one ONNX file, `dynamic` naming the input axes that vary ({0: "batch"}, and {2: "time"}
    for signals), `metadata` in its metadata_props."""
    import onnx

    with quiet(), torch.no_grad():
        torch.onnx.export(module.eval(), (example,), str(path), input_names=[input_name], output_names=[OUTPUT],
                          dynamo=False, opset_version=OPSET, dynamic_axes={input_name: dynamic, OUTPUT: {0: "batch"}})
    proto = onnx.load(str(path))
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = metadata.get("description", "")
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def read_onnx_metadata(path) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def run_onnx(path, x: torch.Tensor, batch_size: int = EVAL_BATCH_SIZE) -> np.ndarray:
    """The file's outputs for `x` through onnxruntime on the CPU, in batches."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run([OUTPUT], {name: x[i:i + batch_size].numpy()})[0]
                           for i in range(0, len(x), batch_size)])


def write_torchscript(module: Probabilities, example: torch.Tensor, path, metadata: dict) -> None:
    """`module` traced on `example` and saved with the description as the extra file `METADATA_FILE`.
    The trace is not re-checked here: the export compares the saved file with the model on the whole test
    split, which is the stronger check."""
    with quiet(), torch.no_grad():
        traced = torch.jit.trace(module.eval(), example, check_trace=False)
    with quiet():  # torch.jit.save/load warn that TorchScript is deprecated: the format is still what they write
        torch.jit.save(traced, str(path), _extra_files={METADATA_FILE: json.dumps(metadata)})


def read_torchscript_metadata(path) -> dict:
    files = {METADATA_FILE: ""}
    with quiet():
        torch.jit.load(str(path), map_location="cpu", _extra_files=files)
    return json.loads(files[METADATA_FILE])


@torch.no_grad()
def run_torchscript(path, x: torch.Tensor, batch_size: int = EVAL_BATCH_SIZE) -> np.ndarray:
    """The saved TorchScript module's outputs for `x` on the CPU, in batches, loaded afresh from the file."""
    with quiet():
        module = torch.jit.load(str(path), map_location="cpu").eval()
    return np.concatenate([module(x[i:i + batch_size]).float().numpy() for i in range(0, len(x), batch_size)])


@contextlib.contextmanager
def quiet():
    """Silence the exporters' own warnings and log lines (they speak of the tracer, not of the user's run):
    what matters is checked afterwards by running the written file."""
    loggers = [(logging.getLogger(name), logging.getLogger(name).level) for name in ("torch", "onnxscript")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for logger, _ in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in loggers:
                logger.setLevel(level)
