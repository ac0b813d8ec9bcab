"""Self-supervised pretraining: the SimCLR and MoCo losses against hand-computed values, the momentum
update and the queue, the view pipeline, the loop hooks, and an SSL checkpoint used as a source."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from medtransfer.data.base import Split, TaskDataset
from medtransfer.errors import MedTransferError
from medtransfer.models.backbones import Classifier, InputSpec
from medtransfer.ssl.moco import MoCo
from medtransfer.ssl.pretrain import combine_images, split_specs
from medtransfer.ssl.simclr import SimCLR
from medtransfer.training.augment import ViewConfig, random_view, two_views
from medtransfer.training.loop import TrainConfig, fit, predict_proba

SIZE = 8


def _encoder(seed: int = 0, channels: int = 1, width: int = 6) -> Classifier:
    """A tiny image encoder (flatten -> linear -> ReLU) in the Classifier shape every strategy uses."""
    torch.manual_seed(seed)
    spec = InputSpec("image2d", channels, SIZE, (0.5,) * channels, (0.5,) * channels)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(channels * SIZE * SIZE, width), nn.ReLU())
    return Classifier(backbone, width, 1, spec, {"kind": "custom", "name": "tiny"})


def _images(n: int, seed: int, channels: int = 1, size: int = SIZE) -> torch.Tensor:
    return torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(seed))


def _nt_xent_by_hand(z1: np.ndarray, z2: np.ndarray, tau: float) -> float:
    """NT-Xent (SimCLR eq. 1), written out: for each of the 2N views, the positive is its pair and
    the 2N - 2 other views are negatives; cosine similarity / tau; mean over the 2N anchors."""
    z = np.concatenate([z1, z2]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n = len(z1)
    total = 0.0
    for i in range(2 * n):
        pos = (i + n) % (2 * n)
        sims = {k: z[i] @ z[k] / tau for k in range(2 * n) if k != i}
        total += -np.log(np.exp(sims[pos]) / sum(np.exp(s) for s in sims.values()))
    return total / (2 * n)


def _info_nce_by_hand(q: np.ndarray, k: np.ndarray, queue: np.ndarray, tau: float) -> float:
    """MoCo's InfoNCE: positive q.k, negatives q.queue (keys of earlier batches), all normalised."""
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    k = k / np.linalg.norm(k, axis=1, keepdims=True)
    losses = []
    for i in range(len(q)):
        logits = np.concatenate([[q[i] @ k[i]], queue @ q[i]]) / tau
        losses.append(-logits[0] + np.log(np.exp(logits).sum()))
    return float(np.mean(losses))


# ----------------------------------------------------------------------------- losses


def test_nt_xent_matches_hand_computation_on_fixed_vectors():
    from lightly.loss import NTXentLoss

    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    for tau in (0.5, 0.1):
        got = NTXentLoss(temperature=tau)(z1, z2).item()
        assert got == pytest.approx(_nt_xent_by_hand(z1.numpy(), z2.numpy(), tau), rel=1e-5)


def test_simclr_step_loss_matches_hand_computed_nt_xent():
    method = SimCLR(_encoder(), temperature=0.3, projection_dim=5)
    x = _images(4, 1)
    loss = method.batch_loss(method, x, torch.zeros(4), torch.Generator().manual_seed(7))
    v1, v2 = two_views(x, torch.Generator().manual_seed(7), method.views)  # the same views the step made
    with torch.no_grad():
        z1, z2 = method.project(torch.cat([v1, v2])).chunk(2)  # one pass: BatchNorm sees both views
    assert loss.item() == pytest.approx(_nt_xent_by_hand(z1.numpy(), z2.numpy(), 0.3), rel=1e-5)
    loss.backward()  # the loss trains the backbone and the projection head
    assert method.encoder.backbone[1].weight.grad is not None
    assert all(p.grad is not None for p in method.projection_head.parameters())


def test_moco_loss_matches_hand_computed_info_nce_with_the_queue():
    method = MoCo(_encoder(), temperature=0.2, queue_size=8, projection_dim=5)
    v1, v2 = _images(4, 2), _images(4, 3)
    queue_before = method.queue.clone()
    assert queue_before.shape == (8, 5)
    with torch.no_grad():
        q, k = method.query(v1), method.key(v2)
    loss = method(v1, v2)
    expected = _info_nce_by_hand(q.numpy(), k.numpy(), queue_before.numpy(), 0.2)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # the keys were enqueued after the loss read the queue
    assert torch.allclose(method.queue[:4], nn.functional.normalize(k, dim=1), atol=1e-6)
    assert torch.equal(method.queue[4:], queue_before[4:]) and method.queue_pointer == 4


