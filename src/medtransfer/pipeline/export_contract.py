"""What an exported model file says about itself: the input it takes (name, shape, dtype, value range, how
images are decoded, how a table row is encoded), what it outputs, the run's operating point and which
model it is. A user of another runtime (onnxruntime in C#, TensorFlow, a hospital's PACS plug-in) has
only the file and this description, so everything `predict` does outside the graph is written out here.

The same description goes into the file (ONNX metadata_props, a TorchScript extra file) and, with the
file's digest and the parity check, into the sidecar `<file>.json`.
"""

from __future__ import annotations

from pathlib import Path

from ..data.tabular import MISSING
from ..models.checkpoint import WEIGHTS, file_sha256, model_version
from .reuse import stored_operating_point

CONTRACT_VERSION = "medtransfer-export/1"
INPUT_NAMES = {"image2d": "image", "image3d": "volume", "tabular": "features", "signal": "signal"}
AXES = {"image2d": ["channels", "height", "width"], "image3d": ["channels", "depth", "height", "width"],
        "tabular": ["features"], "signal": ["channels", "time"]}


def describe(run: Path, meta: dict, shape: tuple[int, ...]) -> dict:
    """The whole description for a run whose inputs (one example) have `shape`."""
    modality = meta["input"]["modality"]
    weights = file_sha256(run / WEIGHTS)
    return {
        "contract": CONTRACT_VERSION,
        "model": {"run": run.resolve().name, "weights_sha256": weights, "version": model_version(run, weights),
                  "architecture": meta["architecture"], "data": meta.get("provenance", {}).get("data")},
        "task": meta["task"],
        "classes": [str(c) for c in meta["classes"]],
        "operating_point": operating_point(meta),
        "input": input_contract(meta, shape),
        "output": output_contract(meta),
        **({"encoding": encoding_contract(meta["encoder"])} if modality == "tabular" and meta.get("encoder") else {}),
    }


def input_contract(meta: dict, shape: tuple[int, ...]) -> dict:
    spec = meta["input"]
    modality = spec["modality"]
    dims = [int(n) for n in shape]
    if modality == "signal":  # the signal nets pool over time: any length runs (valid at the training rate)
        dims[-1] = "time"
    contract = {"name": INPUT_NAMES[modality], "modality": modality, "dtype": "float32",
                "shape": ["batch", *dims], "axes": ["batch", *AXES[modality]]}
    if modality.startswith("image"):
        contract["range"] = [0.0, 1.0]
        contract["decoding"] = image_decoding(shape) if modality == "image2d" else {
            "channels": shape[0], "size": list(shape[1:]),
            "values": "float32 in [0, 1], scaled as the training volumes were (MedMNIST 3D: uint8 / 255)"}
        contract["in_graph"] = image_steps(spec, shape)
    elif modality == "tabular":
        contract["range"] = None
        contract["in_graph"] = ["nothing: table rows are encoded outside the graph, as 'encoding' describes "
                                "(its 'features' name the input's columns)"]
    else:
        contract["range"] = None
        contract["sampling_rate_hz"] = spec.get("rate")
        contract["training_length"] = spec.get("length")
        contract["in_graph"] = [f"per-channel standardisation with the training recordings' mean {list(spec['mean'])} "
                                f"and std {list(spec['std'])}: give the recordings in their original units"]
    return contract


def image_decoding(shape: tuple[int, ...]) -> dict:
    """How an image file becomes the input, as medtransfer decodes it (`data/folder.decode_images`)."""
    channels, *size = shape
    colour = ("grey; a colour image as ITU-R 601 luma (0.299 R + 0.587 G + 0.114 B)" if channels == 1 else
              "RGB; a grey image repeated on the three channels")
    return {"channels": channels, "size": size, "colour": colour,
            "values": "float32 in [0, 1]: 8-bit pixels / 255, 16-bit / 65535; DICOM (after RescaleSlope/Intercept) "
                      "and float images min-max scaled per image",
            "resize": "bilinear (PIL) to the size above when a file has another size"}


