"""Signals (modality "signal"): loaders, resampling, backbones, augmentation and their refusals, on tiny
generated recordings. The real ECG/EEG runs are in test_signals_real.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medtransfer.data import load_dataset
from medtransfer.data.signals import parse_resampling, resample, stack_recordings
from medtransfer.errors import MedTransferError
from medtransfer.models.backbones import Preprocess, channel_statistics, create_model, default_spec, describe
from medtransfer.models.sources import check_compatible
from medtransfer.training.augment import signal_augment


def recordings(n: int, channels: int = 1, length: int = 64, seed: int = 0):
    """n recordings of two classes: class 1 carries a faster sine than class 0."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    t = np.linspace(0, 1, length)
    x = np.stack([np.stack([np.sin(2 * np.pi * (3 + 5 * label) * t + c) for c in range(channels)])
                  for label in y]) + 0.1 * rng.standard_normal((n, channels, length))
    return x.astype(np.float32), y


def test_parse_resampling():
    assert parse_resampling("ECG200", "ucr") == ("ECG200", None, None)
    assert parse_resampling("dir/ECG200@140", "ucr") == ("dir/ECG200", 140, None)
    assert parse_resampling("bonn@173.61Hz", "eeg") == ("bonn", None, 173.61)
    for bad in ("x@", "x@4", "x@0hz", "x@fast"):
        with pytest.raises(MedTransferError, match="@LENGTH"):
            parse_resampling(bad, "ucr")


def test_resample_keeps_the_frequency():
    t = np.arange(1000) / 250.0  # 4 s at 250 Hz, a 5 Hz sine
    down = resample(np.sin(2 * np.pi * 5 * t)[None], 400)  # 100 Hz
    assert down.shape == (1, 400)
    spectrum = np.abs(np.fft.rfft(down[0]))
    assert np.argmax(spectrum) == 20  # 5 Hz * 4 s


def test_stack_refuses_ragged_wrong_channels_and_nan():
    a, b = np.zeros((1, 50)), np.zeros((1, 40))
    with pytest.raises(MedTransferError, match=r"ragged signals: a has 50 samples but b has 40.*@LENGTH"):
        stack_recordings([a, b], ["a", "b"], None, "npz:x")
    assert stack_recordings([a, b], ["a", "b"], 32).shape == (2, 1, 32)
    with pytest.raises(MedTransferError, match="b: has 2 channel"):
        stack_recordings([a, np.zeros((2, 50))], ["a", "b"])
    with pytest.raises(MedTransferError, match="b: holds missing or infinite"):
        stack_recordings([a, np.full((1, 50), np.nan)], ["a", "b"])


def test_npz_splits_groups_classes_and_rate(tmp_path):
    x, y = recordings(60)
    groups = np.repeat(np.arange(30), 2)
    path = tmp_path / "set.npz"
    np.savez(path, x=x[:, 0], y=y, groups=groups, classes=np.array(["rest", "tremor"]), rate=np.array(100.0))
    data = load_dataset(f"npz:{path}")
    assert data.modality == "signal" and data.classes == ["rest", "tremor"] and data.info["rate"] == 100.0
    assert data.train.x.shape[1:] == (1, 64) and len(data.train) + len(data.val) + len(data.test) == 60
    owner = {}
    for part in ("train", "val", "test"):
        for i in data.split(part).ids:
            assert owner.setdefault(groups[int(i.split("/")[1])], part) == part  # no subject in two splits
    halved = load_dataset(f"npz:{path}@50hz")
    assert halved.train.x.shape[-1] == 32 and halved.info["rate"] == 50.0


def test_npz_given_split_and_refusals(tmp_path):
    x, y = recordings(12, channels=2)
    path = tmp_path / "given.npz"
    np.savez(path, x=x, y=y, split=np.array(["train"] * 6 + ["val"] * 3 + ["test"] * 3))
    data = load_dataset(f"npz:{path}")
    assert [len(data.train), len(data.val), len(data.test)] == [6, 3, 3] and data.in_channels == 2
    np.savez(tmp_path / "nolabels.npz", x=x)
    with pytest.raises(MedTransferError, match=r"lacks the array\(s\) \['y'\]"):
        load_dataset(f"npz:{tmp_path / 'nolabels.npz'}")
    with pytest.raises(MedTransferError, match="no 'rate' array"):
        load_dataset(f"npz:{path}@100hz")


def write_folder(root, n=30, channels=1, length=64):
    x, y = recordings(n, channels, length)
    for i, (rec, label) in enumerate(zip(x, y)):
        folder = root / ("slow" if label == 0 else "fast")
        folder.mkdir(parents=True, exist_ok=True)
        if i % 2:
            np.save(folder / f"r{i}.npy", rec)
        else:
            np.savetxt(folder / f"r{i}.csv", rec.T, delimiter=",", header=",".join(f"lead{c}" for c in range(channels)),
                       comments="")
    return x, y


