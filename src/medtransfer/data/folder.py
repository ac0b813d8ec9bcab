"""`folder:<path>` datasets: a directory of 2D images (PNG/JPEG/BMP/TIFF/DICOM), one sub-folder per class.

Four layouts are understood:

* class folders: ``path/<class>/*.png`` -- split here into train/val/test, seeded and stratified;
* split folders: ``path/{train,val,test}/<class>/*.png`` -- the user's split is kept
  (``val`` may be missing: then it is carved from train, seeded and stratified);
* evaluation only: ``path/test/<class>/*.png`` (and optionally ``val/``), no ``train/`` -- an external
  site to evaluate a trained model on: an empty train split and ``info["evaluation_only"] = True``;
* a flat folder of unlabelled images: ``path/*.png`` (no sub-folder holds images) -- one pseudo-class
  ``unlabelled`` and ``info["unlabelled"] = True``, for self-supervised pretraining.

With `--group TAG` (a DICOM keyword such as PatientID) every image is a DICOM file whose tag names its
patient, and no patient's images straddle two splits: a split drawn here is drawn by patient, and a
user's split that puts one patient in two splits is refused.

Every image is decoded once, into one float32 tensor (N, C, H, W) in [0, 1]; each keeps its path
relative to the folder as its id. Nothing is written into the user's folder.
"""

from __future__ import annotations

import io
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


@register_scheme("folder", help="one sub-folder per class (PNG/JPEG/DICOM), optional train/val/test folders "
                                "(test/ alone: evaluation only), --group TAG (a DICOM tag such as PatientID) for "
                                "patient-level splits, e.g. folder:./xrays",
                 reads=("group",))  # classes come from the folder names; group is a DICOM tag
def load_scheme(arg: str, options: LoadOptions) -> TaskDataset:
    return load_folder(arg, seed=options.split_seed, group=options.group)


def load_folder(
    path: str | Path,
    seed: int = 0,
    image_size: int | None = None,
    channels: int | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    group: str | None = None,
) -> TaskDataset:
    """Load an image folder as a classification TaskDataset.

    image_size: resize every image to this square size; None keeps the native size when all
    images share one, else resizes to 224. channels: 1 or 3; None gives 1 when every image is
    grayscale, else 3. test_fraction is only used for class-folder layouts (split folders bring
    their own test set); val_fraction is used whenever there is no val folder. group: a DICOM
    keyword (PatientID) whose value is each image's patient, for patient-level splits.
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
    if group:
        check_dicom_keyword(group, f"folder:{root}")

    subdirs = _visible_dirs(root)
    split_dirs = [d for d in subdirs if d.name in SPLIT_NAMES]
    if split_dirs:
        layout = "split-folders"
        classes, files, labels, split_of = _split_folder_files(root, subdirs)
    elif (flat := _flat_files(root)) and not any(_image_files(d) for d in subdirs):
        layout = "unlabelled"
        classes, files, labels, split_of = ["unlabelled"], flat, np.zeros(len(flat), dtype=np.int64), None
    else:
        layout = "class-folders"
        classes, files, labels = _class_folder_files(root, subdirs)
        split_of = None
    patients = dicom_groups(files, group) if group else None
    where, source = f"folder:{root}", f"--group {group}"
    if split_of is None:
        split_of = draw_split(labels, classes, patients, val_fraction, test_fraction, seed,
                              strict=layout == "class-folders", where=where, source=source)
    else:
        split_of = keep_split(labels, classes, split_of, patients, val_fraction, seed, where=where, source=source)
    evaluation_only = layout == "split-folders" and not (split_of == "train").any()

    x = decode_images(files, image_size, channels)
    return image_dataset(
        f"folder:{root.name}", classes, x, labels, split_of, [f.relative_to(root).as_posix() for f in files],
        info={"source": str(root), "layout": layout, "n_files": len(files),
              "fingerprint": digest("folder", files_digest(files, root), layout, classes, seed, image_size, channels,
                                    val_fraction, test_fraction, *((group,) if group else ())),
              **({"unlabelled": True} if layout == "unlabelled" else {}),
              **({"evaluation_only": True} if evaluation_only else {}),
              **({"group": group} if group else {}),
              **({"split_seed": seed} if layout != "split-folders" else {})},  # the test split was drawn here
    )


def image_dataset(name: str, classes: list[str], x: torch.Tensor, labels: np.ndarray, split_of: np.ndarray,
                  ids: list[str], info: dict) -> TaskDataset:
    """A 2D image TaskDataset from decoded images, their labels, the split each one is in and its id
    (the file path): what folder: and manifest: both return."""
    y = torch.as_tensor(labels, dtype=torch.int64)
    splits = {}
    for split in SPLIT_NAMES:
        chosen = np.flatnonzero(split_of == split)
        index = torch.as_tensor(chosen, dtype=torch.long)
        splits[split] = Split(x[index], y[index], [ids[i] for i in chosen])
    return TaskDataset(name=name, modality="image2d", task="binary" if len(classes) == 2 else "multiclass",
                       classes=classes, **splits, info=info)


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


def _class_folder_files(root, subdirs):
    by_class = {d.name: _image_files(d) for d in subdirs}
    if not any(by_class.values()):
        raise MedTransferError(f"folder:{root}: no images in class folders; {_LAYOUT_HELP}")
    classes = sorted(by_class)
    files = [f for c in classes for f in by_class[c]]
    labels = np.array([i for i, c in enumerate(classes) for _ in by_class[c]], dtype=np.int64)
    return classes, files, labels


def _split_folder_files(root, subdirs):
    """The user's split. Without train/ (test/ and maybe val/ only) the folder is for evaluation only."""
    others = [d.name for d in subdirs if d.name not in SPLIT_NAMES]
    if others:
        raise MedTransferError(
            f"folder:{root}: mixes split folders with other folders ({', '.join(others)}); "
            "use only train/, val/, test/ at the top level"
        )
    per_split = {name: _class_files(root / name) if (root / name).is_dir() else None for name in SPLIT_NAMES}
    evaluation_only = per_split["train"] is None
    for name in ("test",) if evaluation_only else ("train", "test"):
        if not per_split[name]:
            raise MedTransferError(
                f"folder:{root}: split-folder layout needs images in {name}/<class>/; {_LAYOUT_HELP}"
            )
    classes = sorted(set().union(*(s for s in per_split.values() if s)))
    missing = [] if evaluation_only else [c for c in classes if c not in per_split["train"]]
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
    return classes, files, np.array(labels, dtype=np.int64), np.array(split_of, dtype=object)


