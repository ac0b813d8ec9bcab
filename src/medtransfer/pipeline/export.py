"""`export`: a saved run as one ONNX or TorchScript file that outputs the run's class probabilities, with
its input contract and operating point inside the file and in a sidecar `<file>.json`.

Why the parity check is part of the export, not a test: an exporter can drop or change an operation
silently (a resize mode, a calibration step). So the written file is run (onnxruntime on the CPU, or the
TorchScript reloaded from disk) on the run's own test split and compared with `predict_proba` of the
PyTorch model; the file is kept only when the largest absolute probability difference is at most
`TOLERANCE`, and that number is recorded in the sidecar. A failed export leaves nothing behind, and an
existing file replaced with `overwrite` is swapped only once the new one has passed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data import load_dataset
from ..data.tabular import TabularEncoder
from ..errors import MedTransferError
from ..models import export_formats as formats
from ..models.checkpoint import file_sha256, load_checkpoint
from ..models.inference import predict_proba
from ..runs import check_file_writable, dumps
from .export_contract import INPUT_NAMES, describe, flat_metadata
from .reuse import check_inputs, read_config
from .run_folder import require_classifier

FORMATS = ("onnx", "torchscript")
TOLERANCE = 1e-4  # largest absolute probability difference allowed between the file and the run's model
RUNTIMES = {"onnx": "onnxruntime {} CPUExecutionProvider", "torchscript": "torch.jit.load (torch {}) on the CPU"}


@dataclass
class ExportResult:
    path: Path  # the model file
    sidecar: Path  # <path>.json: the description, the file's digest and the parity check
    format: str
    max_abs_diff: float  # the largest |file - model| probability on the checked examples
    n_checked: int  # test examples the file was checked on
    description: dict  # what the sidecar holds


def export(run: str | Path, format: str, out: str | Path, *, overwrite: bool = False,  # noqa: A002 - --format
           data_root=None, examples: int | None = None) -> ExportResult:
    """Write the run's model as `format` ("onnx" or "torchscript") to `out`, and `<out>.json`. The file takes
    the inputs `predict` gives the model (images in [0, 1] decoded as the training images, 3D volumes, encoded
    table rows, signals) with a dynamic batch axis and outputs probabilities. `examples`: check parity on the
    first N test examples only (default: the whole test split). `data_root`: where the run's dataset is, when
    not where it was at training."""
    fmt = check_format(format)
    run, out = Path(run), Path(out)
    sidecar = out.with_name(out.name + ".json")
    check_destination(out, sidecar, overwrite)
    model, meta = load_checkpoint(run)
    require_classifier(meta, run)
    if meta["input"]["modality"] not in INPUT_NAMES:
        raise MedTransferError(f"{run} is a {meta['input']['modality']} model, which export does not support yet "
                               "(the text encoder crops each batch to its longest text, a shape the exporters cannot "
                               "follow); use `medtransfer predict` with the run instead")
    x, data = test_inputs(run, meta, data_root, examples)
    check_inputs(model, x)
    expected = predict_proba(model, x, meta["task"])
    description = describe(run, meta, tuple(x.shape[1:]))
    partial = out.with_name(f".{out.name}.partial")
    try:
        write(fmt, formats.Probabilities(model, meta["task"]), x, partial, description)
        got = formats.run_onnx(partial, x) if fmt == "onnx" else formats.run_torchscript(partial, x)
        diff = float(np.abs(got.astype(np.float64) - expected).max())
        if not diff <= TOLERANCE:  # NaN fails too
            raise MedTransferError(
                f"the exported {fmt} file does not reproduce {run}: max |Δp| = {diff:.3g} on {len(x)} test examples "
                f"of {data} (allowed {TOLERANCE:g}); nothing was written. Try the other --format, and report the "
                f"backbone ({meta['architecture'].get('name', meta['architecture']['kind'])}) as a bug")
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    record = {**description, "file": file_record(fmt, out),
              "parity": {"max_abs_diff": diff, "tolerance": TOLERANCE, "n": len(x), "split": "test", "data": data,
                         "runtime": runtime(fmt), "reference": "medtransfer predict_proba (PyTorch, CPU)"}}
    write_sidecar(sidecar, record)
    return ExportResult(out, sidecar, fmt, diff, len(x), record)


def check_format(format: str) -> str:  # noqa: A002
    fmt = str(format).strip().lower()
    if fmt not in FORMATS:
        raise MedTransferError(f"unknown export format {format!r}; choose {' or '.join(FORMATS)} (--format)")
    return fmt


def check_destination(out: Path, sidecar: Path, overwrite: bool) -> None:
    """Refuse, before any work, an --out that is a folder, exists (unless `overwrite`), or cannot be written."""
    if out.is_dir():
        raise MedTransferError(f"--out {out} is a folder; give a file path, e.g. {out / 'model.onnx'}")
    for path in (out, sidecar):
        check_file_writable(path, "--out", overwrite)


def test_inputs(run: Path, meta: dict, data_root, examples: int | None) -> tuple[torch.Tensor, str]:
    """The run's test split, loaded as `evaluate` loads the run's own dataset (its columns, encoding and split
    seed), as the tensors the model takes; the first `examples` of them when given."""
    config = read_config(run)
    data = config.get("data")
    if not data:
        raise MedTransferError(f"{run} does not record its dataset (config.json 'data'); export checks the file on "
                               "the run's test split, so it needs the run folder medtransfer wrote")
    encoder = TabularEncoder.from_dict(meta["encoder"]) if meta.get("encoder") else None
    try:
        dataset = load_dataset(data, data_root=data_root or config.get("data_root"), target=config.get("target"),
                               group=config.get("group"), id=config.get("id_column"),
                               drop=tuple(config.get("drop") or ()), text=config.get("text_column"), encoder=encoder,
                               split_seed=config.get("split_seed", 0))
    except MedTransferError as exc:
        raise MedTransferError(f"export checks the file on the run's test split, but {data} did not load: {exc}") \
            from None
    x = dataset.test.x
    if len(x) == 0:
        raise MedTransferError(f"the test split of {data} is empty: there is nothing to check the exported file on")
    return (x[:examples] if examples else x), data


def write(fmt: str, module: formats.Probabilities, x: torch.Tensor, path: Path, description: dict) -> None:
    """The file, traced on two real test examples (one would let the exporter fix the batch axis at 1)."""
    example = x[:2] if len(x) > 1 else torch.cat([x, x])
    dynamic = {axis: name for axis, name in enumerate(description["input"]["shape"]) if isinstance(name, str)}
    if fmt == "onnx":
        formats.write_onnx(module, example, path, description["input"]["name"], dynamic, flat_metadata(description))
    else:
        formats.write_torchscript(module, example, path, description)


def file_record(fmt: str, path: Path) -> dict:
    record = {"name": path.name, "format": fmt, "sha256": file_sha256(path), "bytes": path.stat().st_size,
              "torch": torch.__version__}
    if fmt == "onnx":
        import onnx

        record.update(opset=formats.OPSET, onnx=onnx.__version__, exporter="torch.onnx.export(dynamo=False)",
                      metadata="metadata_props: 'medtransfer' (this description as JSON), task, classes, "
                               "positive_class, threshold, decision, model_version, input_name, input_shape")
    else:
        record.update(exporter="torch.jit.trace", metadata=f"extra file {formats.METADATA_FILE!r} "
                      "(this description as JSON): torch.jit.load(path, _extra_files={...})")
    return record


def runtime(fmt: str) -> str:
    if fmt == "onnx":
        import onnxruntime
        return RUNTIMES[fmt].format(onnxruntime.__version__)
    return RUNTIMES[fmt].format(torch.__version__)


def write_sidecar(path: Path, record: dict) -> None:
    """Written beside and renamed into place, so a reader never sees half a file."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(dumps(record, indent=2, where=path.name))
    os.replace(partial, path)
