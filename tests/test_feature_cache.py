"""The frozen-feature cache: a hit is exactly what was computed, anything the features depend on
(weights, input bytes, input spec) changes the key, a damaged file is recomputed, the switch turns it
off, and a linear probe run twice computes its features once (evaluation included)."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import medtransfer as mt
from medtransfer.models import feature_cache
from medtransfer.models.backbones import Classifier, create_model, default_spec, describe
from medtransfer.models.inference import extract_features, logits, predict_proba


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("MEDTRANSFER_CACHE", str(tmp_path))
    monkeypatch.delenv("MEDTRANSFER_FEATURE_CACHE", raising=False)
    return tmp_path / "features"


def tiny(size: int = 16, seed: int = 0) -> Classifier:
    torch.manual_seed(seed)
    return create_model(describe("test_resnet", "image2d", 1), default_spec("image2d", 1, image_size=size), 2)


class Rows:
    """Counts the rows that go through a backbone (a forward hook leaves the model's key alone)."""

    def __init__(self, model: Classifier):
        self.n = 0
        model.backbone.register_forward_hook(self)

    def __call__(self, module, inputs, output):
        self.n += len(inputs[0])

    def take(self) -> int:
        n, self.n = self.n, 0
        return n


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 16, 16, generator=torch.Generator().manual_seed(seed))


def shard_files(cache: Path) -> list[Path]:
    return sorted(cache.rglob("*.npy")) if cache.exists() else []


def test_a_hit_is_the_miss_bit_for_bit(cache):
    model, x = tiny(), images(12)
    rows = Rows(model)
    plain = extract_features(model, x, cache=False)
    assert rows.take() == 12 and not shard_files(cache)
    miss = extract_features(model, x)
    assert rows.take() == 12 and len(shard_files(cache)) == 2  # one shard: rows + features
    hit = extract_features(model, x, batch_size=5)
    assert rows.take() == 0
    assert miss.dtype == hit.dtype == np.float32
    assert np.array_equal(miss, plain) and np.array_equal(hit, miss)


def test_only_new_rows_are_computed_and_repeats_once(cache):
    model, x = tiny(), images(10)
    rows = Rows(model)
    first = extract_features(model, x)
    rows.take()
    new = images(3, seed=1)
    mixed = torch.cat([x[7:], new, x[:2], new[:1]])  # 3 seen, 3 new, 2 seen, 1 new repeated
    out = extract_features(model, mixed)
    assert rows.take() == 3
    assert np.array_equal(out[:3], first[7:]) and np.array_equal(out[6:8], first[:2])
    assert np.array_equal(out[8], out[3])
    assert np.allclose(out, extract_features(model, mixed, cache=False), atol=1e-6)


def test_a_changed_weight_input_or_input_size_misses(cache):
    model, x = tiny(), images(8)
    rows = Rows(model)
    extract_features(model, x)
    rows.take()

    with torch.no_grad():
        next(model.backbone.parameters()).view(-1)[0] += 1e-3  # one weight, by a little
    changed = extract_features(model, x)
    assert rows.take() == 8

    model.backbone.bn1.running_mean[0] += 1e-3  # a buffer is part of the weights too
    extract_features(model, x)
    assert rows.take() == 8

    y = x.clone()
    y[5, 0, 3, 3] += 1e-6  # one pixel of one image
    out = extract_features(model, y)
    assert rows.take() == 1
    assert np.array_equal(np.delete(out, 5, 0), np.delete(extract_features(model, x), 5, 0))
    assert rows.take() == 0
    assert not np.array_equal(changed, extract_features(model, x))  # the last weights' features, not stale ones

    bigger = tiny(size=24)
    bigger.load_state_dict(model.state_dict())  # same weights, another preprocess size
    rows_big = Rows(bigger)
    extract_features(bigger, x)
    assert rows_big.take() == 8

    folder = feature_cache.folder_for(model, x, "cpu")  # dtype, row shape and device type are in the key
    assert folder != feature_cache.folder_for(model, x.double(), "cpu")
    assert folder != feature_cache.folder_for(model, x.view(8, 1, 8, 32), "cpu")
    assert folder != feature_cache.folder_for(model, x, "cuda")