def test_signal_folder_reads_csv_and_npy(tmp_path):
    x, _ = write_folder(tmp_path / "set", channels=2)
    data = load_dataset(f"signal-folder:{tmp_path / 'set'}")
    assert data.classes == ["fast", "slow"] and data.in_channels == 2
    index = data.train.ids.index(next(i for i in data.train.ids if i.endswith(".csv")))
    number = int(data.train.ids[index].split("/r")[1].split(".")[0])
    np.testing.assert_allclose(data.train.x[index].numpy(), x[number], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("content, message", [
    (b"\xff\xfe\x00bad", "is not UTF-8 text"),
    (b"", "is empty"),
    (b"lead0\n0.1\nabc\n", "non-numeric sample"),
    (b"a,b\n1,2\n3,4\n", "has 2 channel"),
])
def test_signal_folder_bad_files_are_one_line(tmp_path, content, message):
    write_folder(tmp_path / "set", n=10)
    (tmp_path / "set" / "slow" / "zz_bad.csv").write_bytes(content)
    with pytest.raises(MedTransferError, match=message) as caught:
        load_dataset(f"signal-folder:{tmp_path / 'set'}")
    assert "\n" not in str(caught.value) and "zz_bad.csv" in str(caught.value)


def test_signal_folder_ragged_names_the_fix(tmp_path):
    write_folder(tmp_path / "set", n=10)
    np.save(tmp_path / "set" / "slow" / "short.npy", np.zeros(40, dtype=np.float32))
    with pytest.raises(MedTransferError, match="ragged signals.*@LENGTH"):
        load_dataset(f"signal-folder:{tmp_path / 'set'}")
    assert load_dataset(f"signal-folder:{tmp_path / 'set'}@64").train.x.shape[-1] == 64


@pytest.mark.parametrize("name, width", [("cnn1d", 128), ("cnn1d:width=16,stride=4", 32), ("lstm", 128), ("gru:hidden=16,bi", 64),
                                         ("lstm:hidden=8,layers=2,stride=4", 16)])
def test_signal_backbones(name, width):
    architecture = describe(name, "signal", 3)
    spec = default_spec("signal", 3, train_x=torch.randn(10, 3, 50))
    model = create_model(architecture, spec, num_outputs=2)
    assert model.num_features == width
    assert model(torch.randn(4, 3, 50)).shape == (4, 2)
    assert model(torch.randn(2, 3, 77)).shape == (2, 2)  # pools over time: any length runs
    assert model.stages()


@pytest.mark.parametrize("name", ["gru:hidden=0", "lstm:depth=2", "cnn1d:16", "resnet18"])
def test_bad_signal_backbone_names(name):
    with pytest.raises(MedTransferError):
        describe(name, "signal", 1)


def test_preprocess_standardises_with_training_statistics():
    x = torch.randn(20, 2, 30) * torch.tensor([[[5.0], [0.5]]]) + torch.tensor([[[100.0], [-3.0]]])
    mean, std = channel_statistics(x, 2)
    assert mean[0] == pytest.approx(100, abs=1) and std[1] == pytest.approx(0.5, abs=0.1)
    out = Preprocess(default_spec("signal", 2, train_x=x))(x)
    assert out.mean().abs() < 1e-4 and (out.std(dim=(0, 2)) - 1).abs().max() < 1e-3
    flat = channel_statistics(torch.ones(4, 1, 10), 1)
    assert flat == ((1.0,), (1.0,))


def test_signal_augment_is_seeded_and_keeps_shape():
    x = torch.from_numpy(recordings(8, channels=2)[0])
    a = signal_augment(x, torch.Generator().manual_seed(1))
    b = signal_augment(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.allclose(a, x) and torch.isfinite(a).all()


def test_rate_and_channel_mismatch_refused():
    spec = default_spec("signal", 1, rate=173.61)
    holder = type("M", (), {"spec": spec})()
    with pytest.raises(MedTransferError, match="sampling-rate mismatch.*173.61 Hz.*200 Hz.*@173.61hz"):
        check_compatible(holder, "signal", 1, None, rate=200.0)
    with pytest.raises(MedTransferError, match="channel mismatch: the model takes signals with 1 channel"):
        check_compatible(holder, "signal", 12, None, adapt=True, rate=173.61)
    check_compatible(holder, "signal", 1, None, rate=173.61)
    check_compatible(holder, "signal", 1, None, rate=None)  # a rate-less target (UCR) is not refused


def test_signal_warning_names_what_no_check_could_decide(tmp_path):
    from medtransfer.models.sources import signal_warning

    x, y = recordings(30, length=96)
    np.savez(tmp_path / "beats.npz", x=x, y=y)
    target = load_dataset(f"npz:{tmp_path / 'beats.npz'}")  # no rate
    spec = default_spec("signal", 1, train_x=torch.zeros(3, 1, 140))
    assert spec.length == 140
    assert "@140" in signal_warning(spec, target)
    assert signal_warning(default_spec("signal", 1, train_x=torch.zeros(3, 1, 96)), target) is None
    rated = default_spec("signal", 1, train_x=torch.zeros(3, 1, 96), rate=200.0)
    assert "states no sampling rate" in signal_warning(rated, target)  # a rated model on rate-less data
    np.savez(tmp_path / "rated.npz", x=x, y=y, rate=np.array(200.0))
    assert signal_warning(rated, load_dataset(f"npz:{tmp_path / 'rated.npz'}")) is None


def test_ucr_pooled_and_modifiers(tmp_path):
    rows = [f"{1 + i % 2}\t" + "\t".join(str(v) for v in np.sin(np.arange(20) * (1 + i % 2))) for i in range(40)]
    (tmp_path / "Toy_TRAIN.tsv").write_text("\n".join(rows[:10]) + "\n")
    (tmp_path / "Toy_TEST.tsv").write_text("\n".join(rows[10:]) + "\n")
    kept = load_dataset(f"ucr:{tmp_path / 'Toy'}")
    assert [len(kept.train), len(kept.val), len(kept.test)] == [8, 2, 30] and kept.classes == ["1", "2"]
    pooled = load_dataset(f"ucr:{tmp_path / 'Toy'}@pooled@32")
    assert [len(pooled.train), len(pooled.val), len(pooled.test)] == [24, 8, 8] and pooled.train.x.shape[-1] == 32
    with pytest.raises(MedTransferError, match="@pooled"):
        load_dataset(f"ucr:{tmp_path / 'Toy'}@pool")
    with pytest.raises(MedTransferError, match="no such file"):
        load_dataset("ucr:NoSuchSet")
