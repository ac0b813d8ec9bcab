"""Grey <-> RGB channel adaptation (issue 14): a grayscale source runs on RGB targets by adapting its first
convolution as timm's adapt_input_conv does, exactly (equal channels give the grey model's logits), the run's
checkpoint rebuilds the adapted model, provenance says so, and what cannot adapt stays a one-line refusal."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

import medtransfer as mt
from medtransfer.errors import MedTransferError
from medtransfer.models.backbones import Classifier, InputSpec, create_model, default_spec, describe
from medtransfer.models.channels import adapt_channels, adapt_weight, adaptation_problem, channels_adaptable
from medtransfer.models.checkpoint import load_checkpoint, save_checkpoint
from medtransfer.models.sources import Source, check_compatible, fit_channels, fit_source, load_source_model


def tiny(channels: int) -> Classifier:
    """timm's test_resnet at 16 px, with a random head (eval mode: BatchNorm running statistics)."""
    torch.manual_seed(0)
    return create_model(describe("test_resnet", "image2d", channels), default_spec("image2d", channels,
                                                                                   image_size=16), 2).eval()


def test_grey_source_adapted_to_rgb_gives_the_grey_logits_on_equal_channels():
    grey = tiny(1)
    adapted, note = adapt_channels(grey, 3)
    assert note == ("first convolution conv1.0 adapted from 1 to 3 input channels "
                    "(timm adapt_input_conv: repeat, scaled by 1/3)")
    assert adapted.spec.channels == 3 and adapted.spec.mean == (0.5,) * 3 and adapted.spec.std == (0.5,) * 3
    assert adapted.architecture["in_chans"] == 3 and grey.architecture["in_chans"] == 1  # a copy
    assert grey.backbone.conv1[0].in_channels == 1
    x = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(adapted.eval()(x.expand(-1, 3, -1, -1)), grey(x), atol=1e-5)
    assert adapt_channels(grey, 1) == (grey, None)  # nothing to change


def test_rgb_source_on_grey_images_repeat_equals_summed_first_convolution():
    """Why the pipeline keeps an RGB source as it is on grey targets: its preprocess repeats the grey image,
    which is what summing the first convolution's weights (timm's 3 -> 1 rule) computes."""
    rgb = tiny(3)
    summed, note = adapt_channels(rgb, 1)
    assert "from 3 to 1 input channels (timm adapt_input_conv: sum over the 3 channels)" in note
    x = torch.rand(5, 1, 16, 16)
    with torch.no_grad():
        assert torch.allclose(summed.eval()(x), rgb(x), atol=1e-5)  # rgb(x): the grey image repeated to 3
    kept, note = fit_channels(rgb, 1)
    assert kept is rgb and "repeated to the source's 3 input channels" in note


def test_weights_follow_timm_adapt_input_conv():
    from timm.models import adapt_input_conv
    w1, w3 = torch.randn(8, 1, 3, 3), torch.randn(8, 3, 3, 3)
    assert torch.equal(adapt_weight(w1, 3), adapt_input_conv(3, w1, base_chans=1))
    assert torch.allclose(adapt_weight(w3, 1), adapt_input_conv(1, w3))
    w3d = torch.randn(4, 1, 3, 3, 3)  # 3D kernels (MONAI), which timm's function does not take
    assert torch.allclose(adapt_weight(w3d, 3).sum(dim=1, keepdim=True), w3d, atol=1e-6)


def test_adaptation_leaves_the_global_random_state_alone():
    """Rebuilding the backbone draws random weights; a seeded run must not depend on whether it adapted."""
    grey = tiny(1)
    state = torch.get_rng_state()
    adapt_channels(grey, 3)
    assert torch.equal(torch.get_rng_state(), state)


def test_adapted_checkpoint_rebuilds_and_loads_strictly(tmp_path):
    adapted, _ = adapt_channels(tiny(1), 3)
    save_checkpoint(tmp_path, adapted, "binary", ["a", "b"], None, {})
    loaded, meta = load_checkpoint(tmp_path)
    assert meta["architecture"]["in_chans"] == 3 and meta["input"]["channels"] == 3
    x = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(loaded.eval()(x), adapted.eval()(x), atol=1e-6)


