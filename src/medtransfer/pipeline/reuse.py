"""Reusing a saved run: its metrics on a split of its own or another dataset (`evaluate`), and its
class probabilities for new inputs (`predict`)."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import torch

from ..data import is_dataset_spec, load_dataset
from ..data.tabular import TabularEncoder
from ..defaults import N_BOOT
from ..errors import MedTransferError
from ..evaluation import compute_metrics
from ..evaluation.threshold import OperatingPoint, parse_rule
from ..models.checkpoint import load_checkpoint
from ..models.inference import predict_proba
from ..models.sources import check_compatible, signal_warning
from ..runs import predictions_frame, read_json
from .operating import class_names, counts, decided, scoring_options
from .run import check_probabilities
from .run_folder import require_classifier

log = logging.getLogger("medtransfer")


SPLITS = ("train", "val", "test", "all")


def evaluate(run: str | Path, data: str | None = None, split: str = "test", data_root=None,
             n_boot: int = N_BOOT, seed: int = 0) -> tuple[dict, pd.DataFrame]:
    """Metrics (with 95% CIs) of a saved run on a split of its own or another dataset, at the run's
    operating point (its threshold and positive class, chosen on its own validation split), and the
    per-example predictions. `split="all"` scores every example of the dataset: external validation
    of a whole site. The metrics dict also holds "operating_point" and "counts" (n per class)."""
    if split not in SPLITS:
        raise MedTransferError(f"unknown split {split!r}; choose {', '.join(SPLITS[:-1])} or {SPLITS[-1]} (--split)")
    run = Path(run)
    model, meta = load_checkpoint(run)
    require_classifier(meta, run)
    config = read_config(run)
    data = data or config.get("data")
    if not data:
        raise MedTransferError(f"{run} does not record its dataset: pass --data")
    encoder = TabularEncoder.from_dict(meta["encoder"]) if meta.get("encoder") else None
    same_data = data == config.get("data")  # its own dataset: the split the run was tested on
    dataset = load_dataset(data, data_root=data_root or config.get("data_root"), target=config.get("target"),
                           group=config.get("group"), id=config.get("id_column"), drop=tuple(config.get("drop") or ()),
                           text=config.get("text_column"),
                           encoder=encoder, split_seed=config.get("split_seed", 0) if same_data else 0)
    check_compatible(model, dataset.modality, dataset.in_channels, dataset.info.get("features"),
                     rate=dataset.info.get("rate"), tokenizer=dataset.info.get("tokenizer"))
    warnings = [*dataset.info.get("warnings", []), *filter(None, [signal_warning(model.spec, dataset)])]
    for warning in warnings:
        log.warning(warning)
    part = dataset.split(split)
    if len(part) == 0:
        raise MedTransferError(f"the {split} split of {data} is empty; evaluate another split (--split), or "
                               "--split all for every example")
    y = labels_as_model_classes(part.y, dataset, meta["classes"], data)
    prob = predict_proba(model, part.x, dataset.task)
    check_probabilities(prob, f"the {split} split of {data}")
    point, options = stored_operating_point(meta)
    metrics = compute_metrics(y.numpy(), prob, dataset.task, n_boot=n_boot, seed=seed, **options)
    predicted = decided(prob, dataset.task, point)
    frame = predictions_frame(split, y.numpy(), prob, meta["classes"], part.id_list(split),
                              class_names(predicted, meta["classes"]))
    metrics["operating_point"] = point.to_dict(meta["classes"])
    if warnings:
        metrics["warnings"] = warnings
    if dataset.task != "multilabel":
        metrics["counts"] = {"n": len(y), "per_class": counts(y.numpy(), meta["classes"])}
        if predicted is not None:
            metrics["counts"]["predicted"] = counts(predicted, meta["classes"])
    return metrics, frame


def labels_as_model_classes(y, dataset, classes: list[str], data: str):
    """The labels as indices of the model's classes. An external set may hold only some of them (a
    folder with no example of a rare class); a class the model does not know is refused."""
    if dataset.classes == classes:
        return y
    unknown = [c for c in dataset.classes if c not in classes]
    if unknown or dataset.task == "multilabel":
        raise MedTransferError(f"class mismatch: the model predicts {classes}, {data} has {dataset.classes}")
    mapping = torch.tensor([classes.index(c) for c in dataset.classes])
    return mapping[y]


def stored_operating_point(meta: dict):
    """The run's operating point from model.json, as (OperatingPoint, the keyword arguments of
    compute_metrics). A run older than operating points: 0.5 (argmax), the second class positive, as it
    was scored then."""
    classes, task = meta["classes"], meta["task"]
    block = meta.get("operating_point") or {"rule": parse_rule(None, task),
                                            "threshold": None if task == "multiclass" else 0.5}
    point = OperatingPoint.from_dict(block, classes)
    if task == "binary" and point.positive is None:
        point.positive = 1
    return point, scoring_options(point, classes)


def read_config(run: Path) -> dict:
    """The run's config.json ({} when absent); a damaged one is named."""
    path = run / "config.json"
    if not path.is_file():
        return {}
    try:
        config = read_json(path)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MedTransferError(f"{path} is not valid JSON ({exc}); restore the file or re-run the transfer") from None
    if not isinstance(config, dict):
        raise MedTransferError(f"{path} is not a run configuration (not a JSON object); restore the file")
    return config


