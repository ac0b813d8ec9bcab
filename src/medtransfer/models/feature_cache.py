"""Backbone features of a frozen model, cached on disk by content: computed once, reused by every
linear-probe / head cell of a grid and by source ranking.

Why per example: a grid's cells see different subsets of one dataset (each label budget and seed
draws its own training and validation examples), so a cache keyed on a whole input tensor would
compute nearly everything again. Here every input row is looked up on its own, and only the rows
never seen before go through the backbone.

What a hit depends on, so a stale hit cannot happen:
- the model (`model_key`): the bytes, dtype and shape of every parameter and buffer of
  `model.preprocess` and `model.backbone`; the input spec, the architecture and the modules'
  printed structure; the source files of every module class involved and of `model.features`;
  the versions of torch, timm and medtransfer; the device type the features are computed on (CPU
  and GPU numbers differ in the last bits); and `FORMAT_VERSION`;
- the code that computes and stores them: the source files of the `compute` function and of this module;
- the input: the bytes of each row, with the row's shape and dtype.
The head and any calibration are not part of the key: they do not change the features.

Where: `$MEDTRANSFER_CACHE/features/` (default `~/.cache/medtransfer/features/`), one folder per
(model, row shape, dtype) holding shards: `<name>.rows.npy` (16-byte row digests) beside
`<name>.features.npy` (float32 features, one row each). The files can be deleted at any time; they
are computed again when next needed. `MEDTRANSFER_FEATURE_CACHE=0` turns the cache off.

Size: at most `MEDTRANSFER_FEATURE_CACHE_GB` (default 20) GB. Each use of a folder stamps its lock
file; after a new shard is written, the least recently used *other* folders are deleted until the
cache fits (a folder another process holds is left alone). One folder larger than the limit is kept
while in use: the limit evicts old models' features, it never refuses this run's.

Safety: shards are written to a temporary file and renamed into place (features first, then the
rows that index them), so a killed process never leaves a half shard that is read. A shard that
does not load or has the wrong shape is deleted and its rows computed again, never trusted. Shards
are read and written under the folder's OS file lock, but computed outside it: a process *claims*
the missing rows nobody else is computing, computes them while other processes compute theirs (two
grid cells on one model no longer wait for each other), and then waits for the claims covering rows
it still needs, so no row is computed twice by live processes (`_cooperate`).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import os
import uuid
import warnings
from importlib import metadata
from itertools import chain
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..runs import file_digest

FORMAT_VERSION = 1  # bump when what a shard means changes (layout, dtype, what the key covers)
DIGEST_BYTES = 16  # sha256, truncated: it runs on the CPU's SHA extensions, here faster than blake2b
OFF = {"0", "false", "no", "off"}
LIMIT_GB = 20.0  # MEDTRANSFER_FEATURE_CACHE_GB: Lite2's features of all 6,636 PneumoniaMNIST images take 34 MB


def _hash(data: bytes = b""):
    return hashlib.sha256(data)


def _hex(h) -> str:
    return h.hexdigest()[:2 * DIGEST_BYTES]


def cache_root() -> Path:
    """The medtransfer cache folder. The same variable and default as `pipeline.source.cache_dir`,
    read here because models/ must not import pipeline/ (a higher layer)."""
    return Path(os.environ.get("MEDTRANSFER_CACHE", "~/.cache/medtransfer")).expanduser()


def features_dir() -> Path:
    return cache_root() / "features"


def enabled() -> bool:
    """False when MEDTRANSFER_FEATURE_CACHE is 0 / false / no / off."""
    return os.environ.get("MEDTRANSFER_FEATURE_CACHE", "1").strip().lower() not in OFF


def limit_bytes() -> int:
    """MEDTRANSFER_FEATURE_CACHE_GB in bytes; a value that is not a positive number is refused in one line."""
    from ..errors import MedTransferError

    text = os.environ.get("MEDTRANSFER_FEATURE_CACHE_GB", str(LIMIT_GB))
    try:
        gb = float(text)
    except ValueError:
        gb = float("nan")
    if not gb > 0 or gb == float("inf"):
        raise MedTransferError(f"MEDTRANSFER_FEATURE_CACHE_GB must be a positive number of GB, got {text!r}; "
                               f"unset it for the default {LIMIT_GB:g}, or set MEDTRANSFER_FEATURE_CACHE=0 to "
                               "turn the cache off")
    return int(gb * 2**30)


def cacheable(model: nn.Module) -> bool:
    """Whether the model has the Classifier shape the key is built from (preprocess -> backbone)."""
    return all(hasattr(model, name) for name in ("preprocess", "backbone", "features", "num_features"))


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    """The raw bytes of a tensor (any dtype, bf16 included), without a copy when it is already on the CPU."""
    flat = t.detach().cpu().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())


@functools.lru_cache(maxsize=None)
def _file_digest(path: str) -> str:
    try:
        return file_digest(path)[:2 * DIGEST_BYTES]
    except OSError:
        return "unreadable"


def _code_digest(obj) -> str:
    """The digest of the source file that defines a class or function (a code change is a new key)."""
    try:
        path = inspect.getsourcefile(obj)
    except TypeError:  # built in
        path = None
    return _file_digest(path) if path else "builtin"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"


def model_key(model: nn.Module, device: torch.device | str) -> str:
    """The digest of everything the features of `model` depend on (see the module docstring)."""
    preprocess, backbone = model.preprocess, model.backbone
    features_fn = getattr(model.features, "__func__", model.features)
    classes = {type(m) for m in chain(preprocess.modules(), backbone.modules())}
    spec = getattr(preprocess, "spec", None) or getattr(model, "spec", None)
    meta = {
        "format": FORMAT_VERSION, "medtransfer": __version__, "torch": torch.__version__,
        "timm": _version("timm"), "device": torch.device(device).type,
        "spec": spec.to_dict() if hasattr(spec, "to_dict") else repr(spec),
        "architecture": getattr(model, "architecture", None), "num_features": int(model.num_features),
        "features": f"{features_fn.__module__}.{features_fn.__qualname__}:{_code_digest(features_fn)}",
        "classes": sorted(f"{c.__module__}.{c.__qualname__}:{_code_digest(c)}" for c in classes),
        "structure": [repr(preprocess), repr(backbone)],
    }
    h = _hash(json.dumps(meta, sort_keys=True, default=str).encode())
    for prefix, module in (("preprocess", preprocess), ("backbone", backbone)):
        for name, t in chain(module.named_parameters(), module.named_buffers()):
            h.update(f"|{prefix}.{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(_tensor_bytes(t))
    return _hex(h)


def row_digests(x: torch.Tensor) -> list[bytes]:
    """One 16-byte digest per row of x (its bytes only: shape and dtype go into the folder's key)."""
    rows = x.detach().cpu().contiguous().reshape(len(x), -1)
    data = rows.view(torch.uint8).numpy() if rows.shape[1] else np.zeros((len(x), 0), np.uint8)
    return [_hash(row).digest()[:DIGEST_BYTES] for row in data]


def folder_for(model: nn.Module, x: torch.Tensor, device: torch.device | str, compute: Callable | None = None) -> Path:
    """The cache folder of (model, row shape, dtype), and of the code that computes and stores features
    (this file and the file defining `compute`): an edit to either is a new folder."""
    code = f"{_code_digest(compute) if compute else ''}|{_file_digest(__file__)}"
    key = f"{model_key(model, device)}|{tuple(x.shape[1:])}|{x.dtype}|{code}"
    return features_dir() / _hex(_hash(key.encode()))


def _save_atomic(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.save(f, array)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _shards(folder: Path, width: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The folder's readable shards as (row digests, memory-mapped features). Anything else there is
    deleted: corrupt or wrong-shape shards, and features whose rows file was never written (the
    caller holds the folder's lock, so no writer is between its two renames)."""
    shards, indexed = [], set()
    for rows_path in sorted(folder.glob("*.rows.npy")):
        feats_path = rows_path.with_name(rows_path.name.replace(".rows.npy", ".features.npy"))
        indexed.add(feats_path.name)
        try:
            rows = np.load(rows_path)
            feats = np.load(feats_path, mmap_mode="r")
            ok = (rows.dtype == np.uint8 and rows.ndim == 2 and rows.shape[1] == DIGEST_BYTES
                  and feats.dtype == np.float32 and feats.shape == (len(rows), width))
        except (OSError, ValueError, EOFError):
            ok = False
        if ok:
            shards.append((rows, feats))
        else:
            rows_path.unlink(missing_ok=True)
            feats_path.unlink(missing_ok=True)
    for orphan in folder.glob("*.features.npy"):
        if orphan.name not in indexed:
            orphan.unlink(missing_ok=True)
    return shards


def cached_features(model: nn.Module, x: torch.Tensor, compute: Callable[[torch.Tensor], np.ndarray],
                    device: torch.device | str) -> np.ndarray:
    """Features of `x` (N, width float32): rows seen before are read from the cache, the others are
    computed with `compute(rows)` (which must run `model.features` in eval mode on `device`) and
    stored. When the cache folder cannot be used the features are computed without it (warned)."""
    width = int(model.num_features)
    folder = folder_for(model, x, device, compute)
    digests = row_digests(x)
    limit = limit_bytes()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        from filelock import FileLock  # a dependency of torch; an OS lock, released when a killed process ends

        lock = FileLock(str(folder) + ".lock")
        with lock:
            os.utime(lock.lock_file)  # this folder's last use, for the eviction order
    except OSError as e:
        _warn(e)
        return compute(x)
    features, wrote = _cooperate(folder, lock, x, digests, width, compute)
    if wrote:
        evict(limit, keep=folder)
    return features


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.iterdir() if f.is_file())


def _last_use(folder: Path) -> float:
    """When the folder was last used (its lock file's mtime; 0 when it has none: evicted first)."""
    try:
        return Path(str(folder) + ".lock").stat().st_mtime
    except OSError:
        return 0.0


def evict(limit: int, keep: Path) -> None:
    """Delete the least recently used folders other than `keep` until the cache holds at most `limit`
    bytes. A folder whose lock another process holds, or that holds a claim, is skipped; errors leave a
    folder in place."""
    import shutil

    from filelock import FileLock, Timeout

    try:
        folders = [f for f in features_dir().iterdir() if f.is_dir()]
        sizes = {f: _size(f) for f in folders}
    except OSError:
        return
    total = sum(sizes.values())
    last_use = {f: _last_use(f) for f in folders}
    for folder in sorted((f for f in folders if f != keep), key=last_use.get):
        if total <= limit:
            return
        if any(folder.glob("*.claim.npy")):  # a process may be computing rows of it (outside its lock)
            continue
        lock = FileLock(str(folder) + ".lock")
        try:
            lock.acquire(timeout=0)
        except (Timeout, OSError):
            continue
        try:
            shutil.rmtree(folder)
            total -= sizes[folder]
        except OSError:
            pass
        finally:
            lock.release()


def _warn(error: OSError) -> None:
    warnings.warn(f"feature cache unusable ({error}); features computed without it (set MEDTRANSFER_CACHE "
                  "to a writable folder, or MEDTRANSFER_FEATURE_CACHE=0)", stacklevel=3)


def _cooperate(folder: Path, lock, x: torch.Tensor, digests: list[bytes], width: int,
               compute: Callable[[torch.Tensor], np.ndarray]) -> tuple[np.ndarray, bool]:
    """The features of x, and whether a new shard was written. Processes share the folder by claims:
    under the folder's lock a process reads what the shards hold and claims the missing rows no live
    claim covers; it computes those with the folder unlocked (another process meanwhile claims and
    computes other rows of the same model: two grid cells do not wait on each other), stores them, and
    then waits for the claims of others on rows it still needs. A claim is a file of row digests plus
    an OS lock its process holds while computing: a killed claimant's lock is free, so its claim is
    dropped and its rows computed again, never waited for forever. Nobody waits while holding a claim."""
    wanted: dict[bytes, list[int]] = {}  # digest -> positions in x (a repeated row is computed once)
    for i, d in enumerate(digests):
        wanted.setdefault(d, []).append(i)
    out = np.empty((len(x), width), np.float32)
    wrote = False
    while True:
        with lock:
            _fill(folder, wanted, out, width)
            if not wanted:
                return out, wrote
            claims = _live_claims(folder)
            mine = [d for d in wanted if not any(d in rows for _, rows in claims)]
            try:
                claim = _claim(folder, mine) if mine else None
            except OSError as e:  # a folder we cannot write to: compute what is missing, store nothing
                _warn(e)
                rest = compute(x[torch.as_tensor([positions[0] for positions in wanted.values()])])
                for k, positions in enumerate(wanted.values()):
                    out[positions] = rest[k]
                return out, wrote
        if claim is None:  # every missing row is another process's: wait for one of them, then look again
            _wait(next(path for path, rows in claims if any(d in rows for d in wanted)))
            continue
        try:
            first = [wanted[d][0] for d in mine]  # in input order: `wanted` keeps it
            new = compute(x if len(first) == len(x) else x[torch.as_tensor(first)])
            new = np.ascontiguousarray(new, dtype=np.float32)
            if new.shape != (len(mine), width):
                raise ValueError(f"features of shape {new.shape}, expected {(len(mine), width)}")
            with lock:
                wrote = _store(folder, mine, new) or wrote
                claim[0].unlink(missing_ok=True)  # gone with the folder locked: nobody reads it half-done
        finally:
            claim[0].unlink(missing_ok=True)
            _release(claim[1])
        for k, d in enumerate(mine):
            out[wanted.pop(d)] = new[k]


def _fill(folder: Path, wanted: dict[bytes, list[int]], out: np.ndarray, width: int) -> None:
    """Copy the rows the folder's shards hold into `out`, removing them from `wanted`."""
    try:
        shards = _shards(folder, width)
    except OSError as e:
        _warn(e)
        shards = []
    for rows, feats in shards:
        index = {row.tobytes(): j for j, row in enumerate(rows)}
        hits = [(d, index[d]) for d in wanted if d in index]
        if hits:
            block = feats[np.array([j for _, j in hits])]  # reads only these rows of the memory map
            for k, (d, _) in enumerate(hits):
                out[wanted.pop(d)] = block[k]


def _claim_lock(path: Path):
    from filelock import FileLock
    return FileLock(str(path) + ".lock")


def _live_claims(folder: Path) -> list[tuple[Path, set[bytes]]]:
    """The claims whose process still computes (holds the claim's lock); dead ones are deleted."""
    from filelock import Timeout

    live = []
    for path in sorted(folder.glob("*.claim.npy")):
        claim_lock = _claim_lock(path)
        try:
            claim_lock.acquire(timeout=0)
        except Timeout:  # held: its process is computing these rows
            try:
                live.append((path, {row.tobytes() for row in np.load(path)}))
            except (OSError, ValueError, EOFError):
                pass
            continue
        except OSError:
            continue
        try:  # free: the claimant died before storing its rows
            path.unlink(missing_ok=True)
        finally:
            _release(claim_lock)
    return live


def _claim(folder: Path, rows: list[bytes]):
    """(claim file, its held lock) for `rows`; the lock is taken before the file is visible. Called with
    the folder's lock held."""
    path = folder / f"{uuid.uuid4().hex}.claim.npy"
    claim_lock = _claim_lock(path)
    claim_lock.acquire()
    try:
        _save_atomic(path, np.frombuffer(b"".join(rows), np.uint8).reshape(-1, DIGEST_BYTES))
    except OSError:
        claim_lock.release()
        raise
    return path, claim_lock


def _wait(path: Path) -> None:
    """Block until the claim's process has stored its rows or died (its lock is then free)."""
    claim_lock = _claim_lock(path)
    claim_lock.acquire()
    _release(claim_lock)


def _release(claim_lock) -> None:
    """Release a claim's lock and remove its file (a claim's lock is used once)."""
    claim_lock.release()
    Path(claim_lock.lock_file).unlink(missing_ok=True)


def _store(folder: Path, rows: list[bytes], features: np.ndarray) -> bool:
    """Write one shard (features first: the rows file makes it visible); False, warned, when it cannot."""
    digests = np.frombuffer(b"".join(rows), np.uint8).reshape(-1, DIGEST_BYTES)
    name = _hex(_hash(digests.tobytes()))
    try:
        folder.mkdir(parents=True, exist_ok=True)  # another process may have evicted it
        _save_atomic(folder / f"{name}.features.npy", features)
        _save_atomic(folder / f"{name}.rows.npy", digests)
    except OSError as e:
        _warn(e)
        return False
    return True