FRACTIONS_FIX = "or lower val_fraction/test_fraction"  # what else fixes a split drawn here


def keep_split(labels, classes, split_of, patients, val_fraction, seed, where, source,
               fix=FRACTIONS_FIX) -> np.ndarray:
    """The user's split (an array of split names), with val carved from train when there is none (none
    carved without train: evaluation only). With patients (`source` says where they come from, for
    messages), a patient in two of the user's splits is refused and val is carved by patient."""
    if patients is not None:
        check_one_split_per_patient(patients, split_of, where, source)
    train = np.flatnonzero(split_of == "train")
    if (split_of == "val").any() or not len(train):
        return split_of
    split_of = split_of.copy()
    if patients is not None:
        from medtransfer.data.tabular import group_holdout  # here: importing folder registers no table scheme

        try:
            _, val = group_holdout(train, labels, patients, val_fraction, seed)
        except ValueError:
            raise MedTransferError(_too_few_patients(where, patients[train], source, "a val split carved from "
                                                     "train", fix)) from None
        split_of[val] = "val"
        return split_of
    # Carve val from train. Lenient: a class too small to spare a val image stays in train only,
    # as classes may already be absent from test in this layout.
    split_of[train] = _stratified_split(labels[train], classes, val_fraction, 0.0, seed, strict=False, where=where,
                                        fix=fix)
    return split_of


def draw_split(labels, classes, patients, val_fraction, test_fraction, seed, strict, where, source,
               fix=FRACTIONS_FIX) -> np.ndarray:
    """A split drawn here, seeded: per class (`_stratified_split`), or by patient when patients are known
    (no patient in two splits). strict: every class in every split, else refused naming the class."""
    if patients is None:
        return _stratified_split(labels, classes, val_fraction, test_fraction, seed, strict=strict, where=where,
                                 fix=fix)
    from medtransfer.data.tabular import split_indices  # here: importing folder registers no table scheme

    try:
        parts = split_indices(labels, patients, seed, val_fraction, test_fraction)
    except ValueError:
        raise MedTransferError(_too_few_patients(where, patients, source, "a train/val/test split", fix)) from None
    split_of = np.full(len(labels), "train", dtype=object)
    for name, index in zip(SPLIT_NAMES, parts):
        split_of[index] = name
    wanted = [n for n, f in zip(SPLIT_NAMES, (1, val_fraction, test_fraction)) if f > 0]
    for k, name in enumerate(classes if strict else ()):
        empty = [n for n in wanted if not (labels[split_of == n] == k).any()]
        if empty:
            raise MedTransferError(f"{where}: class '{name}' has no image in the {' and '.join(empty)} split of the "
                                   f"split by patient ({source}); add patients with that class, {fix}")
    return split_of


def _too_few_patients(where, patients, source, what, fix) -> str:
    return f"{where}: {len(set(patients))} patient(s) ({source}) are too few for {what} by patient; add patients, {fix}"


def _stratified_split(labels, classes, val_fraction, test_fraction, seed, strict, where, fix=FRACTIONS_FIX):
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
                    f"{where}: class '{name}' has {n} image(s), too few for train/val/test "
                    f"(needs {n_test + n_val + 1}); add images, merge the class, {fix}"
                )
            n_test = n_val = 0
        split_of[index[:n_test]] = "test"
        split_of[index[n_test : n_test + n_val]] = "val"
    return split_of