def predict(run: str | Path, inputs: str, data_root=None) -> pd.DataFrame:
    """Class probabilities of a saved run for new inputs: a CSV of patients, image files or a folder of
    images, or a dataset spec (its test split). Values the model's encoding could not read (a category
    never seen in training, text in a numeric column) are imputed as missing, as the model was trained
    to handle, and named in `frame.attrs["warnings"]` and on the "medtransfer" logger."""
    run = Path(run)
    model, meta = load_checkpoint(run)
    require_classifier(meta, run)
    warnings: list[str] = []
    x, ids, id_name = read_inputs(meta, inputs, data_root, warnings)
    return probability_frame(model, meta, x, ids, warnings, id_name)


def predict_tensor(run: str | Path, x: torch.Tensor, ids: list[str], warnings: list[str] | None = None) -> pd.DataFrame:
    """`predict` for inputs already in the model's form: the API's DataFrame and image-array inputs,
    converted there, give the same table as a CSV or image files."""
    run = Path(run)
    model, meta = load_checkpoint(run)
    require_classifier(meta, run)
    return probability_frame(model, meta, x, ids, warnings or [])


def predict_frame(run: str | Path, frame: pd.DataFrame) -> pd.DataFrame:
    """`predict` for a DataFrame of patients (a tabular run): encoded as its CSV would be, with the
    same warnings."""
    run = Path(run)
    model, meta = load_checkpoint(run)
    require_classifier(meta, run)
    if meta["input"]["modality"] == "text":  # a table of texts
        from ..data.text import frame_inputs
        x, ids, id_name = frame_inputs(frame, "the DataFrame", meta.get("text_column"), meta["input"].get("tokenizer"),
                                       meta.get("id_column"))
        return probability_frame(model, meta, x, ids, [], id_name)
    if not meta.get("encoder"):
        raise MedTransferError(f"a table of patients fits a tabular model, but {run} takes "
                               f"{meta['input']['modality']} inputs: give image files or a dataset spec")
    warnings: list[str] = []
    x = encode_rows(meta, frame, "the DataFrame", warnings)
    ids, id_name = row_ids(meta, frame)
    return probability_frame(model, meta, x, ids, warnings, id_name)


def probability_frame(model, meta: dict, x: torch.Tensor, ids: list[str], warnings: list[str],
                      id_name: str = "input") -> pd.DataFrame:
    """One row per input: its id (column `id_name`), one probability per class and (single-label) the
    class decided at the run's operating point; binary runs also name the positive class and the
    threshold. The warnings ride along in `frame.attrs["warnings"]` and are logged."""
    check_inputs(model, x)
    classes, task = meta["classes"], meta["task"]
    prob = predict_proba(model, x, task)
    check_probabilities(prob, "these inputs")
    frame = pd.DataFrame(prob, columns=[f"prob_{c}" for c in classes])
    frame.insert(0, id_name, list(ids))
    point, options = stored_operating_point(meta)
    predicted = class_names(decided(prob, task, point), classes)
    if predicted is not None:
        frame["predicted"] = predicted
    if task == "binary":
        frame["positive_class"] = classes[point.positive]
        frame["threshold"] = options["threshold"]
    for warning in warnings:
        log.warning(warning)
    frame.attrs["warnings"] = list(warnings)
    return frame


def check_inputs(model, x: torch.Tensor) -> None:
    """The inputs have the shape the model takes (so a wrong input is one line, not a convolution error)."""
    spec = model.spec
    if len(x) == 0:
        raise MedTransferError("no inputs to predict on")
    if spec.modality == "tabular":
        ok = x.ndim == 2 and (not spec.features or x.shape[1] == len(spec.features))
        wanted = f"(N, {len(spec.features)}) encoded features"
    elif spec.modality == "text":
        ok = x.ndim == 3 and x.shape[1] == 2 and not x.is_floating_point()
        wanted = "token ids and attention masks (N, 2, L), int64"
    elif spec.modality == "signal":
        ok = x.ndim == 3 and x.shape[1] == spec.channels
        wanted = f"signals (N, {spec.channels}, T) with {spec.channels} channel(s)"
    else:
        ndim = 4 if spec.modality == "image2d" else 5
        ok = x.ndim == ndim and x.shape[1] in (spec.channels, 1)
        wanted = f"{spec.modality} images with {spec.channels} (or 1) channel(s)"
    if not ok:
        raise MedTransferError(f"the model takes {wanted}, got inputs of shape {tuple(x.shape)}")