def test_a_damaged_or_half_written_file_is_recomputed_never_trusted(cache):
    model, x = tiny(), images(6)
    rows = Rows(model)
    good = extract_features(model, x)
    rows.take()
    feats = next(cache.rglob("*.features.npy"))
    for damage in (b"not a numpy file", feats.read_bytes()[:-40]):  # garbage; a file cut short
        feats.write_bytes(damage)
        assert np.array_equal(extract_features(model, x), good)
        assert rows.take() == 6
        assert np.array_equal(extract_features(model, x), good)  # and rewritten whole
        assert rows.take() == 0

    feats = next(cache.rglob("*.features.npy"))
    wrong = np.load(feats)[:, :-1]  # readable, wrong width
    np.save(feats, wrong)
    assert np.array_equal(extract_features(model, x), good) and rows.take() == 6

    next(cache.rglob("*.rows.npy")).unlink()  # killed between the two renames: features without rows
    assert np.array_equal(extract_features(model, x), good) and rows.take() == 6
    assert len(shard_files(cache)) == 2  # the orphan was removed


def test_switched_off_writes_nothing(cache, monkeypatch):
    monkeypatch.setenv("MEDTRANSFER_FEATURE_CACHE", "0")
    model, x = tiny(), images(4)
    model.backbone.requires_grad_(False)
    extract_features(model, x)
    predict_proba(model, x, "binary")
    assert not cache.exists()


def test_the_cache_keeps_to_its_size_limit_evicting_the_least_recently_used(cache, monkeypatch):
    from medtransfer.errors import MedTransferError
    x = images(20)
    models = {name: tiny(seed=seed) for seed, name in enumerate(("first", "second", "third"))}
    expected = {name: extract_features(m, x, cache=False) for name, m in models.items()}
    folder = {}

    def run(name, rows=x):
        before = set(folders())
        out = extract_features(models[name], rows)
        for new in set(folders()) - before:
            folder[name] = new
        return out

    def folders():
        return [f for f in cache.iterdir() if f.is_dir()] if cache.exists() else []

    run("first")
    one = feature_cache._size(folder["first"])
    monkeypatch.setenv("MEDTRANSFER_FEATURE_CACHE_GB", str(2.5 * one / 2**30))  # room for two models' features
    run("second")
    os.utime(str(folder["first"]) + ".lock", (1, 1))  # the first used long ago
    run("second")  # a hit: nothing written, nothing evicted
    assert sorted(folders()) == sorted([folder["first"], folder["second"]])
    assert np.array_equal(run("third"), expected["third"])
    assert sorted(folders()) == sorted([folder["second"], folder["third"]])  # the least recently used went
    assert np.array_equal(run("first"), expected["first"])  # recomputed, never wrong
    assert folder["second"] not in folders()  # now the least recently used

    monkeypatch.setenv("MEDTRANSFER_FEATURE_CACHE_GB", str(one / 4 / 2**30))  # smaller than one folder
    assert np.array_equal(run("third", x[:3]), expected["third"][:3])
    fresh = images(2, seed=9)  # rows never seen: a new shard, then eviction
    assert np.array_equal(run("first", fresh), extract_features(models["first"], fresh, cache=False))
    assert folders() == [folder["first"]]  # in use: kept, however small the limit
    for bad in ("0", "-1", "lots", "inf"):
        monkeypatch.setenv("MEDTRANSFER_FEATURE_CACHE_GB", bad)
        with pytest.raises(MedTransferError, match="MEDTRANSFER_FEATURE_CACHE_GB must be a positive number"):
            extract_features(models["first"], x)


def test_a_frozen_model_is_evaluated_from_cached_features(cache):
    model, x = tiny(), images(9)
    rows = Rows(model)
    trainable = predict_proba(model, x, "binary")
    assert rows.take() == 9 and not cache.exists()  # a model that trains is evaluated whole, nothing stored
    model.backbone.requires_grad_(False)
    first = predict_proba(model, x, "binary", batch_size=4)
    assert rows.take() == 9
    again, raw = predict_proba(model, x, "binary", batch_size=4), logits(model, x)
    assert rows.take() == 0
    assert np.array_equal(first, again) and np.allclose(first, trainable, atol=1e-6)
    assert np.allclose(torch.softmax(torch.from_numpy(raw), 1).numpy(), first, atol=1e-6)


def write_images(folder: Path, per_class: int = 15) -> None:
    rng = np.random.default_rng(0)
    for label, shift in (("a", 0), ("b", 90)):
        (folder / label).mkdir(parents=True)
        for i in range(per_class):
            pixels = (rng.integers(0, 120, (16, 16)) + shift).astype(np.uint8)
            Image.fromarray(pixels, "L").save(folder / label / f"{i}.png")