# ----------------------------------------------------------------------------- momentum encoder and queue


def test_queue_is_fifo_with_fixed_length():
    method = MoCo(_encoder(), queue_size=8, projection_dim=5)
    keys = []
    for step in range(3):
        v = _images(4, 10 + step)
        with torch.no_grad():
            keys.append(nn.functional.normalize(method.key(v), dim=1))
        method(_images(4, 20 + step), v)  # q requires grad: a training step enqueues
        assert method.queue.shape == (8, 5)
    # after 3 batches of 4 in a queue of 8: the oldest batch was replaced by the newest
    assert torch.allclose(method.queue[:4], keys[2], atol=1e-6)
    assert torch.allclose(method.queue[4:], keys[1], atol=1e-6)
    assert method.queue_pointer == 4
    with torch.no_grad():  # no gradient (evaluation): the queue is read, not changed
        before = method.queue.clone()
        method(_images(4, 30), _images(4, 31))
    assert torch.equal(method.queue, before)


def test_momentum_update_is_an_ema_and_the_key_encoder_gets_no_gradients():
    method = MoCo(_encoder(), momentum=0.9, queue_size=8, projection_dim=5)
    # starts as a copy
    for p, pk in zip(method.encoder.backbone.parameters(), method.key_backbone.parameters()):
        assert torch.equal(p, pk)
    loss = method(_images(4, 1), _images(4, 2))
    loss.backward()
    key_params = list(method.key_backbone.parameters()) + list(method.key_head.parameters())
    assert all(not p.requires_grad and p.grad is None for p in key_params)
    trained = {id(p) for g in method.parameter_groups() for p in g["params"]}
    assert not any(id(p) in trained for p in key_params)  # the optimizer never sees the key encoder
    assert method.encoder.backbone[1].weight.grad is not None

    with torch.no_grad():  # move the query encoder, then update
        for p in list(method.encoder.backbone.parameters()) + list(method.projection_head.parameters()):
            p.add_(torch.randn_like(p))
    query = [p.clone() for p in list(method.encoder.backbone.parameters()) + list(method.projection_head.parameters())]
    keys = [p.clone() for p in key_params]
    method.after_step(method)
    for pk_new, pk_old, pq in zip(key_params, keys, query):
        assert torch.allclose(pk_new, 0.9 * pk_old + 0.1 * pq, atol=1e-6)


# ----------------------------------------------------------------------------- views


def test_views_keep_shape_dtype_range_and_are_seeded():
    x = _images(6, 0, channels=1, size=12)
    config = ViewConfig(size=16)
    v1, v2 = two_views(x, torch.Generator().manual_seed(0), config)
    assert v1.shape == v2.shape == (6, 1, 16, 16) and v1.dtype == v2.dtype == torch.float32
    assert min(v1.min(), v2.min()) >= 0 and max(v1.max(), v2.max()) <= 1
    assert not torch.allclose(v1, v2)  # two different views of each image
    w1, w2 = two_views(x, torch.Generator().manual_seed(0), config)
    assert torch.equal(v1, w1) and torch.equal(v2, w2)  # same seed, same views
    u1, _ = two_views(x, torch.Generator().manual_seed(1), config)
    assert not torch.allclose(u1, v1)
    assert random_view(x.double(), torch.Generator().manual_seed(0)).dtype == torch.float64


def test_views_keep_grayscale_grayscale():
    gray = _images(4, 3, channels=1)
    rgb_gray = gray.expand(-1, 3, -1, -1).contiguous()  # a grayscale image stored as RGB
    view = random_view(rgb_gray, torch.Generator().manual_seed(0), ViewConfig(p_intensity=1.0, p_blur=1.0))
    assert torch.allclose(view[:, 0], view[:, 1]) and torch.allclose(view[:, 1], view[:, 2])  # no colour jitter


