"""`folder:<path>` datasets: a directory of 2D images (PNG/JPEG/BMP/TIFF/DICOM), one sub-folder per class.

Three layouts are understood:

* class folders: ``path/<class>/*.png`` -- split here into train/val/test, seeded and stratified;
* split folders: ``path/{train,val,test}/<class>/*.png`` -- the user's split is kept
  (``val`` may be missing: then it is carved from train, seeded and stratified);
* a flat folder of unlabelled images: ``path/*.png`` (no sub-folder holds images) -- one pseudo-class
  ``unlabelled`` and ``info["unlabelled"] = True``, for self-supervised pretraining.

Every image is decoded once, into one float32 tensor (N, C, H, W) in [0, 1].
Nothing is written into the user's folder.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from medtransfer.data.base import Split, TaskDataset
from medtransfer.data.fingerprint import digest, files_digest
from medtransfer.data.schemes import LoadOptions, register_scheme
from medtransfer.errors import MedTransferError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm")
SPLIT_NAMES = ("train", "val", "test")
DEFAULT_IMAGE_SIZE = 224

_LAYOUT_HELP = (
    "expected class folders (<path>/<class>/*.png) or split folders (<path>/{train,val,test}/<class>/*.png); "
    f"image types: {', '.join(IMAGE_EXTENSIONS)}"
)


@register_scheme("folder", help="one sub-folder per class (PNG/JPEG/DICOM), optional train/val/test folders, "
                                "e.g. folder:./xrays", reads=())  # classes come from the folder names
def load_scheme(arg: str, options: LoadOptions) -> TaskDataset:
    return load_folder(arg, seed=options.split_seed)


def load_folder(
    path: str | Path,
    seed: int = 0,
    image_size: int | None = None,
    channels: int | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
) -> TaskDataset:
    """Load an image folder as a classification TaskDataset.

    image_size: resize every image to this square size; None keeps the native size when all
    images share one, else resizes to 224. channels: 1 or 3; None gives 1 when every image is
    grayscale, else 3. test_fraction is only used for class-folder layouts (split folders bring
    their own test set); val_fraction is used whenever there is no val folder.
    """
    root = Path(path).expanduser().resolve()
    if not root.is_dir():
        raise MedTransferError(f"folder:{path}: not a directory; point folder: at a directory of class folders")
    if channels not in (None, 1, 3):
        raise MedTransferError(f"folder:{path}: channels={channels} is not supported; use 1, 3 or leave it unset")
    if image_size is not None and image_size < 1:
        raise MedTransferError(f"folder:{path}: image_size={image_size} must be a positive number of pixels")
    for label, fraction in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= fraction < 1:
            raise MedTransferError(f"folder:{path}: {label}={fraction} must be in [0, 1)")
    if val_fraction + test_fraction >= 1:
        raise MedTransferError(f"folder:{path}: val_fraction + test_fraction must be below 1 to leave a train set")

    subdirs = _visible_dirs(root)
    split_dirs = [d for d in subdirs if d.name in SPLIT_NAMES]
    if split_dirs:
        layout = "split-folders"
        classes, files, labels, split_of = _split_folder_layout(root, subdirs, val_fraction, seed)
    elif (flat := _flat_files(root)) and not any(_image_files(d) for d in subdirs):
        layout = "unlabelled"
        classes, files, labels = ["unlabelled"], flat, np.zeros(len(flat), dtype=np.int64)
        split_of = _stratified_split(labels, classes, val_fraction, test_fraction, seed, strict=False, where=root)
    else:
        layout = "class-folders"
        classes, files, labels, split_of = _class_folder_layout(root, subdirs, val_fraction, test_fraction, seed)

    x = decode_images(files, image_size, channels)
    y = torch.as_tensor(labels, dtype=torch.int64)
    splits = {}
    for name in SPLIT_NAMES:
        index = torch.as_tensor(np.flatnonzero(split_of == name), dtype=torch.long)
        splits[name] = Split(x[index], y[index])
    return TaskDataset(
        name=f"folder:{root.name}",
        modality="image2d",
        task="binary" if len(classes) == 2 else "multiclass",
        classes=classes,
        **splits,
        info={"source": str(root), "layout": layout, "n_files": len(files),
              "fingerprint": digest("folder", files_digest(files, root), layout, classes, seed, image_size, channels,
                                    val_fraction, test_fraction),
              **({"unlabelled": True} if layout == "unlabelled" else {}),
              **({"split_seed": seed} if layout != "split-folders" else {})},  # the test split was drawn here
    )


# --- layouts ---------------------------------------------------------------------------------


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(folder: Path) -> list[Path]:
    """Images anywhere below folder (nested sub-folders are common in exported datasets), hidden parts skipped."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [
            Path(dirpath) / f
            for f in sorted(filenames)
            if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)
        ]
    return found


