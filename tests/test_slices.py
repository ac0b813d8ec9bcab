"""A 2D source reading volumes plane by plane (`slices:A`): its features are the source's own features of
evenly spaced planes along each axis, averaged per axis; a linear probe on a 3D target saves and reloads
like any run; what needs an order of stages, a 2D target, or a source that is not weights is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import medtransfer as mt
from medtransfer.errors import MedTransferError
from medtransfer.models.kinds.slices import NO_STAGES, plane_positions
from medtransfer.models.sources import load_source_model
from test_feature_cache import write_images

SCRATCH = dict(backbone="test_resnet", epochs=1, progress=False, n_boot=10)
SIZE = 12  # volumes of 12 x 12 x 12


def write_volumes(root: Path) -> None:
    """A fake adrenalmnist3d.npz (the official keys and dtypes) whose 'hyperplasia' volumes are brighter."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 24), ("val", 12), ("test", 16)):
        labels = np.arange(n) % 2
        volumes = rng.integers(0, 120, (n, SIZE, SIZE, SIZE)) + 90 * labels[:, None, None, None]
        arrays[f"{split}_images"] = volumes.astype(np.uint8)
        arrays[f"{split}_labels"] = labels[:, None].astype(np.uint8)
    np.savez_compressed(root / "adrenalmnist3d.npz", **arrays)


@pytest.fixture(scope="module")
def setting(tmp_path_factory) -> tuple[str, Path, Path]:
    """A 3D target (data root, spec) and a 2D source trained on grey 16 px images (a run folder)."""
    root = tmp_path_factory.mktemp("slices")
    write_volumes(root)
    write_images(root / "images")
    source = mt.transfer(f"folder:{root / 'images'}", "scratch", image_size=16, out=root / "source", **SCRATCH).out
    return "medmnist:adrenalmnist3d", root, source


def test_planes_are_evenly_spaced_inside_the_volume():
    assert plane_positions(28, 8) == [3, 6, 9, 12, 15, 18, 21, 24]
    assert plane_positions(12, 8) == [1, 2, 4, 5, 6, 7, 9, 10]
    assert plane_positions(5, 8) == [0, 1, 2, 3, 4]  # fewer planes than asked: each once


def test_the_features_are_the_sources_own_on_the_planes_of_each_axis(setting):
    _, _, source = setting
    alone = load_source_model(str(source), "image2d", 1).model.eval()
    sliced = load_source_model(f"slices:{source}", "image3d", 1).model.eval()
    assert sliced.spec.modality == "image3d" and sliced.num_features == 3 * alone.num_features
    x = torch.rand(3, 1, SIZE, 10, 14, generator=torch.Generator().manual_seed(0))  # not a cube: each axis its own
    with torch.no_grad():
        expected = torch.cat([
            torch.stack([alone.features(x[:, :, i]) for i in plane_positions(SIZE, 8)]).mean(0),
            torch.stack([alone.features(x[:, :, :, i]) for i in plane_positions(10, 8)]).mean(0),
            torch.stack([alone.features(x[:, :, :, :, i]) for i in plane_positions(14, 8)]).mean(0)], dim=1)
        assert torch.allclose(sliced.features(x), expected, atol=1e-5)


def test_a_linear_probe_on_volumes_is_saved_and_reloaded_like_any_run(setting, tmp_path, monkeypatch):
    data, root, source = setting
    monkeypatch.setenv("MEDTRANSFER_CACHE", str(tmp_path / "cache"))
    result = mt.transfer(data, "linear-probe", source=f"slices:{source}", data_root=root, out=tmp_path / "probe",
                         progress=False, n_boot=10)
    assert result.config["source_description"].startswith("8 planes per axis of each volume read by run ")
    assert result.config["architecture"]["kind"] == "slices" and result.config["architecture"]["per_axis"] == 8
    again = mt.evaluate(result.out, n_boot=10)
    assert again["auc"]["value"] == pytest.approx(result.metrics["test"]["auc"]["value"], abs=1e-9)
    assert again["auc"]["value"] > 0.9  # the classes differ in brightness, which every plane shows
    # exported as any run is: the file gives predict_proba's probabilities on batches of another size than
    # the traced example (a plane count or chunking fixed by that example would fail the parity check)
    exported = mt.export(result.out, "onnx", tmp_path / "probe.onnx")
    assert exported.n_checked == 16 and exported.max_abs_diff <= 1e-4
    with pytest.raises(MedTransferError, match="no order of stages on volumes"):  # Grad-CAM needs one
        mt.explain(result.out, data, tmp_path / "explained", data_root=root, limit=2)


def test_full_fine_tuning_trains_the_source_through_the_planes(setting):
    data, root, source = setting
    run = mt.transfer(data, "full", source=f"slices:{source}", data_root=root, save=False, epochs=1,
                      batch_size=8, progress=False, n_boot=10)
    before = load_source_model(f"slices:{source}", "image3d", 1).model.backbone.state_dict()
    after = run.model.backbone.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if before[k].is_floating_point())


def test_what_slices_cannot_do_is_refused_with_the_reason(setting):
    data, root, source = setting
    for spec, reason in (("slices:", "is not weights"), ("slices:medmnist:organamnist", "pretrain a source dataset"),
                         (f"slices:slices:{source}", "is not weights"), (f"slices:stack:{source}+{source}",
                                                                            "is not weights")):
        with pytest.raises(MedTransferError, match=reason):
            load_source_model(spec, "image3d", 1)
    with pytest.raises(MedTransferError, match=rf"slices: reads 3D volumes with a 2D source, the target is image2d; "
                                               rf"give --source {source} itself"):
        load_source_model(f"slices:{source}", "image2d", 1)
    with pytest.raises(MedTransferError, match="no order of stages on volumes"):
        mt.transfer(data, "partial", source=f"slices:{source}", data_root=root, save=False, **SCRATCH)
    assert "--layer-decay flat" in NO_STAGES
    # a 2D source given as it is to a 3D target: the error names the way that works
    with pytest.raises(MedTransferError, match=r"reads volumes plane by plane as --source slices:<source>"):
        mt.transfer(data, "linear-probe", source=str(source), data_root=root, save=False, progress=False)


def test_rank_scores_a_slices_source_and_names_a_bad_one(setting):
    data, root, source = setting
    result = mt.rank(data, [f"slices:{source}"], data_root=root, progress=False)
    width = load_source_model(str(source), "image2d", 1).model.num_features
    assert result.scores[0].logme is not None and result.scores[0].n_features == 3 * width
    assert "slices: sources give features only" in result.scores[0].note  # no LEEP: the head saw planes, not volumes
    with pytest.raises(MedTransferError, match="unknown source 'imagenet:nosuchnet'"):
        mt.rank(data, ["slices:imagenet:nosuchnet"], data_root=root, progress=False)