def test_view_geometry_and_switches():
    x = _images(3, 4, size=10)
    still = dict(crop_scale=(1.0, 1.0), ratio=(1.0, 1.0), degrees=0.0, hflip=0.0, p_intensity=0.0, p_blur=0.0)
    identity = random_view(x, torch.Generator().manual_seed(0), ViewConfig(**still))
    assert torch.allclose(identity, x, atol=1e-5)
    flipped = random_view(x, torch.Generator().manual_seed(0), ViewConfig(**{**still, "hflip": 1.0}))
    assert torch.allclose(flipped, x.flip(-1), atol=1e-5)
    blurred = random_view(x, torch.Generator().manual_seed(0), ViewConfig(**{**still, "p_blur": 1.0,
                                                                            "blur_sigma": (1.0, 1.0)}))
    assert blurred.std() < x.std() and torch.allclose(blurred.mean(), x.mean(), atol=0.02)
    cropped = random_view(x, torch.Generator().manual_seed(0), ViewConfig(**{**still, "crop_scale": (0.25, 0.25)}))
    assert not torch.allclose(cropped, x)


def test_view_config_parsing():
    config = ViewConfig.parse(["crop_scale=0.5,1", "hflip=0", "size=32"])
    assert config.crop_scale == (0.5, 1.0) and config.hflip == 0.0 and config.size == 32
    assert ViewConfig.parse({"degrees": 5}).degrees == 5
    for bad, message in [(["colour=1"], "unknown view option"), (["crop_scale=0.5"], "two numbers"),
                         (["hflip=2"], "probability"), (["crop_scale=0,1"], "crop_scale")]:
        with pytest.raises(MedTransferError, match=message):
            ViewConfig.parse(bad)


# ----------------------------------------------------------------------------- data pooling


def test_pooling_datasets_gives_one_size_and_grayscale():
    pooled = combine_images([_images(3, 0, channels=1, size=8), _images(2, 1, channels=3, size=12)])
    assert pooled.shape == (5, 1, 12, 12) and pooled.min() >= 0 and pooled.max() <= 1
    assert split_specs("medmnist:pneumoniamnist,medmnist:organamnist") == ["medmnist:pneumoniamnist",
                                                                           "medmnist:organamnist"]
    assert split_specs(["heart:va", "folder:a,b"]) == ["heart:va", "folder:a,b"]  # a path keeps its comma


# ----------------------------------------------------------------------------- k-NN monitor


def test_knn_votes_agree_with_lightly_and_score_the_ranking():
    from lightly.utils.benchmarking import knn_predict

    from medtransfer.ssl.monitor import KNNMonitor

    g = torch.Generator().manual_seed(0)
    bank, query = nn.functional.normalize(torch.randn(30, 4, generator=g), dim=1), \
        nn.functional.normalize(torch.randn(10, 4, generator=g), dim=1)
    labels = torch.randint(0, 3, (30,), generator=g)
    monitor = KNNMonitor(Split(bank, labels), Split(query, labels[:10]), 3, k=7)
    prob = monitor.votes(query, bank, labels)
    assert torch.allclose(prob.sum(1), torch.ones(10))
    assert torch.equal(prob.argmax(1), knn_predict(query, bank.T, labels, 3, knn_k=7, knn_t=0.1)[:, 0])

    class Identity(nn.Module):  # features = the inputs: two well separated clusters -> AUC 1
        def __init__(self):
            super().__init__()
            self.p = nn.Parameter(torch.zeros(1))

        def embed(self, x):
            return x
    y = torch.arange(20) % 2
    x = torch.randn(20, 4, generator=g) * 0.1 + y[:, None] * 3.0 - 1.5
    assert KNNMonitor(Split(x, y), Split(x, y), 2, "binary", k=5)(Identity()) == 1.0


# ----------------------------------------------------------------------------- the loop hooks


def _config(**kw) -> TrainConfig:
    base = dict(epochs=2, batch_size=8, lr=1e-2, patience=100, seed=0, accelerator="cpu", progress=False)
    return TrainConfig(**{**base, **kw})


def test_fit_runs_moco_through_its_hooks_and_is_seeded():
    runs = []
    for _ in range(2):
        method = MoCo(_encoder(seed=1), queue_size=8, projection_dim=5)
        steps = []
        original = method.after_step
        method.after_step = lambda model: (steps.append(1), original(model))
        x = _images(16, 5)
        result = fit(method, method.parameter_groups(), Split(x, torch.zeros(16, dtype=torch.long)),
                     Split(x[:0], torch.zeros(0)), "binary", "image2d", _config(),
                     batch_loss=method.batch_loss, score_fn=lambda model: None, after_step=method.after_step,
                     keep_initial=False)
        assert len(steps) == 4  # 2 epochs x 2 steps
        assert result.best_epoch == 2 and [h["val_score"] for h in result.history] == [None, None, None]
        assert not torch.equal(method.key_backbone[1].weight, _encoder(seed=1).backbone[1].weight)
        runs.append((method, result))
    (m1, r1), (m2, r2) = runs
    assert [h.get("train_loss") for h in r1.history] == [h.get("train_loss") for h in r2.history]
    assert torch.equal(m1.encoder.backbone[1].weight, m2.encoder.backbone[1].weight)


