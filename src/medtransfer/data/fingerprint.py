"""What identifies a dataset's content: a short digest a loader puts in `TaskDataset.info["fingerprint"]`.

Why: a pretrained source is cached, and a cache keyed by a dataset's *name* serves a stale model when
another file of the same name, or the same file edited, is asked for. Each scheme knows what its
content is (a CSV's or a MedMNIST file's bytes, an image folder's file list with sizes and modification
times) and the options that shape its tensors, so each loader
states it with `digest(...)`. A scheme that states nothing still gets a correct fingerprint: the
digest of its loaded tensors (`dataset_fingerprint`), slower but never stale.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path

import numpy as np

from ..runs import file_digest
from .base import TaskDataset

def digest(*parts) -> str:
    """A short stable digest of JSON-able parts (paths and other objects as their text)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@functools.lru_cache(maxsize=64)
def _file_digest_of(path: str, size: int, mtime_ns: int) -> str:
    return file_digest(path)


def content_digest(path: str | Path) -> str:
    """sha256 of a large file's bytes (a MedMNIST .npz: 40 MB in about 0.1 s), read once per process while
    its size and mtime stay: a copy or a re-mount of the same file keeps its fingerprint (a pretrained
    source stays cached), and any other content changes it."""
    st = os.stat(path)
    return _file_digest_of(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def files_digest(files: list[Path], root: Path) -> str:
    """The file list of a folder, each file's relative path, size and mtime: any image added, removed,
    renamed, moved to another class or rewritten changes it."""
    sha = hashlib.sha256()
    for file in files:
        st = os.stat(file)
        sha.update(f"{Path(file).relative_to(root).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return sha.hexdigest()


def dataset_fingerprint(dataset: TaskDataset) -> str:
    """The loader's fingerprint, else a digest of the loaded tensors, labels, classes and task."""
    found = dataset.info.get("fingerprint")
    if found:
        return str(found)
    sha = hashlib.sha256(json.dumps([dataset.modality, dataset.task, dataset.classes]).encode())
    for split in (dataset.train, dataset.val, dataset.test):
        for tensor in (split.x, split.y):
            array = np.ascontiguousarray(tensor.detach().cpu().numpy())
            sha.update(f"{array.dtype}{array.shape}".encode())
            sha.update(array.tobytes())
    return sha.hexdigest()[:32]
