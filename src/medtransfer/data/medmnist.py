"""`medmnist:<flag>[@size]`: the official MedMNIST `.npz` files, read from a data root.

The file is looked up as `<root>/<flag>.npz` (28 px) or `<root>/<flag>_<size>.npz`; when it is
missing the official Zenodo file is downloaded if the network allows, else one clear error names
the file and where to put it.
"""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path

import numpy as np
import torch

from ..errors import MedTransferError
from .base import Split, TaskDataset
from .fingerprint import content_digest, digest
from .schemes import LoadOptions, register_scheme

ZENODO = "https://zenodo.org/records/10519652/files"
KEYS = [f"{s}_{k}" for s in ("train", "val", "test") for k in ("images", "labels")]

# flag -> (task, class names); from the MedMNIST v3 INFO table.
ORGANS = ["bladder", "femur-left", "femur-right", "heart", "kidney-left", "kidney-right",
          "liver", "lung-left", "lung-right", "pancreas", "spleen"]
FLAGS: dict[str, tuple[str, list[str]]] = {
    "pathmnist": ("multiclass", ["adipose", "background", "debris", "lymphocytes", "mucus",
                                 "smooth muscle", "normal colon mucosa", "cancer-associated stroma",
                                 "colorectal adenocarcinoma epithelium"]),
    "chestmnist": ("multilabel", ["atelectasis", "cardiomegaly", "effusion", "infiltration", "mass",
                                  "nodule", "pneumonia", "pneumothorax", "consolidation", "edema",
                                  "emphysema", "fibrosis", "pleural", "hernia"]),
    "dermamnist": ("multiclass", ["actinic keratoses", "basal cell carcinoma", "benign keratosis",
                                  "dermatofibroma", "melanoma", "melanocytic nevi", "vascular lesions"]),
    "octmnist": ("multiclass", ["choroidal neovascularization", "diabetic macular edema", "drusen",
                                "normal"]),
    "pneumoniamnist": ("binary", ["normal", "pneumonia"]),
    "retinamnist": ("multiclass", ["0", "1", "2", "3", "4"]),
    "breastmnist": ("binary", ["malignant", "normal, benign"]),
    "bloodmnist": ("multiclass", ["basophil", "eosinophil", "erythroblast", "immature granulocytes",
                                  "lymphocyte", "monocyte", "neutrophil", "platelet"]),
    "tissuemnist": ("multiclass", ["collecting duct", "distal convoluted tubule",
                                   "glomerular endothelial", "interstitial endothelial", "leukocytes",
                                   "podocytes", "proximal tubule", "thick ascending limb"]),
    "organamnist": ("multiclass", ORGANS),
    "organcmnist": ("multiclass", ORGANS),
    "organsmnist": ("multiclass", ORGANS),
    "organmnist3d": ("multiclass", ["liver", "kidney-right", "kidney-left", "femur-right",
                                    "femur-left", "bladder", "heart", "lung-right", "lung-left",
                                    "spleen", "pancreas"]),
    "nodulemnist3d": ("binary", ["benign", "malignant"]),
    "adrenalmnist3d": ("binary", ["normal", "hyperplasia"]),
    "fracturemnist3d": ("multiclass", ["buckle rib fracture", "nondisplaced rib fracture",
                                       "displaced rib fracture"]),
    "vesselmnist3d": ("binary", ["vessel", "aneurysm"]),
    "synapsemnist3d": ("binary", ["inhibitory synapse", "excitatory synapse"]),
}
# The clinically positive class of the binary flags that have one (a finding, not a mere category).
POSITIVE = {"pneumoniamnist": "pneumonia", "breastmnist": "malignant", "nodulemnist3d": "malignant",
            "adrenalmnist3d": "hyperplasia", "vesselmnist3d": "aneurysm"}


def default_data_root() -> Path:
    return Path(os.environ.get("MEDTRANSFER_DATA", "~/.medmnist")).expanduser()


def parse_flag(spec: str) -> tuple[str, int]:
    flag, _, size = spec.partition("@")
    flag = flag.strip().lower()
    if flag not in FLAGS:
        raise MedTransferError(f"unknown MedMNIST dataset {flag!r}; choose one of: {', '.join(FLAGS)}")
    try:
        return flag, int(size) if size else 28
    except ValueError:
        raise MedTransferError(f"bad image size in 'medmnist:{spec}': use medmnist:{flag}@64") from None


def file_name(flag: str, size: int) -> str:
    return f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"


def locate(flag: str, size: int, root: Path, download: bool = True) -> Path:
    path = root / file_name(flag, size)
    if path.exists():
        return path
    if download:
        url = f"{ZENODO}/{path.name}?download=1"
        try:
            root.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".part")
            urllib.request.urlretrieve(url, tmp)  # noqa: S310 - fixed https URL
            tmp.replace(path)
            return path
        except Exception:  # offline or refused: fall through to the clear message
            path.with_suffix(".part").unlink(missing_ok=True)
    raise MedTransferError(
        f"MedMNIST file {path.name} not found in {root} and could not be downloaded; "
        f"put the official file there or point --data-root / MEDTRANSFER_DATA at the folder holding it"
    )


def load_medmnist(spec: str, data_root: str | Path | None = None, download: bool = True) -> TaskDataset:
    flag, size = parse_flag(spec)
    root = Path(data_root).expanduser() if data_root else default_data_root()
    path = locate(flag, size, root, download)
    try:
        npz = np.load(path)
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [""])[0]
        raise MedTransferError(f"{path} is not a readable .npz file ({exc.__class__.__name__}: {reason}); delete it "
                               "and download the official file again") from None
    missing = [k for k in KEYS if k not in npz.files]
    if missing:
        raise MedTransferError(f"{path} lacks the MedMNIST keys {missing}; expected {KEYS}")
    task, classes = FLAGS[flag]
    is_3d = flag.endswith("3d")
    splits = {}
    for split in ("train", "val", "test"):
        images = torch.from_numpy(npz[f"{split}_images"])
        labels = torch.from_numpy(npz[f"{split}_labels"].astype(np.int64))
        if is_3d or images.ndim == 3:  # (N, H, W[, D]) grayscale -> add a channel axis
            images = images.unsqueeze(1)
        else:  # (N, H, W, 3) RGB -> channels first
            images = images.permute(0, 3, 1, 2)
        x = images.float().div_(255.0)
        y = labels.float() if task == "multilabel" else labels.reshape(-1)
        splits[split] = Split(x.contiguous(), y, [f"{split}/{i}" for i in range(len(y))])  # index in the file
    return TaskDataset(
        name=f"medmnist:{flag}" + (f"@{size}" if size != 28 else ""),
        modality="image3d" if is_3d else "image2d",
        task=task,
        classes=classes,
        info={"file": str(path), "flag": flag, "size": size, "fingerprint": digest("medmnist", flag, size,
                                                                                  content_digest(path)),
              **({"positive": POSITIVE[flag]} if flag in POSITIVE else {})},
        **splits,
    )


@register_scheme("medmnist", help="official MedMNIST .npz from the data root, e.g. medmnist:pneumoniamnist or "
                                  "medmnist:adrenalmnist3d@64", reads=())
def load_scheme(arg: str, options: LoadOptions) -> TaskDataset:
    return load_medmnist(arg, options.data_root)