def test_fit_keeps_the_best_monitored_epoch_but_never_the_untrained_one():
    method = SimCLR(_encoder(seed=2), projection_dim=5)
    scores = iter([0.9, 0.5, 0.7, 0.6])  # the untrained weights score best, then epoch 2
    snapshots = []

    def score(model):
        snapshots.append(method.encoder.backbone[1].weight.detach().clone())
        return next(scores)
    x = _images(16, 6)
    result = fit(method, method.parameter_groups(), Split(x, torch.zeros(16, dtype=torch.long)),
                 Split(x[:0], torch.zeros(0)), "binary", "image2d", _config(epochs=3),
                 batch_loss=method.batch_loss, score_fn=score, keep_initial=False)
    assert result.best_epoch == 2 and result.best_score == 0.7
    assert torch.equal(method.encoder.backbone[1].weight, snapshots[2])


# ----------------------------------------------------------------------------- an SSL run as a source


def _write_flat_folder(folder, n: int = 24, size: int = 16):
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray((rng.random((size, size)) * 255).astype(np.uint8), "L").save(folder / f"img{i:02d}.png")


def _target(n: int, seed: int) -> TaskDataset:
    g = torch.Generator().manual_seed(seed)

    def split(m):
        y = torch.arange(m) % 2
        x = torch.rand(m, 1, 16, 16, generator=g) * 0.5
        x[y == 1, :, 4:12, 4:12] += 0.5
        return Split(x.clamp(0, 1), y)
    return TaskDataset("tiny", "image2d", "binary", ["0", "1"], split(n), split(12), split(12))


@pytest.mark.parametrize("method", ["simclr", "moco"])
def test_ssl_run_is_a_source_for_linear_probe_and_full(tmp_path, method):
    from medtransfer.api import evaluate, pretrain
    from medtransfer.data import load_dataset
    from medtransfer.models.checkpoint import read_meta
    from medtransfer.models.sources import load_source_model
    from medtransfer.strategies import TransferContext, get_strategy

    images = tmp_path / "unlabelled"
    _write_flat_folder(images)
    flat = load_dataset(f"folder:{images}")
    assert flat.classes == ["unlabelled"] and flat.info["unlabelled"]

    run = tmp_path / "run"
    result = pretrain(f"folder:{images}", method=method, backbone="resnet18", image_size=32, epochs=1,
                      batch_size=8, out=run, accelerator="cpu", progress=False)
    assert result.metrics["monitor"] is None and result.metrics["fit"]["best_epoch"] == 1  # no labels: last epoch
    meta = read_meta(run)
    assert meta["classes"] == [] and meta["provenance"]["method"] == method
    assert meta["provenance"]["epochs"] == 1 and meta["provenance"]["data"] == [f"folder:{images}"]
    assert {"config.json", "metrics.json", "log.txt", "model.safetensors"} <= {p.name for p in run.iterdir()}

    source = load_source_model(str(run), "image2d", 1)
    backbone_state = {k: v.clone() for k, v in source.model.backbone.state_dict().items()}
    target = _target(16, 0)
    for strategy in ("linear-probe", "full"):
        ctx = TransferContext(target, _config(epochs=1, augment=False), source.model.architecture, source.model.spec,
                              source.model, None, source.classes)
        model = get_strategy(strategy).run(ctx)
        assert model.head.out_features == 2  # a new head sized for the target
        if strategy == "linear-probe":  # the pretrained backbone is what it probes
            state = model.backbone.state_dict()
            assert all(torch.equal(state[k], backbone_state[k]) for k in backbone_state)
        prob = predict_proba(model, target.test.x, "binary")
        assert prob.shape == (12, 2) and np.isfinite(prob).all()
    with pytest.raises(MedTransferError, match="self-supervised source model"):
        evaluate(run, data=f"folder:{images}")