def image_steps(spec: dict, shape: tuple[int, ...]) -> list[str]:
    steps = []
    if shape[0] == 1 and spec["channels"] == 3:
        steps.append("grey repeated to 3 channels")
    if spec["modality"] == "image2d" and spec.get("size") and shape[-1] != spec["size"]:
        steps.append(f"bilinear resize to {spec['size']}x{spec['size']} (align_corners=False)")
    steps.append(f"normalisation (x - mean) / std with mean {list(spec['mean'])}, std {list(spec['std'])}")
    return steps


def output_contract(meta: dict) -> dict:
    classes = [str(c) for c in meta["classes"]]
    how = "sigmoid per label" if meta["task"] == "multilabel" else "softmax over the classes"
    steps = ["backbone", "head"] + (["calibration (" + meta["calibration"]["method"] + ", fitted on validation)"]
                                    if meta.get("calibration") else []) + [how]
    return {"name": "probabilities", "dtype": "float32", "shape": ["batch", len(classes)], "columns": classes,
            "in_graph": steps}


def operating_point(meta: dict) -> dict:
    """The run's decision rule on the output, chosen on its validation split (`stored_operating_point`)."""
    point, options = stored_operating_point(meta)
    classes = [str(c) for c in meta["classes"]]
    block = point.to_dict(classes)
    task = meta["task"]
    if task == "binary":
        threshold = 0.5 if options["threshold"] is None else float(options["threshold"])
        positive = classes[point.positive]
        rule = (f"'{positive}' when probabilities[:, {point.positive}] >= {threshold:g}, "
                f"else '{classes[1 - point.positive]}'")
    elif task == "multilabel":
        threshold, positive = (0.5 if options["threshold"] is None else float(options["threshold"])), None
        rule = f"each label present when its probability >= {threshold:g}"
    else:
        threshold, positive = None, None
        weights = point.class_weights
        rule = "argmax of probabilities" + (f" * class_weights {weights}" if weights else "")
    return {"positive_class": positive, "threshold": threshold, "decision": rule, "rule": block["rule"],
            "chosen_on": block["chosen_on"], "class_weights": block["class_weights"], "n_val": block["n_val"]}


def encoding_contract(encoder: dict) -> dict:
    """The tabular encoding (`data/tabular.TabularEncoder`) as a recipe: enough to encode a row anywhere."""
    numeric = {col: {"impute": median, "mean": mean, "std": std}
               for col, (median, mean, std) in encoder["numeric"].items()}
    categorical = {col: list(levels) for col, levels in encoder["categorical"].items()}
    features = list(numeric) + [f"{col}={level}" for col, levels in categorical.items() for level in levels]
    return {
        "columns": list(numeric) + list(categorical),
        "features": features,
        "numeric": numeric,
        "categorical": categorical,
        "missing_level": MISSING,
        "recipe": ["features in the order of 'features': first one per numeric column, then one per level of "
                   "each categorical column",
                   "numeric: value parsed as a number, a missing or unreadable value replaced by 'impute' (the "
                   "training median), then (value - mean) / std",
                   f"categorical: the value as text as Python's str() writes it (True -> 'True', 1.0 -> '1.0'); "
                   f"one feature per level, 1.0 for the row's level and 0.0 for "
                   f"the others; a missing value or a level not listed counts as the level '{MISSING}'"],
    }


def flat_metadata(description: dict) -> dict[str, str]:
    """ONNX metadata_props (string to string): the whole description as JSON under "medtransfer", and the
    values a serving stack reads most often under their own keys."""
    import json

    point = description["operating_point"]
    flat = {"medtransfer": json.dumps(description), "task": description["task"],
            "classes": json.dumps(description["classes"]), "model_version": description["model"]["version"],
            "input_name": description["input"]["name"], "input_shape": json.dumps(description["input"]["shape"]),
            "decision": point["decision"],
            "description": f"medtransfer run {description['model']['run']}: {description['task']} classifier of "
                           f"{description['input']['modality']} inputs, outputs class probabilities"}
    if point["threshold"] is not None:
        flat["threshold"] = repr(point["threshold"])
    if point["positive_class"] is not None:
        flat["positive_class"] = point["positive_class"]
    return flat