def test_a_linear_probe_run_twice_computes_its_features_once(cache, tmp_path, monkeypatch):
    write_images(tmp_path / "images")
    data = f"folder:{tmp_path / 'images'}"
    source = mt.transfer(data, "scratch", backbone="test_resnet", image_size=16, epochs=1, out=tmp_path / "source",
                         progress=False, n_boot=10).out
    computed = []
    features = Classifier.features

    def counted(self, x):
        computed.append(len(x))
        return features(self, x)

    monkeypatch.setattr(Classifier, "features", counted)
    probe = dict(source=str(source), save=False, progress=False, n_boot=10)
    first = mt.transfer(data, "linear-probe", **probe)
    n = first.config["n_train_labels"] + first.config["n_val_labels"] + first.config["n_test"]
    assert sum(computed) == n  # train, val and test once each: evaluation read the probe's features
    computed.clear()
    second = mt.transfer(data, "linear-probe", **probe)
    assert sum(computed) == 0
    assert json.dumps(second.metrics["test"], sort_keys=True) == json.dumps(first.metrics["test"], sort_keys=True)
    assert np.array_equal(second.predictions.filter(like="prob").to_numpy(),
                          first.predictions.filter(like="prob").to_numpy())

    other_seed = mt.transfer(data, "linear-probe", budget=8, seed=1, **probe)  # a subset: every row seen
    assert sum(computed) == 0 and other_seed.config["n_train_labels"] == 8
    n_train = first.config["n_train_labels"]  # no budget: every training example labelled
    assert first.config["strategy_notes"]["feature_scaling"] == "features standardised on the labelled training examples"
    assert other_seed.config["strategy_notes"]["feature_scaling"].startswith(
        f"features standardised on {n_train} unlabelled target inputs")  # 8 labels, every input scaled


# ----------------------------------------------------------------------------- processes sharing a folder


def features_of(model: Classifier, rows: torch.Tensor) -> np.ndarray:
    """A stand-in for the backbone that any process computes identically: the first pixels of each row."""
    return rows.reshape(len(rows), -1)[:, :model.num_features].numpy().astype(np.float32)


def claimant(cache: str, x: torch.Tensor, started: str, go: str) -> None:
    """Another grid cell: claims the rows of x, says so, and computes them only once told to."""
    os.environ["MEDTRANSFER_CACHE"] = cache
    model = tiny()

    def compute(rows):
        Path(started).touch()
        while not Path(go).exists():
            time.sleep(0.01)
        return features_of(model, rows)

    feature_cache.cached_features(model, x, compute, "cpu")


def start_claimant(tmp_path: Path, x: torch.Tensor):
    started, go = tmp_path / "started", tmp_path / "go"
    process = multiprocessing.get_context("fork").Process(
        target=claimant, args=(str(tmp_path), x, str(started), str(go)))
    process.start()
    deadline = time.monotonic() + 60
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert started.exists(), "the other process never started computing"
    return process, go


def test_a_process_computes_the_rows_nobody_claimed_then_waits_for_the_others(cache, tmp_path):
    model, x = tiny(), images(12)
    process, go = start_claimant(tmp_path, x[:6])  # holds a claim on the first 6 rows while it computes
    computed, safety = [], threading.Timer(20, go.touch)  # (were this process to wait, the other goes on later)
    safety.start()

    def compute(rows):
        computed.append((len(rows), go.exists()))
        go.touch()  # only now may the other process finish
        return features_of(model, rows)

    try:
        got = feature_cache.cached_features(model, x, compute, "cpu")
    finally:
        safety.cancel()
    process.join(60)
    assert computed == [(6, False)]  # its own 6 rows while the other computed its 6, which it then read
    assert process.exitcode == 0 and np.array_equal(got, features_of(model, x))
    assert not list(cache.rglob("*.claim*"))  # claims leave nothing behind


def test_a_killed_claimant_is_not_waited_for_its_rows_are_computed_again(cache, tmp_path):
    model, x = tiny(), images(12)
    process, _ = start_claimant(tmp_path, x[:6])
    computed = []

    def kill():
        if process.is_alive():
            os.kill(process.pid, signal.SIGKILL)  # dies holding its claim
            process.join(60)

    safety = threading.Timer(20, kill)  # (were this process to wait for the folder, it waits this long)
    safety.start()

    def compute(rows):
        computed.append(len(rows))
        kill()
        return features_of(model, rows)

    try:
        got = feature_cache.cached_features(model, x, compute, "cpu")
    finally:
        safety.cancel()
    assert computed == [6, 6] and np.array_equal(got, features_of(model, x))
    assert not list(cache.rglob("*.claim.npy"))