def test_cli_rejects_tabular_data_and_supervised_only_misuse(tmp_path):
    env = {**os.environ, "COLUMNS": "200"}
    for args, message in [(["--method", "simclr", "--data", "heart:va"], "takes 2D images"),
                          (["--data", "heart:va", "--temperature", "0.1"], "apply to --method simclr or moco"),
                          (["--data", "heart:va", "--limit", "5"], "apply to --method simclr or moco")]:
        result = subprocess.run([sys.executable, "-m", "medtransfer.cli", "pretrain", *args, "--out",
                                 str(tmp_path / "r")], capture_output=True, text=True, env=env, cwd=tmp_path)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and message in lines[0], result.stderr


def test_cli_limit_pretrains_on_that_many_images(tmp_path):
    images = tmp_path / "unlabelled"
    _write_flat_folder(images)
    run = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "medtransfer.cli", "pretrain", "--method", "simclr", "--data",
                             f"folder:{images}", "--limit", "6", "--epochs", "1", "--batch-size", "4",
                             "--image-size", "32", "--device", "cpu", "--quiet", "--out", str(run)],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    config = json.loads((run / "config.json").read_text())
    assert config["n_images"] == 6 and config["limit"] == 6


# ----------------------------------------------------------------------------- signals


def _recordings(path, n: int = 64, length: int = 64, seed: int = 0):
    """n one-channel recordings of two classes (a slower or faster sine with noise), as an npz: dataset."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    t = np.linspace(0, 1, length)
    phase = rng.uniform(0, 6, (n, 1))
    x = np.sin(2 * np.pi * (3 + 5 * y[:, None]) * t + phase) + 0.1 * rng.standard_normal((n, length))
    np.savez(path, x=x.astype(np.float32), y=y)
    return f"npz:{path}"


def test_signal_views_are_seeded_keep_shape_and_differ():
    from medtransfer.training.augment import SignalViewConfig
    x = torch.randn(6, 2, 50, generator=torch.Generator().manual_seed(0))
    v1, v2 = two_views(x, torch.Generator().manual_seed(3), SignalViewConfig())
    w1, w2 = two_views(x, torch.Generator().manual_seed(3), SignalViewConfig())
    assert v1.shape == v2.shape == x.shape and torch.equal(v1, w1) and torch.equal(v2, w2)
    assert not torch.allclose(v1, v2) and not torch.allclose(v1, x)
    quiet = SignalViewConfig(jitter=0, scaling=0, shift=0, mask=0)
    assert torch.allclose(two_views(x, torch.Generator().manual_seed(3), quiet)[0], x)  # every augmentation off
    with pytest.raises(ValueError, match="SignalViewConfig"):
        two_views(x, None, ViewConfig())  # image views on signals: refused, never a silent reshape
    assert SignalViewConfig.parse(["mask=0.5"]).mask == 0.5
    with pytest.raises(MedTransferError, match="unknown view option 'crop_scale'"):
        SignalViewConfig.parse(["crop_scale=0.5,1"])
    with pytest.raises(MedTransferError, match="share of the length"):
        SignalViewConfig.parse({"shift": 1.5})


def test_signal_simclr_run_is_a_source_for_transfer(tmp_path):
    from medtransfer.api import pretrain, transfer
    from medtransfer.models.checkpoint import read_meta
    spec = _recordings(tmp_path / "beats.npz")
    run = tmp_path / "ssl"
    result = pretrain(spec, method="simclr", backbone="cnn1d", epochs=1, batch_size=16, out=run,
                      accelerator="cpu", progress=False)
    assert result.config["views"] == {"jitter": 0.1, "scaling": 0.2, "shift": 0.2, "mask": 0.25}
    assert result.metrics["monitor"]["name"] == "knn_auc"  # the labelled val split monitors the encoder
    meta = read_meta(run)
    assert meta["input"]["modality"] == "signal" and meta["input"]["length"] == 64
    target = _recordings(tmp_path / "target.npz", n=48, seed=1)
    run2 = transfer(target, "linear-probe", source=str(run), budget=12, epochs=2, out=tmp_path / "probe",
                    accelerator="cpu", progress=False)
    assert run2.metrics["test"]["auc"]["value"] > 0.7 and run2.config["source"] == str(run)  # two sines apart
    with pytest.raises(MedTransferError, match="one \\(channels, length\\)"):
        pretrain([spec, _recordings(tmp_path / "long.npz", length=80)], method="simclr", backbone="cnn1d",
                 epochs=1, out=tmp_path / "no", progress=False)
    with pytest.raises(MedTransferError, match="--image-size applies to images"):
        pretrain(spec, method="simclr", backbone="cnn1d", image_size=32, epochs=1, out=tmp_path / "no",
                 progress=False)
