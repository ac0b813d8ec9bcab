"""Reusing a saved run: its metrics on a split of its own or another dataset (`evaluate`), and its
class probabilities for new inputs (`predict`)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import torch

from ..data import is_dataset_spec, load_dataset
from ..data.tabular import TabularEncoder
from ..defaults import N_BOOT
from ..errors import MedTransferError
from ..evaluation import compute_metrics
from ..models.checkpoint import load_checkpoint
from ..models.inference import predict_proba
from ..models.sources import check_compatible
from .run_folder import require_classifier


def evaluate(run: str | Path, data: str | None = None, split: str = "test", data_root=None,
             n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """Metrics (with 95% CIs) of a saved run on a split of its own or another dataset."""
    run = Path(run)
    model, meta = load_checkpoint(run)
    require_classifier(meta, run)
    config = json.loads((run / "config.json").read_text()) if (run / "config.json").is_file() else {}
    data = data or config.get("data")
    if not data:
        raise MedTransferError(f"{run} does not record its dataset: pass --data")
    encoder = TabularEncoder.from_dict(meta["encoder"]) if meta.get("encoder") else None
    same_data = data == config.get("data")  # its own dataset: the split the run was tested on
    dataset = load_dataset(data, data_root=data_root or config.get("data_root"), target=config.get("target"),
                           group=config.get("group"), encoder=encoder,
                           split_seed=config.get("split_seed", 0) if same_data else 0)
    check_compatible(model, dataset.modality, dataset.in_channels, dataset.info.get("features"))
    if dataset.classes != meta["classes"]:
        raise MedTransferError(f"class mismatch: the model predicts {meta['classes']}, {data} has {dataset.classes}")
    part = dataset.split(split)
    prob = predict_proba(model, part.x, dataset.task)
    return compute_metrics(part.y.numpy(), prob, dataset.task, n_boot=n_boot, seed=seed)


def predict(run: str | Path, inputs: str, data_root=None) -> pd.DataFrame:
    """Class probabilities of a saved run for new inputs: a CSV of patients, image files or a folder of
    images, or a dataset spec (its test split)."""
    run = Path(run)
    model, meta = load_checkpoint(run)
    require_classifier(meta, run)
    classes, task = meta["classes"], meta["task"]
    x, ids = read_inputs(meta, inputs, data_root)
    prob = predict_proba(model, x, task)
    frame = pd.DataFrame(prob, columns=[f"prob_{c}" for c in classes])
    frame.insert(0, "input", list(ids))
    if task != "multilabel":
        frame["predicted"] = [classes[i] for i in prob.argmax(1)]
    return frame


def read_inputs(meta: dict, inputs: str, data_root=None) -> tuple[torch.Tensor, list[str]]:
    """New inputs as the model's tensors, with an identifier per row."""
    from ..data.folder import IMAGE_EXTENSIONS, decode_images

    path = Path(inputs).expanduser()
    if meta.get("encoder") and path.suffix.lower() == ".csv":
        if not path.is_file():
            raise MedTransferError(f"CSV file {path} not found")
        frame = pd.read_csv(path)
        x = torch.from_numpy(TabularEncoder.from_dict(meta["encoder"]).transform(frame))
        return x, list(frame.index.astype(str))
    if path.exists() and meta["input"]["modality"] == "image2d":
        files = sorted(p for p in ([path] if path.is_file() else path.rglob("*"))
                       if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
        if not files:
            raise MedTransferError(f"no PNG/JPEG/DICOM images in {path}")
        channels = meta["input"]["channels"]
        return decode_images(files, meta["input"]["size"], 1 if channels == 3 else channels), [str(f) for f in files]
    if is_dataset_spec(inputs):
        encoder = TabularEncoder.from_dict(meta["encoder"]) if meta.get("encoder") else None
        dataset = load_dataset(inputs, data_root=data_root, encoder=encoder)
        return dataset.test.x, [f"test/{i}" for i in range(len(dataset.test))]
    raise MedTransferError(f"cannot predict on {inputs!r}: give a CSV file, an image or folder of images, "
                           "or a dataset such as medmnist:pneumoniamnist")
