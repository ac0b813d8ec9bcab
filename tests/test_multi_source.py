"""The multi-dataset supervised source (`--source multi:A,B,...`, issue 14): one backbone, one head per
dataset, pretrained jointly, cached by content like a single source dataset, refused in one line where
it cannot work. Tiny generated folders (16 px PNGs, one grey and one RGB source) and `test_resnet`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import medtransfer as mt
from medtransfer.errors import MedTransferError
from medtransfer.models.checkpoint import load_checkpoint
from medtransfer.pipeline import multi_source as ms
from medtransfer.pipeline import source as source_module
from medtransfer.pipeline.request import DataOptions, TransferRequest

FAST = dict(backbone="test_resnet", image_size=16, source_epochs=1, epochs=1, save=False, progress=False)


def _folder(root: Path, classes: list[str], rgb: bool, seed: int, n=(8, 3, 3), size: int = 16) -> Path:
    """Split folders of PNGs whose brightness (and, for RGB, hue) tells the classes apart."""
    rng = np.random.default_rng(seed)
    for split, k in zip(("train", "val", "test"), n):
        for c, cls in enumerate(classes):
            (root / split / cls).mkdir(parents=True)
            for i in range(k):
                level = 40 + 170 * c / (len(classes) - 1)
                shape = (size, size, 3) if rgb else (size, size)
                image = np.full(shape, level) + rng.normal(0, 20, shape)
                if rgb:
                    image[..., c % 3] += 40
                Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(root / split / cls / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("multi")
    grey = _folder(root / "grey", ["a", "b"], rgb=False, seed=0)
    rgb = _folder(root / "rgb", ["c", "d", "e"], rgb=True, seed=1)
    target = _folder(root / "target", ["neg", "pos"], rgb=False, seed=2)
    return {"grey": grey, "rgb": rgb, "target": target, "spec": f"multi:folder:{grey},folder:{rgb}"}


@pytest.fixture(scope="module")
def pretrained(data):
    """One linear-probe transfer from the multi: source (pretraining it), and the cache folder it used."""
    run = mt.transfer(f"folder:{data['target']}", "linear-probe", source=data["spec"], **FAST)
    cache = Path(os.environ["MEDTRANSFER_CACHE"]) / "sources"
    folders = [f for f in cache.iterdir() if (f / "config.json").is_file()
               and json.loads((f / "config.json").read_text())["data"] == data["spec"]]
    assert len(folders) == 1 and str(folders[0]) in run.config["source_description"]
    return run, folders[0]


def test_pretrains_one_checkpoint_with_a_head_per_dataset_and_transfers(data, pretrained):
    run, folder = pretrained
    assert run.config["source"] == data["spec"] and 0 <= run.metrics["test"]["auc"]["value"] <= 1
    assert run.model.head.out_features == 2  # the target's own new head
    model, meta = load_checkpoint(folder)
    assert meta["task"] == ms.MULTI_SOURCE_TASK
    assert meta["classes"] == ["folder:grey/a", "folder:grey/b", "folder:rgb/c", "folder:rgb/d", "folder:rgb/e"]
    assert [h["outputs"] for h in meta["heads"]] == [[0, 2], [2, 5]]
    assert model.head.out_features == 5 and model.spec.channels == 3 and model.spec.size == 16  # RGB: grey repeated
    metrics = json.loads((folder / "metrics.json").read_text())
    assert set(metrics["val"]) == {"folder:grey", "folder:rgb"} and metrics["fit"]["epochs_run"] == 1
    config = json.loads((folder / "config.json").read_text())
    assert config["train"]["sampler"] == "balanced" and config["datasets"] == data["spec"][6:].split(",")
    # the cache folder is an ordinary source run folder too: a new head, end to end
    again = mt.transfer(f"folder:{data['target']}", "head", source=str(folder), **FAST)
    assert again.model.head.out_features == 2


def test_cache_is_reused_and_a_changed_dataset_misses(data, pretrained, monkeypatch):
    _, folder = pretrained
    calls = []

    class Trained(Exception):
        pass

    def refuse_training(request, multi, out, versions):
        calls.append(out)
        raise Trained

    monkeypatch.setattr(source_module, "write_multi_source", refuse_training)
    run = mt.transfer(f"folder:{data['target']}", "linear-probe", source=data["spec"], **dict(FAST, seed=1))
    assert not calls and str(folder) in run.config["source_description"]

    def key(**kw):
        request = TransferRequest(f"folder:{data['target']}", "full", source=data["spec"], **kw)
        return source_module.multi_source_cache_key(request, ms.load_multi_source(data["spec"], DataOptions()))

    plain = key(backbone="test_resnet", image_size=16, source_epochs=1)
    assert plain == folder.name
    assert key(backbone="test_resnet", image_size=16, source_epochs=2) != plain
    assert key(backbone="test_resnet", image_size=32, source_epochs=1) != plain
    assert key(image_size=16, source_epochs=1) != plain  # the default backbone (resnet18)
    image = data["grey"] / "train" / "a" / "0.png"
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(image)  # one image of one dataset replaced
    os.utime(image, ns=(1, 1))
    assert key(backbone="test_resnet", image_size=16, source_epochs=1) != plain
    with pytest.raises(Trained):
        mt.transfer(f"folder:{data['target']}", "linear-probe", source=data["spec"], **FAST)
    assert len(calls) == 1 and calls[0].name != folder.name


def test_evaluate_refuses_a_multi_source_run_in_one_line(pretrained, data):
    _, folder = pretrained
    with pytest.raises(MedTransferError) as info:
        mt.evaluate(folder, data=f"folder:{data['grey']}")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("spec, fragment", [
    ("multi:folder:{grey}", "at least two"),
    ("multi:folder:{grey},", "at least two"),
    ("multi:folder:{grey},nosuch:x", "'nosuch:x' is not a dataset"),
    ("multi:folder:{grey},{rgb}", "is not a dataset"),
    ("multi:folder:{grey},folder:{grey}", "listed twice"),
    ("multi:folder:{grey},heart:cleveland", "heart:cleveland holds tabular data"),
])
def test_a_bad_spec_is_one_line(data, spec, fragment):
    spec = spec.format(grey=data["grey"], rgb=data["rgb"])
    with pytest.raises(MedTransferError) as info:
        mt.transfer(f"folder:{data['target']}", "linear-probe", source=spec, **FAST)
    assert fragment in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("strategy", ["dann", "coral", "mmd", "prior-shift", "pooled", "source-only", "source-model"])
def test_strategies_that_need_one_source_dataset_or_its_classifier_refuse(data, strategy, monkeypatch):
    monkeypatch.setattr(ms, "load_multi_source", lambda *a, **k: pytest.fail("loaded the parts"))
    with pytest.raises(MedTransferError) as info:
        mt.transfer(f"folder:{data['target']}", strategy, source=data["spec"], **FAST)
    assert strategy in str(info.value) and "\n" not in str(info.value)


def test_the_cli_says_a_bad_spec_in_one_line(data, tmp_path):
    command = [sys.executable, "-m", "medtransfer.cli", "transfer", "--data", f"folder:{data['target']}",
               "--strategy", "linear-probe", "--source", f"multi:folder:{data['grey']}", "--backbone", "test_resnet",
               "--image-size", "16", "--quiet", "--out", str(tmp_path / "run")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1] / "src")))
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "at least two" in lines[0], done.stderr
    assert not (tmp_path / "run").exists()


def test_each_dataset_weighs_the_same_and_reads_only_its_own_head():
    """The joint loss equals the mean over datasets of each one's loss on its own slice of the logits
    (softmax cross-entropy, or per-label BCE for a multilabel dataset), however unequal their counts in
    the batch; a dataset absent from the batch does not dilute the others."""
    from medtransfer.data import Split, TaskDataset

    def dataset(name, task, k, n, channels, size):
        y = torch.arange(n) % k if task != "multilabel" else (torch.rand(n, k) > 0.5).float()
        split = Split(torch.rand(n, channels, size, size), y)
        return TaskDataset(name, "image2d", task, [str(i) for i in range(k)], split, split, split)

    parts = [dataset("a", "binary", 2, 10, 1, 8), dataset("b", "multiclass", 3, 6, 3, 12),
             dataset("c", "multilabel", 2, 5, 1, 8)]
    heads = [ms.Head("a", "a", "binary", ["0", "1"], 0, 2), ms.Head("b", "b", "multiclass", ["0", "1", "2"], 2, 5),
             ms.Head("c", "c", "multilabel", ["0", "1"], 5, 7)]
    multi = ms.MultiSource("multi:a,b,c", ["a", "b", "c"], parts, [DataOptions()] * 3, 3, heads)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 7))
    loss = ms.JointLoss(multi, multi.input_spec(8), augment=False)
    generator = torch.Generator().manual_seed(0)
    a_x, b_x, c_x = (ms.to_layout(p.train.x, 3, 8) for p in parts)
    F = torch.nn.functional
    want_a = F.cross_entropy(model(a_x[:8])[:, 0:2], parts[0].train.y[:8])
    want_b = F.cross_entropy(model(b_x[:1])[:, 2:5], parts[1].train.y[:1])
    want_c = F.binary_cross_entropy_with_logits(model(c_x[:2])[:, 5:7], parts[2].train.y[:2])
    # eight of a, one of b (global numbers: b starts at 10), two of c (c starts at 16)
    got = loss(model, torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 10, 16, 17]), torch.tensor([0] * 8 + [1] + [2] * 2),
               generator)
    assert torch.allclose(got, (want_a + want_b + want_c) / 3, atol=1e-5)
    got = loss(model, torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 10]), torch.tensor([0] * 8 + [1]), generator)
    assert torch.allclose(got, (want_a + want_b) / 2, atol=1e-5)  # c absent from this batch