# --- patients --------------------------------------------------------------------------------


def check_one_split_per_patient(patients, split_of, where: str, source: str) -> None:
    """Refuse a patient whose images fall in two splits: a model tested on a patient it was trained on
    scores what it remembers, not what it would see at a new patient. `source`: where patients come from."""
    splits_of: dict[str, set] = {}
    for patient, name in zip(patients, split_of):
        splits_of.setdefault(patient, set()).add(name)
    for patient, names in splits_of.items():
        if len(names) > 1:
            shown = " and ".join(n for n in SPLIT_NAMES if n in names)
            raise MedTransferError(f"{where}: patient {patient!r} ({source}) has images in {shown}; a patient's "
                                   "images belong to one split: move them into one")


def check_dicom_keyword(keyword: str, where: str) -> None:
    from pydicom.datadict import tag_for_keyword  # imported here: only --group needs pydicom

    if tag_for_keyword(keyword) is None:
        raise MedTransferError(f"{where}: --group {keyword} is not a DICOM keyword; name the tag that identifies "
                               "the patient, e.g. --group PatientID")


def dicom_groups(files: list[Path], keyword: str) -> np.ndarray:
    """Each file's value of the DICOM tag `keyword` (its patient), read without the pixel data."""
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return np.array(list(pool.map(lambda f: _dicom_tag(f, keyword), files)), dtype=object)


def _dicom_tag(file: Path, keyword: str) -> str:
    if file.suffix.lower() != ".dcm":
        raise MedTransferError(f"{file}: not a DICOM file (.dcm), so it has no {keyword} tag for --group {keyword}; "
                               "with --group every image must be DICOM (or list patients in a manifest: CSV)")
    import pydicom

    try:
        ds = pydicom.dcmread(file, stop_before_pixels=True)
    except Exception as e:  # any reader failure means the same thing to the user
        reason = " ".join(str(e).split()) or type(e).__name__
        raise MedTransferError(f"{file}: not a readable DICOM file ({reason}); remove or replace the file") from e
    value = ds.get(keyword)
    text = "" if value is None else str(value).strip()
    if not text:
        raise MedTransferError(f"{file}: has no {keyword} (--group {keyword}), so its patient is unknown; fill the "
                               "tag, or group by another tag")
    return text


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
    return _settled(images, image_size, channels)


def decode_image_bytes(uploads: list[tuple[str, bytes]], image_size: int | tuple[int, int] | None,
                       channels: int | None) -> torch.Tensor:
    """`decode_images` for files received as (name, bytes), e.g. uploads to `medtransfer serve`: decoded in
    memory (nothing written to disk) by the same readers, so the bytes of a file give the tensor the file
    gives. The name only chooses the reader (by its suffix) and names the upload in errors."""
    images = [_read_image(Path(name), data) for name, data in uploads]
    return _settled(images, image_size, channels)


def _settled(images: list[np.ndarray], image_size: int | tuple[int, int] | None, channels: int | None) -> torch.Tensor:
    """Decoded images -> one float32 tensor (N, C, H, W) at the channels and size `decode_images` settles."""
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


def _read_image(file: Path, data: bytes | None = None) -> np.ndarray:
    """float32 (H, W) for grayscale or (H, W, 3) for colour, in [0, 1]. `data`: the file's bytes, already
    in memory (then `file` is only its name)."""
    source = file if data is None else io.BytesIO(data)
    try:
        return _read_dicom(file, source) if file.suffix.lower() == ".dcm" else _read_pil(file, source)
    except MedTransferError:
        raise
    except Exception as e:  # any decoder failure means the same thing to the user
        reason = " ".join(str(e).split()) or type(e).__name__
        raise MedTransferError(
            f"{file}: not a readable PNG/JPEG/DICOM image ({reason}); remove or replace the file"
        ) from e


def _read_pil(file: Path, source=None) -> np.ndarray:
    from PIL import Image  # loaded on first decode (here and in _resize): `import medtransfer.data` stays light

    with Image.open(file if source is None else source) as img:
        img.load()
        mode = img.mode
        if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):  # 16-bit PNG/TIFF
            return np.clip(np.asarray(img, dtype=np.float32) / 65535.0, 0, 1)
        if mode == "F":  # float TIFF: no fixed range, so min-max like DICOM
            return _min_max(np.asarray(img, dtype=np.float32), file)
        if mode in ("1", "L", "LA"):
            return np.asarray(img.convert("L"), dtype=np.float32) / 255.0
        return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0


def _read_dicom(file: Path, source=None) -> np.ndarray:
    import pydicom  # imported here: only folders with DICOM files need it

    ds = pydicom.dcmread(file if source is None else source)
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