def test_impossible_adaptations_are_one_line_refusals():
    assert channels_adaptable(1, 3, "image2d") is None and channels_adaptable(3, 1, "image3d") is None
    assert channels_adaptable(4, 4, "image2d") is None
    for source, target in ((4, 3), (1, 4), (3, 2), (4, 1)):
        reason = channels_adaptable(source, target, "image2d")
        assert reason.startswith(f"channel mismatch: the source model takes {source} channels") and "\n" not in reason
    with pytest.raises(MedTransferError, match="only grey \\(1\\) and RGB \\(3\\) adapt"):
        adapt_channels(tiny(3), 4)
    no_conv = Classifier(nn.Sequential(nn.Flatten(), nn.Linear(256, 8)), 8, 2, InputSpec("image2d", 1, 16),
                         {"kind": "timm", "name": "custom", "in_chans": 1})
    assert "has no convolution" in adaptation_problem(no_conv, 3)
    with pytest.raises(MedTransferError, match="has no convolution"):
        fit_channels(no_conv, 3)
    unrecorded = tiny(1)
    unrecorded.architecture = {"kind": "timm", "name": "test_resnet"}
    assert "records no input channels" in adaptation_problem(unrecorded, 3)
    # a saved model evaluated on other images is never adapted silently; a transfer (adapt=True) is
    with pytest.raises(MedTransferError, match="channel mismatch"):
        check_compatible(tiny(1), "image2d", 3, None)
    check_compatible(tiny(1), "image2d", 3, None, adapt=True)
    check_compatible(SimpleNamespace(spec=InputSpec("image2d", 1, 16)), "image2d", 3, None, adapt=True)
    with pytest.raises(MedTransferError, match="takes 4 channels"):
        check_compatible(SimpleNamespace(spec=InputSpec("image2d", 4, 16)), "image2d", 3, None, adapt=True)
    check_compatible(tiny(3), "image2d", 1, None)  # grey into RGB: the preprocess repeats it, as always


def images(folder: Path, rgb: bool, n: int = 10) -> str:
    from PIL import Image
    rng = np.random.default_rng(0 if rgb else 1)
    for k, label in enumerate(("a", "b")):
        (folder / label).mkdir(parents=True)
        for i in range(n):
            pixels = rng.integers(0, 120, (16, 16, 3) if rgb else (16, 16)) + 120 * k  # learnable: b is brighter
            Image.fromarray(pixels.astype(np.uint8)).save(folder / label / f"{i}.png")
    return f"folder:{folder}"


def test_grey_run_transfers_to_an_rgb_folder_end_to_end(tmp_path):
    grey, rgb = images(tmp_path / "grey", rgb=False), images(tmp_path / "rgb", rgb=True)
    options = dict(backbone="test_resnet", image_size=16, epochs=1, progress=False, n_boot=0)
    source = mt.transfer(grey, "scratch", out=tmp_path / "grey-run", **options)
    assert source.model.spec.channels == 1
    loaded = load_source_model(str(source.out), "image2d", 3)
    assert loaded.model.spec.channels == 3 and "adapted from 1 to 3" in loaded.adaptation
    assert fit_source(loaded, "image2d", 3) is loaded  # fitted once

    from medtransfer.pipeline.preflight import preflight
    from medtransfer.pipeline.request import TransferRequest
    assert preflight(TransferRequest(rgb, "full", str(source.out), backbone="test_resnet", image_size=16)) is None

    run = mt.transfer(rgb, "full", source=str(source.out), out=tmp_path / "rgb-run", **options)
    assert "first convolution conv1.0 adapted from 1 to 3 input channels" in run.config["source_description"]
    model, meta = load_checkpoint(run.out)  # strict: the architecture rebuilds the adapted convolution
    assert meta["architecture"]["in_chans"] == 3 and meta["input"]["channels"] == 3
    assert "adapted from 1 to 3" in meta["provenance"]["source_description"]
    x = torch.rand(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), run.model.eval()(x), atol=1e-5)


def test_fit_source_records_the_note_in_the_description():
    source = fit_source(Source(tiny(1), "run somewhere", ["a", "b"]), "image2d", 3)
    assert source.description.startswith("run somewhere; first convolution conv1.0 adapted from 1 to 3")
    assert source.classes == ["a", "b"] and source.model.spec.channels == 3
    same = Source(tiny(3), "run rgb")
    assert fit_source(same, "image2d", 3) is same  # nothing to bridge, nothing recorded


def test_a_grey_source_dataset_on_an_rgb_target_runs_in_an_experiment_grid(tmp_path):
    """The in-domain grey source (a dataset, pretrained by the grid itself) on an RGB target: every cell
    runs, none is refused for its channels."""
    import pandas as pd
    import yaml

    from medtransfer.api import experiment

    grey, rgb = images(tmp_path / "grey", rgb=False), images(tmp_path / "rgb", rgb=True)
    config = {"name": "grey-to-rgb", "targets": [rgb], "sources": [grey], "backbones": ["test_resnet"],
              "strategies": ["head", "full"], "budgets": [8], "seeds": 1, "n_boot": 0,
              "train": {"epochs": 1, "image_size": 16, "source_epochs": 1}}
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(config))
    out = experiment(tmp_path / "grid.yaml", out=tmp_path / "exp", progress=False, report=False)
    results = pd.read_csv(out / "results.csv")
    assert len(results) == 2 and "error" not in results.columns
    config_json = json.loads((out / results["run_dir"][0] / "config.json").read_text())
    assert "adapted from 1 to 3" in config_json["source_description"]