def encode_rows(meta: dict, frame: pd.DataFrame, where: str, warnings: list[str]) -> torch.Tensor:
    if len(frame) == 0:
        raise MedTransferError(f"{where} has no rows to predict on")
    return torch.from_numpy(TabularEncoder.from_dict(meta["encoder"]).transform(frame, where, warnings))


def row_ids(meta: dict, frame: pd.DataFrame) -> tuple[list[str], str]:
    """(an id per row, the id column's name): the run's `--id` column when the table has it (the user's
    own patient identifiers, kept), else the row number under "input"."""
    column = meta.get("id_column")
    if column and column in frame.columns:
        return list(frame[column].astype(str)), column
    return list(frame.index.astype(str)), "input"


def read_inputs(meta: dict, inputs: str, data_root=None,
                warnings: list[str] | None = None) -> tuple[torch.Tensor, list[str], str]:
    """New inputs as the model's tensors, with an identifier per row and the identifier's column name.
    Image files are decoded by the one decoder the training folder went through, to the channels and
    size the training images had (`data_shape` in model.json), so a file gives the tensor it would have
    given in training."""
    from ..data.folder import decode_images, image_files
    from ..data.tabular import read_csv

    warnings = [] if warnings is None else warnings
    path = Path(inputs).expanduser()
    if meta.get("encoder") and path.suffix.lower() == ".csv":
        if not path.is_file():
            raise MedTransferError(f"CSV file {path} not found")
        frame = read_csv(path)
        return (encode_rows(meta, frame, str(path), warnings), *row_ids(meta, frame))
    if path.exists() and meta["input"]["modality"] == "image2d":
        files = image_files(path)
        if not files:
            raise MedTransferError(f"no PNG/JPEG/DICOM images in {path}")
        channels, size = decoded_layout(meta)
        return decode_images(files, size, channels), [str(f) for f in files], "input"
    if path.is_file() and meta["input"]["modality"] == "text":  # a CSV/TSV of texts, tokenised as in training
        from ..data.text import read_text_inputs
        return read_text_inputs(path, meta.get("text_column"), meta["input"].get("tokenizer"), meta.get("id_column"))
    if path.exists() and meta["input"]["modality"] == "signal":
        return (*read_signal_inputs(meta, path, warnings), "input")
    if is_dataset_spec(inputs):
        encoder = TabularEncoder.from_dict(meta["encoder"]) if meta.get("encoder") else None
        dataset = load_dataset(inputs, data_root=data_root, encoder=encoder)
        warnings += dataset.info.get("warnings", [])
        return dataset.test.x, dataset.test.id_list("test"), "input"
    raise MedTransferError(f"cannot predict on {inputs!r}: give a CSV file, an image or folder of images, "
                           "or a dataset such as medmnist:pneumoniamnist")


def read_signal_inputs(meta: dict, path: Path, warnings: list[str]) -> tuple[torch.Tensor, list[str]]:
    """A recording file, or a folder of them, through the reader signal-folder: uses; recordings of
    another length than the training ones are kept (the backbones pool over time) with a warning."""
    from ..data.signals import read_signal_file, signal_files, stack_recordings

    files = [path] if path.is_file() else signal_files(path)
    if not files:
        raise MedTransferError(f"no .npy/.csv/.tsv/.txt recordings in {path}")
    x = torch.from_numpy(stack_recordings([read_signal_file(f) for f in files], [str(f) for f in files]))
    check_signal_inputs(meta, x, str(path), warnings)
    return x, [str(f) for f in files]


def check_signal_inputs(meta: dict, x: torch.Tensor, where: str, warnings: list[str]) -> None:
    shape, channels = meta.get("data_shape"), meta["input"]["channels"]
    if x.shape[1] != channels:
        raise MedTransferError(f"{where}: the recordings have {x.shape[1]} channel(s), the model takes {channels}; give "
                               "the leads the model was trained on, one column (or row of a .npy) each")
    if shape and len(shape) == 2 and x.shape[2] != shape[1]:
        warnings.append(f"{where}: recordings of {x.shape[2]} samples, the training ones had {shape[1]}; the model "
                        "pools over time, so this runs, but only recordings at the training sampling rate are valid")


def decoded_layout(meta: dict) -> tuple[int, tuple[int, int] | int | None]:
    """(channels, size) image files are decoded to: those of the training images (`data_shape`, recorded
    since issue 12); for an older checkpoint, the model's own channels and input size."""
    shape = meta.get("data_shape")
    if shape and len(shape) == 3:
        return int(shape[0]), (int(shape[1]), int(shape[2]))
    spec = meta["input"]
    return spec["channels"], spec.get("size")