def _flat_files(folder: Path) -> list[Path]:
    """Images directly in folder (not below it)."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(IMAGE_EXTENSIONS))


def _class_files(folder: Path) -> dict[str, list[Path]]:
    """{class name: image files} for each class sub-folder of folder that holds images."""
    return {d.name: files for d in _visible_dirs(folder) if (files := _image_files(d))}


def _class_folder_layout(root, subdirs, val_fraction, test_fraction, seed):
    by_class = {d.name: _image_files(d) for d in subdirs}
    if not any(by_class.values()):
        raise MedTransferError(f"folder:{root}: no images in class folders; {_LAYOUT_HELP}")
    classes = sorted(by_class)
    files = [f for c in classes for f in by_class[c]]
    labels = np.array([i for i, c in enumerate(classes) for _ in by_class[c]], dtype=np.int64)
    split_of = _stratified_split(labels, classes, val_fraction, test_fraction, seed, strict=True, where=root)
    return classes, files, labels, split_of


def _split_folder_layout(root, subdirs, val_fraction, seed):
    others = [d.name for d in subdirs if d.name not in SPLIT_NAMES]
    if others:
        raise MedTransferError(
            f"folder:{root}: mixes split folders with other folders ({', '.join(others)}); "
            "use only train/, val/, test/ at the top level"
        )
    per_split = {name: _class_files(root / name) if (root / name).is_dir() else None for name in SPLIT_NAMES}
    for name in ("train", "test"):
        if not per_split[name]:
            raise MedTransferError(
                f"folder:{root}: split-folder layout needs images in {name}/<class>/; {_LAYOUT_HELP}"
            )
    classes = sorted(set().union(*(s for s in per_split.values() if s)))
    missing = [c for c in classes if c not in per_split["train"]]
    if missing:
        raise MedTransferError(
            f"folder:{root}: class {', '.join(missing)} has images in val/ or test/ but none in train/; "
            "add training images for it or remove it"
        )
    files, labels, split_of = [], [], []
    for name, by_class in per_split.items():
        for c, fs in sorted((by_class or {}).items()):
            files += fs
            labels += [classes.index(c)] * len(fs)
            split_of += [name] * len(fs)
    labels, split_of = np.array(labels, dtype=np.int64), np.array(split_of, dtype=object)
    if not per_split["val"]:  # missing or empty val/
        # Carve val from train. Lenient: a class too small to spare a val image stays in train only,
        # as classes may already be absent from test in this layout.
        train = np.flatnonzero(split_of == "train")
        carved = _stratified_split(labels[train], classes, val_fraction, 0.0, seed, strict=False, where=root)
        split_of[train] = carved
    return classes, files, labels, split_of


def _stratified_split(labels, classes, val_fraction, test_fraction, seed, strict, where):
    """Seeded per-class split giving each class at least one image in every non-empty split.

    Done per class rather than with sklearn's train_test_split(stratify=...), because sklearn
    neither guarantees a tiny class a place in each split nor accepts a test set smaller than
    the number of classes.
    """
    rng = np.random.default_rng(seed)
    split_of = np.full(len(labels), "train", dtype=object)
    for k, name in enumerate(classes):
        index = rng.permutation(np.flatnonzero(labels == k))
        n = len(index)
        n_test = max(1, round(n * test_fraction)) if test_fraction > 0 else 0
        n_val = max(1, round(n * val_fraction)) if val_fraction > 0 else 0
        if n - n_test - n_val < 1:
            if strict:
                raise MedTransferError(
                    f"folder:{where}: class '{name}' has {n} image(s), too few for train/val/test "
                    f"(needs {n_test + n_val + 1}); add images, merge the class, or lower val_fraction/test_fraction"
                )
            n_test = n_val = 0
        split_of[index[:n_test]] = "test"
        split_of[index[n_test : n_test + n_val]] = "val"
    return split_of


# --- decoding --------------------------------------------------------------------------------


def decode_images(files: list[Path], image_size: int | tuple[int, int] | None, channels: int | None) -> torch.Tensor:
    """Decode every file once (threads: PIL and pydicom release the GIL while decoding), then
    settle channels and size and copy into one preallocated tensor.

    The one decoder of image files, for training (`folder:`, channels and size settled from the files)
    and for new files at predict time (channels and (height, width) of the training images, from the
    checkpoint): the same file gives the same tensor through either door. image_size: a square size,
    (height, width), or None (the files' own size when they share one, else 224). channels: 1 (colour
    as ITU-R 601 luma), 3 (grey repeated), or None (3 when any file is colour)."""
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        images = list(pool.map(_read_image, files))
    if channels is None:
        channels = 3 if any(a.ndim == 3 for a in images) else 1
    sizes = {a.shape[:2] for a in images}
    if isinstance(image_size, (tuple, list)):
        size = (int(image_size[0]), int(image_size[1]))
    elif image_size is not None:
        size = (image_size, image_size)
    elif len(sizes) == 1:
        size = sizes.pop()
    else:
        size = (DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE)
    out = torch.empty((len(images), channels, *size), dtype=torch.float32)
    for i in range(len(images)):
        a, images[i] = images[i], None  # free each decoded image as soon as it is copied
        out[i] = torch.from_numpy(_resize(_to_channels(a, channels), size))
    return out


def image_files(path: Path) -> list[Path]:
    """The image files a path names: the file itself, or every image below a folder (hidden files
    and folders skipped), sorted, so a split folder lists its images in the order `folder:` loads them."""
    path = Path(path)
    if path.is_file():
        return [path] if path.name.lower().endswith(IMAGE_EXTENSIONS) else []
    return _image_files(path)


def _read_image(file: Path) -> np.ndarray:
    """float32 (H, W) for grayscale or (H, W, 3) for colour, in [0, 1]."""
    try:
        return _read_dicom(file) if file.suffix.lower() == ".dcm" else _read_pil(file)
    except MedTransferError:
        raise
    except Exception as e:  # any decoder failure means the same thing to the user
        reason = " ".join(str(e).split()) or type(e).__name__
        raise MedTransferError(
            f"{file}: not a readable PNG/JPEG/DICOM image ({reason}); remove or replace the file"
        ) from e


def _read_pil(file: Path) -> np.ndarray:
    from PIL import Image  # loaded on first decode (here and in _resize): `import medtransfer.data` stays light

    with Image.open(file) as img:
        img.load()
        mode = img.mode
        if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):  # 16-bit PNG/TIFF
            return np.clip(np.asarray(img, dtype=np.float32) / 65535.0, 0, 1)
        if mode == "F":  # float TIFF: no fixed range, so min-max like DICOM
            return _min_max(np.asarray(img, dtype=np.float32), file)
        if mode in ("1", "L", "LA"):
            return np.asarray(img.convert("L"), dtype=np.float32) / 255.0
        return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0


def _read_dicom(file: Path) -> np.ndarray:
    import pydicom  # imported here: only folders with DICOM files need it

    ds = pydicom.dcmread(file)
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise MedTransferError(
            f"{file}: 3D/multi-frame DICOM is not supported by folder: yet; export single 2D slices instead"
        )
    a = ds.pixel_array.astype(np.float64)
    a = a * float(ds.get("RescaleSlope", 1) or 1) + float(ds.get("RescaleIntercept", 0) or 0)
    a = _min_max(a, file)
    if ds.get("PhotometricInterpretation") == "MONOCHROME1":  # low values mean white: invert
        a = 1.0 - a
    if a.ndim == 3 and a.shape[-1] != 3:
        raise MedTransferError(
            f"{file}: DICOM pixel data has shape {a.shape}, not a 2D image; folder: supports single 2D slices"
        )
    return a.astype(np.float32)


def _min_max(a: np.ndarray, file: Path) -> np.ndarray:
    if not np.isfinite(a).all():  # NaN would make min/max NaN and the image silently black
        raise MedTransferError(f"{file}: holds NaN or infinite pixel values; export the image with finite values "
                               "or remove it")
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def _to_channels(a: np.ndarray, channels: int) -> np.ndarray:
    """(H, W[, 3]) -> (C, H, W)."""
    if a.ndim == 2:
        return np.repeat(a[None], channels, axis=0)
    if channels == 1:  # ITU-R 601 luma, as PIL's convert("L")
        return (a @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[None]
    return np.ascontiguousarray(a.transpose(2, 0, 1))


def _resize(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of (C, H, W) per channel through PIL's float mode, keeping [0, 1]."""
    if a.shape[1:] == size:
        return a
    from PIL import Image

    h, w = size
    return np.stack(
        [np.asarray(Image.fromarray(c).resize((w, h), Image.BILINEAR)) for c in a.astype(np.float32)]
    ).clip(0, 1)
