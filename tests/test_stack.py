"""A stack of sources (`stack:A+B`): each member reads the images as it would alone (its own size and
normalisation), the features are the members' side by side and come from their feature-cache entries, a
linear probe on a stack saves and reloads like any run, and what needs one order of stages is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import medtransfer as mt
from medtransfer.errors import MedTransferError
from medtransfer.models.inference import extract_features
from medtransfer.models.kinds.stack import NO_STAGES
from medtransfer.models.sources import load_source_model
from test_feature_cache import shard_files, write_images

SCRATCH = dict(backbone="test_resnet", epochs=1, progress=False, n_boot=10)


@pytest.fixture(scope="module")
def members(tmp_path_factory) -> tuple[str, Path, Path]:
    """A grey image folder and two sources trained on it at different input sizes (16 and 24 px), one calibrated."""
    root = tmp_path_factory.mktemp("stack")
    write_images(root / "images")
    data = f"folder:{root / 'images'}"
    small = mt.transfer(data, "scratch", image_size=16, out=root / "small", **SCRATCH).out
    large = mt.transfer(data, "scratch", image_size=24, seed=1, calibrate="temperature", out=root / "large",
                        **SCRATCH).out  # a run with a calibration module: a member takes its backbone only
    return data, small, large


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("MEDTRANSFER_CACHE", str(tmp_path))
    monkeypatch.delenv("MEDTRANSFER_FEATURE_CACHE", raising=False)
    return tmp_path / "features"


def test_a_stack_is_its_members_side_by_side_each_at_its_own_size_and_from_their_cache(members, cache):
    _, small, large = members
    x = torch.rand(7, 1, 20, 20, generator=torch.Generator().manual_seed(0))
    alone = [load_source_model(str(folder), "image2d", 1).model for folder in (small, large)]
    assert [m.spec.size for m in alone] == [16, 24]
    expected = np.concatenate([extract_features(m, x) for m in alone], axis=1)  # each member's cache entry
    written = shard_files(cache)

    stack = load_source_model(f"stack:{small}+{large}", "image2d", 1).model
    assert [m.spec.size for m in stack.backbone.members] == [16, 24]
    assert stack.num_features == sum(m.num_features for m in alone)
    assert np.array_equal(extract_features(stack, x), expected)
    assert shard_files(cache) == written  # read from the members' entries: nothing computed or stored anew
    with torch.no_grad():  # the model's own forward pass (training, export) computes the same features
        assert np.allclose(stack.eval().features(x).numpy(), expected, atol=1e-6)


def test_a_linear_probe_on_a_stack_is_saved_and_reloaded_like_any_run(members, tmp_path):
    data, small, large = members
    result = mt.transfer(data, "linear-probe", source=f"stack:{small}+{large}", out=tmp_path / "probe",
                         progress=False, n_boot=10)
    assert "stack of" in result.config["source_description"]
    again = mt.evaluate(result.out, n_boot=10)
    assert again["auc"]["value"] == pytest.approx(result.metrics["test"]["auc"]["value"], abs=1e-9)
    assert again["auc"]["value"] > 0.9  # the two classes differ in brightness: any feature separates them


def test_what_a_stack_cannot_do_is_refused_with_the_reason(members, tmp_path):
    data, small, large = members
    stack = f"stack:{small}+{large}"
    for spec, reason in ((f"stack:{small}", "two or more sources"),
                         (f"stack:{small}+", "two or more sources"),
                         (f"stack:{small}+medmnist:organamnist", "pretrain a source dataset first"),
                         (f"stack:{small}+stack:{small}+{large}", "is not weights")):
        with pytest.raises(MedTransferError, match=reason):
            load_source_model(spec, "image2d", 1)
    with pytest.raises(MedTransferError, match="a stack combines 2D image models"):
        load_source_model(stack, "tabular", 0)
    for strategy, options in (("partial", {}), ("full", {})):  # full: the default layer decay needs stages
        with pytest.raises(MedTransferError, match="no single order of stages"):
            mt.transfer(data, strategy, source=stack, save=False, epochs=1, progress=False, n_boot=10, **options)
    assert "--layer-decay flat" in NO_STAGES
    flat = mt.transfer(data, "full", source=stack, save=False, epochs=1, layer_decay="flat", progress=False,
                       n_boot=10)
    before = load_source_model(stack, "image2d", 1).model.backbone.state_dict()
    after = flat.model.backbone.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before  # both members' backbones fine-tuned
               if k.startswith("members.0.") and before[k].is_floating_point())
    assert any(not torch.equal(before[k], after[k]) for k in before
               if k.startswith("members.1.") and before[k].is_floating_point())


def test_rank_scores_a_stack_beside_its_members_and_names_a_bad_member(members):
    data, small, large = members
    stack = f"stack:{small}+{large}"
    result = mt.rank(data, [str(small), str(large), stack], progress=False)
    scores = {s.source: s for s in result.scores}
    assert all(scores[s].logme is not None for s in (str(small), str(large), stack))
    assert scores[stack].leep is None  # features only: a stack has no source head
    with pytest.raises(MedTransferError, match="unknown source 'imagenet:nosuchnet'"):
        mt.rank(data, [str(small), f"stack:{small}+imagenet:nosuchnet"], progress=False)
