"""--unlabelled folder:PATH: more target images without labels join the training split's inputs where a
strategy learns without labels (here the linear probe's feature scaling); images identical to the target's
validation or test inputs are left out and warned about, and config.json records what was used."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

import medtransfer as mt
from medtransfer.errors import MedTransferError
from test_feature_cache import write_images

PROBE = dict(save=False, progress=False, n_boot=10, budget=4)


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    """A grey 16 px two-class folder, a scratch source trained on it, and an unlabelled folder holding 10 new
    RGB 20 px images beside a copy of every target image (nested: any layout is read, labels unused)."""
    root = tmp_path_factory.mktemp("unlabelled")
    write_images(root / "images")
    data = f"folder:{root / 'images'}"
    source = mt.transfer(data, "scratch", backbone="test_resnet", image_size=16, epochs=1, out=root / "source",
                         progress=False, n_boot=10).out
    rng = np.random.default_rng(1)
    (root / "more" / "new").mkdir(parents=True)
    for i in range(10):
        pixels = rng.integers(0, 255, (20, 20, 3)).astype(np.uint8)
        Image.fromarray(pixels, "RGB").save(root / "more" / "new" / f"{i}.png")
    shutil.copytree(root / "images", root / "more" / "copies")
    return data, str(source), root / "more"


def test_unlabelled_images_join_the_probes_scaling_pool_and_held_out_copies_are_left_out(target):
    data, source, more = target
    plain = mt.transfer(data, "linear-probe", source=source, **PROBE)
    extra = mt.transfer(data, "linear-probe", source=source, unlabelled=f"folder:{more}", **{**PROBE, "save": True},
                        out=more.parent / "run")
    record = extra.config["unlabelled"]
    n_held_out = extra.config["n_val_labels"] + extra.config["n_test"]
    assert record["images"] == 10 and record["held_out_duplicates"] == n_held_out
    assert record["spec"] == f"folder:{more}" and len(record["files_digest"]) == 64
    n_pool = int(plain.config["strategy_notes"]["feature_scaling"].split()[3])
    assert record["training_duplicates"] == n_pool  # every training image was copied too
    assert extra.config["strategy_notes"]["feature_scaling"].startswith(
        f"features standardised on {n_pool + 10} unlabelled target inputs")
    assert any(w.startswith(f"--unlabelled: {n_held_out} of the images are identical") for w in extra.warnings)
    assert not any("--unlabelled" in w for w in plain.warnings) and "unlabelled" not in plain.config
    card = (extra.out / "model_card.md").read_text()
    assert f"Unlabelled target images (--unlabelled folder:{more}): 10 used; left out as identical to validation " \
           f"or test inputs: {n_held_out}, to training inputs: {n_pool}" in card
    assert not np.allclose(extra.predictions.filter(like="prob").to_numpy(),
                           plain.predictions.filter(like="prob").to_numpy())  # the new scale changed the fit


def test_unlabelled_is_refused_where_it_cannot_serve(target, tmp_path):
    data, source, more = target
    with pytest.raises(MedTransferError, match="not a folder: spec"):
        mt.transfer(data, "linear-probe", source=source, unlabelled=str(more), **PROBE)
    (tmp_path / "empty").mkdir()
    with pytest.raises(MedTransferError, match="no images"):
        mt.transfer(data, "linear-probe", source=source, unlabelled=f"folder:{tmp_path / 'empty'}", **PROBE)
    with pytest.raises(MedTransferError, match="'scratch' does not learn from unlabelled images"):
        mt.transfer(data, "scratch", backbone="test_resnet", image_size=16, epochs=1, unlabelled=f"folder:{more}",
                    **PROBE)  # a run that would say it had them and ignored them
    with pytest.raises(MedTransferError, match="2D image targets only"):
        mt.transfer("heart:hungary", "target-only", budget=10, unlabelled=f"folder:{more}", save=False,
                    progress=False, n_boot=10)


def test_a_grid_takes_an_unlabelled_folder_per_target_and_names_a_bad_one_before_training(target, tmp_path):
    import json

    import yaml

    from medtransfer.api import experiment
    from medtransfer.experiment import load_config
    data, source, more = target
    grid = {"name": "u", "targets": [data], "sources": [source], "strategies": ["linear-probe", "scratch"],
            "backbones": ["test_resnet"], "train": {"epochs": 1, "image_size": 16}, "budgets": [4],
            "seeds": 1, "n_boot": 10, "unlabelled": {data: f"folder:{more}"}}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    out = experiment(path, out=tmp_path / "grid", progress=False, report=False)
    configs = {c["strategy"]: c for c in (json.loads(p.read_text()) for p in (out / "cells").glob("*/config.json"))}
    assert configs["linear-probe"]["unlabelled"]["images"] == 10
    assert "unlabelled" not in configs["scratch"]  # a strategy that reads none runs without the folder
    experiment(path, out=out, progress=False, report=False)  # unchanged: resumed, nothing to run
    (more / "new" / "0.png").rename(more / "new" / "renamed.png")  # the unlabelled folder changed
    with pytest.raises(MedTransferError, match=r"unlabelled images of .* changed since finished cells"):
        experiment(path, out=out, progress=False, report=False)
    (more / "new" / "renamed.png").rename(more / "new" / "0.png")

    for bad, message in (({"folder:elsewhere": f"folder:{more}"}, "is not one of the targets"),
                         ({data: str(more)}, "is not a folder: spec")):
        path.write_text(yaml.safe_dump({**grid, "unlabelled": bad}))
        with pytest.raises(MedTransferError, match=message):
            load_config(path)
    path.write_text(yaml.safe_dump({**grid, "name": "v", "unlabelled": {data: f"folder:{tmp_path / 'none'}"}}))
    with pytest.raises(MedTransferError) as failed:
        experiment(path, out=tmp_path / "bad", progress=False, report=False)
    assert "is not a directory" in (tmp_path / "bad" / "results.csv").read_text()  # recorded, nothing trained
    assert len(failed.value.failed) == 1
