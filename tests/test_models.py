"""Models: preprocessing, backbone names, model shapes, checkpoints and source-weight loading."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from medtransfer.errors import MedTransferError
from medtransfer.models.backbones import (Classifier, InputSpec, MLP, Preprocess, create_model, default_spec,
                                          describe)
from medtransfer.models.checkpoint import META, WEIGHTS, load_checkpoint, load_state_strict, save_checkpoint
from medtransfer.models.sources import check_compatible, load_source_model, load_weights_file


class NotATensor:
    """An arbitrary picklable object: a weights file holding one must be refused (weights_only)."""

    def __init__(self):
        self.payload = "code"


def _resnet18(channels: int = 1, size: int = 32, outputs: int = 2) -> Classifier:
    torch.manual_seed(0)
    return create_model(describe("resnet18", "image2d", channels), default_spec("image2d", channels, image_size=size),
                        outputs)


def _mlp(n_features: int = 5, name: str = "mlp:16,16", outputs: int = 2) -> Classifier:
    torch.manual_seed(0)
    features = [f"f{i}" for i in range(n_features)]
    return create_model(describe(name, "tabular", 0, n_features), default_spec("tabular", 0, features), outputs)


# ----------------------------------------------------------------------------- preprocess


def test_preprocess_resizes_2d_images_to_the_spec_size():
    pre = Preprocess(InputSpec("image2d", channels=1, size=64, mean=(0.0,), std=(1.0,)))
    x = torch.rand(3, 1, 28, 28)
    out = pre(x)
    assert out.shape == (3, 1, 64, 64)
    expected = torch.nn.functional.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, expected)


def test_preprocess_repeats_grayscale_for_an_rgb_spec_and_normalises():
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    pre = Preprocess(InputSpec("image2d", channels=3, size=16, mean=mean, std=std))
    x = torch.rand(2, 1, 16, 16)
    out = pre(x)
    assert out.shape == (2, 3, 16, 16)
    for c in range(3):
        torch.testing.assert_close(out[:, c], (x[:, 0] - mean[c]) / std[c])


def test_preprocess_normalises_with_a_single_mean_and_std():
    pre = Preprocess(InputSpec("image2d", channels=1, size=8, mean=(0.5,), std=(0.25,)))
    x = torch.rand(2, 1, 8, 8)
    torch.testing.assert_close(pre(x), (x - 0.5) / 0.25)


def test_preprocess_keeps_3d_volume_size_and_normalises():
    pre = Preprocess(InputSpec("image3d", channels=1, size=None, mean=(0.5,), std=(0.5,)))
    x = torch.rand(2, 1, 6, 7, 8)
    torch.testing.assert_close(pre(x), (x - 0.5) / 0.5)


def test_preprocess_is_identity_for_tables():
    pre = Preprocess(InputSpec("tabular", features=["a", "b"], mean=(3.0,), std=(7.0,)))
    x = torch.randn(4, 2)
    assert torch.equal(pre(x), x)


# ----------------------------------------------------------------------------- backbone names


def test_describe_maps_backbone_names():
    assert describe("resnet18", "image2d", 1) == {"kind": "timm", "name": "resnet18", "in_chans": 1}
    assert describe("timm:resnet18", "image2d", 3) == {"kind": "timm", "name": "resnet18", "in_chans": 3}
    assert describe(None, "image2d", 1)["name"] == "resnet18"
    assert describe("monai:resnet10", "image3d", 1) == {"kind": "monai", "name": "resnet10", "in_chans": 1}
    assert describe(None, "image3d", 2) == {"kind": "monai", "name": "resnet10", "in_chans": 2}
    mlp = describe("mlp", "tabular", 0, 7)
    assert (mlp["kind"], mlp["in_features"], mlp["hidden"]) == ("mlp", 7, [32])
    assert describe(None, "tabular", 0, 7)["hidden"] == [32]
    assert describe("mlp:64,32", "tabular", 0, 5)["hidden"] == [64, 32]
    linear = describe("linear", "tabular", 0, 5)
    assert (linear["kind"], linear["hidden"], linear["in_features"]) == ("mlp", [], 5)


@pytest.mark.parametrize("name, modality", [
    ("mlp", "image2d"), ("mlp:64,32", "image2d"), ("linear", "image2d"), ("monai:resnet10", "image2d"),
    ("resnet18", "tabular"), ("monai:resnet10", "tabular"), ("mlp:a", "tabular"), ("mlp:64,", "tabular"),
    ("resnet18", "image3d"), ("mlp", "image3d"),
])
def test_describe_rejects_wrong_combinations(name, modality):
    with pytest.raises(MedTransferError):
        describe(name, modality, 1, 5)


def test_unknown_timm_backbone_is_a_medtransfer_error():
    with pytest.raises(MedTransferError, match="not_a_real_backbone"):
        create_model(describe("not_a_real_backbone", "image2d", 1), default_spec("image2d", 1), 2)


# ----------------------------------------------------------------------------- model shapes


def test_timm_2d_model_forward_shapes_and_stages():
    model = _resnet18(channels=1, size=32, outputs=3).eval()
    x = torch.rand(2, 1, 28, 28)
    assert model.preprocess(x).shape == (2, 1, 32, 32)
    assert model.features(x).shape == (2, model.num_features) == (2, 512)
    assert model(x).shape == (2, 3)
    assert model.stages() == ["layer1", "layer2", "layer3", "layer4"]  # act1 owns no weights
    model.reset_head(5)
    assert model(x).shape == (2, 5)


def test_tabular_mlp_forward_shapes_and_stages():
    model = _mlp(n_features=5, name="mlp:16,8", outputs=2)
    assert isinstance(model.backbone, MLP)
    x = torch.randn(4, 5)
    assert model.features(x).shape == (4, 5 + 8)  # wide and deep: [inputs, last hidden layer]
    torch.testing.assert_close(model.features(x)[:, :5], x)
    assert model(x).shape == (4, 2)
    assert model.stages() == ["block0", "block1"]
    plain = create_model(dict(describe("mlp:16,8", "tabular", 0, 5), skip=False), model.spec, 2)
    assert plain.features(x).shape == (4, 8)  # checkpoints from before the skip load as they were
    linear = _mlp(n_features=5, name="linear", outputs=3)
    assert linear.num_features == 5
    torch.testing.assert_close(linear.features(x), x)
    assert linear(x).shape == (4, 3)


def test_monai_3d_resnet10_forward_shape():
    pytest.importorskip("monai")
    torch.manual_seed(0)
    model = create_model(describe("monai:resnet10", "image3d", 1), default_spec("image3d", 1), 2).eval()
    x = torch.rand(2, 1, 16, 16, 16)
    with torch.no_grad():
        assert model.features(x).shape == (2, model.num_features)
        assert model(x).shape == (2, 2)
    assert model.stages() == ["layer1", "layer2", "layer3", "layer4"]


# ----------------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path):
    model = _resnet18(channels=1, size=32, outputs=3)
    model.train()
    with torch.no_grad():  # move the BatchNorm running statistics away from their init
        model(torch.rand(8, 1, 28, 28))
    model.eval()
    provenance = {"source": "unit-test", "strategy": "scratch"}
    save_checkpoint(tmp_path, model, "multiclass", ["a", "b", "c"], None, provenance)
    assert (tmp_path / WEIGHTS).is_file()
    meta = json.loads((tmp_path / META).read_text())
    assert meta["architecture"] == model.architecture
    assert meta["input"]["modality"] == "image2d" and meta["input"]["size"] == 32 and meta["input"]["channels"] == 1
    assert meta["task"] == "multiclass"
    assert meta["classes"] == ["a", "b", "c"]
    assert meta["num_outputs"] == 3
    assert meta["provenance"] == provenance

    loaded, meta2 = load_checkpoint(tmp_path)
    loaded.eval()
    assert meta2 == meta
    assert loaded.spec == model.spec
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)


def test_tabular_checkpoint_round_trip_keeps_features_and_encoder(tmp_path):
    model = _mlp(n_features=5).eval()
    encoder = {"columns": ["f0", "f1", "f2", "f3", "f4"]}
    save_checkpoint(tmp_path, model, "binary", ["no", "yes"], encoder, {"n": 1})
    loaded, meta = load_checkpoint(tmp_path)
    assert meta["encoder"] == encoder and meta["input"]["features"] == ["f0", "f1", "f2", "f3", "f4"]
    assert loaded.spec.features == model.spec.features
    x = torch.randn(6, 5)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), model(x))


def test_load_checkpoint_without_metadata_is_refused(tmp_path):
    with pytest.raises(MedTransferError):
        load_checkpoint(tmp_path)


def test_load_state_strict_names_missing_and_unexpected_keys():
    model = _mlp()
    state = dict(model.state_dict())
    state.pop("head.bias")
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(MedTransferError) as info:
        load_state_strict(model, state, "somewhere.safetensors")
    message = str(info.value)
    assert "head.bias" in message and "extra.weight" in message
    assert "missing" in message and "unexpected" in message and "somewhere.safetensors" in message


def test_load_state_strict_names_shape_mismatches():
    model = _mlp()
    state = dict(model.state_dict())
    state["head.weight"] = torch.zeros(3, 16)
    before = model.head.weight.detach().clone()
    with pytest.raises(MedTransferError, match=r"shape mismatch.*head\.weight"):
        load_state_strict(model, state, "w")
    assert torch.equal(model.head.weight, before)  # nothing loaded


def test_load_state_strict_loads_a_matching_state():
    model, other = _mlp(), _mlp()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.0)
    load_state_strict(model, other.state_dict(), "w")
    for a, b in zip(model.parameters(), other.parameters()):
        assert torch.equal(a, b)


# ----------------------------------------------------------------------------- weights files


def _bare_backbone(name: str = "resnet18", in_chans: int = 1, num_classes: int = 0):
    import timm

    torch.manual_seed(1)
    return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans)


def _assert_same_backbone(model: Classifier, backbone: torch.nn.Module):
    own = model.backbone.state_dict()
    ref = backbone.state_dict()
    ref = {k: v for k, v in ref.items() if not k.startswith("fc.")}
    assert set(own) == set(ref)
    for k, v in ref.items():
        assert torch.equal(own[k], v), k


def test_load_weights_file_safetensors_bare_backbone(tmp_path):
    backbone = _bare_backbone(in_chans=1)
    path = tmp_path / "backbone.safetensors"
    save_file({k: v.contiguous() for k, v in backbone.state_dict().items()}, str(path))
    model = load_weights_file(path, "image2d", 1, "resnet18", 32)
    assert model.spec.modality == "image2d" and model.spec.size == 32 and model.spec.channels == 1
    _assert_same_backbone(model, backbone)
    assert model(torch.rand(2, 1, 28, 28)).shape[0] == 2
    # the same file through load_source_model
    source = load_source_model(str(path), "image2d", 1, backbone="resnet18", image_size=32)
    _assert_same_backbone(source.model, backbone)


def test_load_weights_file_pth_state_dict_with_classifier_head(tmp_path):
    backbone = _bare_backbone(in_chans=3, num_classes=10)  # an ImageNet-style RGB file with its fc head
    path = tmp_path / "backbone.pth"
    torch.save(backbone.state_dict(), path)
    model = load_weights_file(path, "image2d", 1, "resnet18", 32)
    assert model.spec.channels == 3  # grayscale targets are repeated to RGB by the preprocess
    _assert_same_backbone(model, backbone)
    assert model.features(torch.rand(2, 1, 28, 28)).shape == (2, 512)


def test_load_weights_file_pth_nested_state_dict(tmp_path):
    backbone = _bare_backbone(in_chans=1)
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in backbone.state_dict().items()}}, path)
    model = load_weights_file(path, "image2d", 1, "resnet18", 32)
    _assert_same_backbone(model, backbone)


def test_load_weights_file_safetensors_with_depthwise_convs(tmp_path):
    """The input channels must come from the stem, not from whichever 4-D tensor sorts first in the
    file (safetensors stores keys sorted, so `blocks.*` depthwise convs come before `conv_stem`)."""
    backbone = _bare_backbone("mobilenetv3_small_050", in_chans=3)
    path = tmp_path / "mobilenet.safetensors"
    save_file({k: v.contiguous() for k, v in backbone.state_dict().items()}, str(path))
    model = load_weights_file(path, "image2d", 1, "mobilenetv3_small_050", 32)
    assert model.spec.channels == 3
    _assert_same_backbone(model, backbone)


def test_load_weights_file_refuses_pickled_objects(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(1), "obj": NotATensor()}, path)
    with pytest.raises(MedTransferError, match="never pickled objects"):
        load_weights_file(path, "image2d", 1, "resnet18", 32)


def test_load_weights_file_needs_a_backbone_name(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"x": torch.zeros(1)}, str(path))
    with pytest.raises(MedTransferError, match="--backbone"):
        load_weights_file(path, "image2d", 1, None, 32)


def test_load_weights_file_with_the_wrong_architecture_is_refused(tmp_path):
    backbone = _bare_backbone(in_chans=1)
    path = tmp_path / "r18.safetensors"
    save_file({k: v.contiguous() for k, v in backbone.state_dict().items()}, str(path))
    with pytest.raises(MedTransferError, match="do not fit"):
        load_weights_file(path, "image2d", 1, "resnet34", 32)


def test_load_source_model_from_a_run_folder(tmp_path):
    model = _mlp().eval()
    save_checkpoint(tmp_path, model, "binary", ["no", "yes"], {"enc": 1}, {})
    source = load_source_model(str(tmp_path), "tabular", 0)
    assert source.classes == ["no", "yes"] and source.encoder == {"enc": 1}
    x = torch.randn(3, 5)
    with torch.no_grad():
        assert torch.equal(source.model.eval()(x), model(x))
    with pytest.raises(MedTransferError):
        load_source_model(str(tmp_path / "does-not-exist"), "tabular", 0)


# ----------------------------------------------------------------------------- compatibility


def test_check_compatible_channels():
    source_1ch = create_model(describe("resnet18", "image2d", 1), default_spec("image2d", 1, image_size=32), 2)
    with pytest.raises(MedTransferError, match="channel"):
        check_compatible(source_1ch, "image2d", 3, None)
    check_compatible(source_1ch, "image2d", 1, None)
    source_rgb = create_model(describe("resnet18", "image2d", 3), default_spec("image2d", 3, image_size=32), 2)
    check_compatible(source_rgb, "image2d", 1, None)  # grayscale is repeated to RGB
    check_compatible(source_rgb, "image2d", 3, None)


def test_check_compatible_modality():
    source = create_model(describe("resnet18", "image2d", 1), default_spec("image2d", 1, image_size=32), 2)
    with pytest.raises(MedTransferError, match="image2d"):
        check_compatible(source, "image3d", 1, None)
    with pytest.raises(MedTransferError):
        check_compatible(_mlp(), "image2d", 1, None)


def test_check_compatible_tabular_features():
    source = _mlp(n_features=5)
    check_compatible(source, "tabular", 0, ["f0", "f1", "f2", "f3", "f4"])
    with pytest.raises(MedTransferError, match="feature"):
        check_compatible(source, "tabular", 0, ["f0", "f1", "f2", "f3", "other"])
    with pytest.raises(MedTransferError, match="feature"):
        check_compatible(source, "tabular", 0, ["f0", "f1", "f2", "f3"])
