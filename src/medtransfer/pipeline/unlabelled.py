"""Extra unlabelled target images (`--unlabelled folder:PATH`): inputs from the target's hospital whose labels
nobody has, added to the target's own training inputs where a strategy learns without labels: the linear
probe's feature scaling, dann / coral / mmd, prior-shift.

Why: a team labels a few images but often holds many more from the same scanners. Without this the
unlabelled pool is the target's training split, which for a user's own folder is only the labelled images,
so the gains measured with a label budget (README, the probe scaling) would never reach them.

What keeps it honest: the images are decoded exactly as the target's (the one decoder, at the target's
channels and height x width); any image identical to one of the target's validation or test inputs is left
out, counted and warned about, so choices and the test split stay on inputs no strategy has seen (one
identical to a training input is left out too: it is already in the pool); the folder's file-list digest
and the counts used and left out go into the run's config.json.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..data import TaskDataset
from ..data.fingerprint import files_digest
from ..data.folder import IMAGE_EXTENSIONS, decode_images, image_files
from ..errors import MedTransferError
from ..models.feature_cache import row_digests
from ..strategies import STRATEGIES

SCHEME = "folder:"
FIX = "give --unlabelled folder:<path>, a folder of the target hospital's images (any layout; labels unused)"


@dataclass
class ExtraUnlabelled:
    x: torch.Tensor  # decoded as the target's images, held-out duplicates removed
    record: dict  # what config.json keeps: spec, folder digest, images used, duplicates left out


def load_extra_unlabelled(spec: str | None, target: TaskDataset, strategy) -> ExtraUnlabelled | None:
    """The images of `spec` (folder:<path>) as the target's inputs, or None without a spec. Refused (one line)
    for a strategy that would not read them (a run that says it had them but ignored them), a target that is
    not 2D images, a scheme other than folder:, a missing folder or one without images."""
    if spec is None:
        return None
    if not spec.startswith(SCHEME):
        raise MedTransferError(f"--unlabelled {spec}: not a folder: spec; {FIX}")
    if target.modality != "image2d":
        raise MedTransferError(f"--unlabelled {spec}: extra unlabelled inputs are taken for 2D image targets only, "
                               f"and {target.name} holds {target.modality} data; leave --unlabelled out")
    if not strategy.reads_unlabelled:
        able = ", ".join(sorted(n for n, cls in STRATEGIES.items() if cls.reads_unlabelled))
        raise MedTransferError(f"--unlabelled {spec}: strategy {strategy.name!r} does not learn from unlabelled "
                               f"images, so they would change nothing; use one that does ({able}) or leave it out")
    root, files = _images(spec)
    if not root.is_dir():
        raise MedTransferError(f"--unlabelled {spec}: {root} is not a directory; {FIX}")
    if not files:
        raise MedTransferError(f"--unlabelled {spec}: no images in {root} (types: {', '.join(IMAGE_EXTENSIONS)}); "
                               f"{FIX}")
    _, channels, height, width = target.train.x.shape
    x = decode_images(files, (height, width), channels)
    held_out = set(row_digests(target.val.x)) | set(row_digests(target.test.x))
    training = set(row_digests(target.train.x))
    digests = row_digests(x)
    keep = [i for i, digest in enumerate(digests) if digest not in held_out and digest not in training]
    record = {"spec": spec, "files_digest": files_digest(files, root), "images": len(keep),
              "held_out_duplicates": sum(digest in held_out for digest in digests),
              "training_duplicates": sum(digest in training and digest not in held_out for digest in digests)}
    return ExtraUnlabelled(x[keep], record)


def folder_digest(spec: str) -> str | None:
    """The file-list digest of an --unlabelled folder as it is now (paths, sizes, times; nothing decoded),
    or None when it is no folder of images: what a resumed grid compares with its cells' record."""
    root, files = _images(spec)
    return files_digest(files, root) if files else None


def _images(spec: str) -> tuple[Path, list[Path]]:
    """The folder a folder: spec names, and its image files (none when it is no folder)."""
    root = Path(spec[len(SCHEME):]).expanduser()
    return root, image_files(root) if spec.startswith(SCHEME) and root.is_dir() else []


def duplicate_warning(extra: ExtraUnlabelled | None) -> list[str]:
    """The user hears when images were left out for being the target's validation or test inputs."""
    if extra is None or not extra.record["held_out_duplicates"]:
        return []
    return [f"--unlabelled: {extra.record['held_out_duplicates']} of the images are identical to the target's "
            "validation or test inputs and were left out, so no strategy sees the inputs it is chosen and "
            f"tested on; {extra.record['images']} used"]
