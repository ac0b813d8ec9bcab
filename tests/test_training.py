"""The training loop: determinism, early stopping with best-weight restore, steps per epoch,
augmentation and the validation score used for model selection."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from medtransfer.data.base import Split
from medtransfer.models.backbones import create_model, default_spec, describe
from medtransfer.training.augment import augment_batch
from medtransfer.training.loop import TrainConfig, fit, predict_proba, selection_score, warmup_cosine

N_FEATURES = 5


def _table(n: int, seed: int, invert: bool = False) -> Split:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, N_FEATURES, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    return Split(x, 1 - y if invert else y)


def _model(name: str = "mlp:16", seed: int = 0):
    torch.manual_seed(seed)
    arch = describe(name, "tabular", 0, N_FEATURES)
    return create_model(arch, default_spec("tabular", 0, [f"f{i}" for i in range(N_FEATURES)]), 2)


def _config(**kw) -> TrainConfig:
    base = dict(epochs=4, batch_size=16, lr=1e-2, patience=100, augment=True, seed=0, accelerator="cpu",
                progress=False)
    base.update(kw)
    return TrainConfig(**base)


def _same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ----------------------------------------------------------------------------- determinism


def test_fit_is_deterministic_for_a_seed():
    train, val = _table(60, 1), _table(40, 2)
    runs = []
    for run in range(2):
        model = _model(seed=3)
        torch.rand(run + 1)  # the global RNG state differs between the runs: fit must seed it
        result = fit(model, [{"params": model.parameters()}], train, val, "binary", "tabular", _config(lr=0.05))
        runs.append((model, result))
    (m1, r1), (m2, r2) = runs
    assert _same_state(m1, m2)
    assert r1.history == r2.history and r1.best_epoch == r2.best_epoch and r1.best_score == r2.best_score
    # and the model actually trained
    assert not _same_state(m1, _model(seed=3))
    assert r1.best_score > 0.9


def test_fit_seed_changes_the_run():
    train, val = _table(60, 1), _table(40, 2)
    m1, m2 = _model(seed=3), _model(seed=3)
    fit(m1, [{"params": m1.parameters()}], train, val, "binary", "tabular", _config(seed=0, patience=100))
    fit(m2, [{"params": m2.parameters()}], train, val, "binary", "tabular", _config(seed=1, patience=100))
    assert not _same_state(m1, m2)


def _tiny_cnn(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                         nn.Flatten(), nn.Dropout(0.2), nn.Linear(16, 2))


def _images(n: int, seed: int) -> Split:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.rand(n, 1, 16, 16, generator=g) * 0.5
    x[y == 1, :, 4:12, 4:12] += 0.5  # a bright square means class 1
    return Split(x.clamp(0, 1), y)


def test_fit_with_image_augmentation_is_deterministic():
    train, val = _images(24, 0), _images(12, 1)
    states, histories = [], []
    for run in range(2):
        model = _tiny_cnn(5)
        torch.rand(run + 1)
        result = fit(model, [{"params": model.parameters()}], train, val, "binary", "image2d",
                     _config(epochs=2, batch_size=8, augment=True))
        states.append(model)
        histories.append(result.history)
    assert _same_state(*states)
    assert histories[0] == histories[1] and len(histories[0]) == 3  # same losses: same augmented batches


# ----------------------------------------------------------------------------- early stopping


class _ValSnapshots:
    """Snapshot the weights each time the model is evaluated on the validation set."""

    def __init__(self, model: nn.Module, n_val: int):
        self.states = []
        self.model = model
        model.register_forward_hook(self)
        self.n_val = n_val

    def __call__(self, module, inputs, output):
        if not module.training and inputs[0].shape[0] == self.n_val:
            self.states.append(copy.deepcopy(module.state_dict()))


def test_early_stopping_restores_the_best_validation_weights():
    train = _table(60, 1)
    # validation labels follow a different rule, so the score peaks and then falls back
    g = torch.Generator().manual_seed(9)
    xv = torch.randn(50, N_FEATURES, generator=g)
    val = Split(xv, (xv[:, 0] - 1.5 * xv[:, 1] + 0.5 * torch.randn(50, generator=g) > 0).long())
    model = _model("linear", seed=4)
    snaps = _ValSnapshots(model, len(val))
    config = _config(epochs=40, patience=3, lr=0.05, augment=False)
    result = fit(model, [{"params": model.parameters()}], train, val, "binary", "tabular", config)

    scores = [h["val_score"] for h in result.history]
    assert [h["epoch"] for h in result.history] == list(range(result.epochs_run + 1))
    assert result.best_epoch == int(np.argmax(scores))  # the first best
    assert result.best_score == max(scores)
    assert result.epochs_run < config.epochs  # it did stop early ...
    assert result.epochs_run == result.best_epoch + config.patience  # ... patience epochs after the best
    assert result.best_epoch < result.epochs_run and scores[-1] < result.best_score

    # the model holds the weights it had when validated at the best epoch, not the last ones
    assert len(snaps.states) == result.epochs_run + 1
    best = snaps.states[result.best_epoch]
    final = model.state_dict()
    assert all(torch.equal(final[k], best[k]) for k in best)
    assert not all(torch.equal(final[k], snaps.states[-1][k]) for k in best)
    prob = predict_proba(model, val.x, "binary")
    assert selection_score(val.y.numpy(), prob, "binary") == pytest.approx(result.best_score, abs=1e-12)


def test_a_fit_that_only_makes_things_worse_keeps_the_initial_weights():
    train = _table(60, 1, invert=True)  # training labels are the opposite of the validation ones
    g = torch.Generator().manual_seed(2)
    xv = torch.randn(40, N_FEATURES, generator=g)
    val = Split(xv, (xv[:, 0] > 0).long())
    model = _model("linear", seed=0)
    with torch.no_grad():  # start from a model that is perfect on validation
        model.head.weight.zero_()
        model.head.weight[0, 0], model.head.weight[1, 0] = -2.0, 2.0
        model.head.bias.zero_()
    initial = copy.deepcopy(model)
    result = fit(model, [{"params": model.parameters()}], train, val, "binary", "tabular",
                 _config(epochs=4, lr=0.5, augment=False))
    assert result.history[0] == {"epoch": 0, "val_score": 1.0}
    assert result.best_epoch == 0 and result.best_score == 1.0
    assert min(h["val_score"] for h in result.history[1:]) < 0.5  # training really did make it worse
    assert _same_state(model, initial)


# ----------------------------------------------------------------------------- steps per epoch


class _TrainStepCounter:
    def __init__(self, model: nn.Module):
        self.steps = 0
        self.batch_sizes = []
        model.register_forward_hook(self)

    def __call__(self, module, inputs, output):
        if module.training:
            self.steps += 1
            self.batch_sizes.append(inputs[0].shape[0])


@pytest.mark.parametrize("min_steps, expected", [(1, 3), (7, 7)])
def test_min_steps_per_epoch(min_steps, expected):
    train, val = _table(10, 1), _table(20, 2)
    model = _model(seed=0)
    counter = _TrainStepCounter(model)
    result = fit(model, [{"params": model.parameters()}], train, val, "binary", "tabular",
                 _config(epochs=2, batch_size=4, min_steps_per_epoch=min_steps))
    assert result.epochs_run == 2
    assert counter.steps == 2 * expected
    assert all(size == 4 for size in counter.batch_sizes)


def test_warmup_cosine_schedule():
    f = warmup_cosine(total_steps=10, warmup_steps=2)
    assert [f(0), f(1)] == [0.5, 1.0]
    assert f(2) == pytest.approx(1.0)
    assert f(6) == pytest.approx(0.5)  # half-way through the cosine part
    assert f(10) == pytest.approx(0.0, abs=1e-12)
    assert all(f(s) >= f(s + 1) for s in range(2, 12))


# ----------------------------------------------------------------------------- augmentation


def test_augment_image2d_keeps_shape_dtype_and_range():
    x = torch.rand(6, 1, 16, 16)
    out = augment_batch(x, "image2d", torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= -1e-6 and out.max() <= 1 + 1e-6
    assert not torch.equal(out, x)
    again = augment_batch(x, "image2d", torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    # small affine changes: the augmented image still resembles the original
    assert (out - x).abs().mean() < (torch.rand_like(x) - x).abs().mean()


def test_augment_image3d_keeps_shape():
    x = torch.rand(2, 1, 8, 8, 8)
    out = augment_batch(x, "image3d", torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.allclose(out.sum(), x.sum())  # a roll moves voxels, it does not change them


def test_augment_leaves_tables_unchanged():
    x = torch.randn(8, N_FEATURES)
    out = augment_batch(x, "tabular", torch.Generator().manual_seed(0))
    assert torch.equal(out, x)


# ----------------------------------------------------------------------------- selection score


def test_selection_score_binary_matches_sklearn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 50)
    p1 = np.clip(0.3 * y + rng.random(50) * 0.7, 0, 1)
    prob = np.stack([1 - p1, p1], 1)
    assert selection_score(y, prob, "binary") == pytest.approx(roc_auc_score(y, p1), abs=1e-12)


def test_selection_score_multiclass_matches_sklearn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 60)
    logits = rng.normal(size=(60, 3))
    logits[np.arange(60), y] += 1.0
    prob = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    expected = roc_auc_score(y, prob, multi_class="ovr", average="macro")
    assert selection_score(y, prob, "multiclass") == pytest.approx(expected, abs=1e-12)


def test_selection_score_multilabel_matches_sklearn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, (40, 3))
    prob = np.clip(0.4 * y + 0.6 * rng.random((40, 3)), 0, 1)
    assert selection_score(y, prob, "multilabel") == pytest.approx(roc_auc_score(y, prob, average="macro"))


def test_selection_score_falls_back_to_accuracy_for_one_class():
    y = np.ones(4, dtype=int)
    prob = np.array([[0.2, 0.8], [0.6, 0.4], [0.1, 0.9], [0.3, 0.7]])
    assert selection_score(y, prob, "binary") == pytest.approx(0.75)


@pytest.mark.parametrize("y, task, expected", [
    ([0, 0, 1, 0, 0], "binary", ("b", 1)),
    ([[0], [1], [1]], "binary", ("a", 1)),  # labels as an (N, 1) column, as Split.y may hold them
    ([0, 2, 2, 0, 2], "multiclass", ("b", 0)),  # a class absent from validation is the thinnest of all
    ([[1, 0, 1], [1, 0, 0], [1, 1, 0]], "multilabel", ("a (negatives)", 0)),
])
def test_thinnest_class_counts_the_rarest_class(y, task, expected):
    from medtransfer.evaluation.selection import thinnest_class

    classes = ["a", "b"] if task == "binary" else ["a", "b", "c"]
    assert thinnest_class(np.asarray(y), task, classes) == expected


def test_thin_validation_is_a_phrase_below_ten_of_a_class_and_none_otherwise():
    from medtransfer.evaluation.selection import thin_validation

    assert thin_validation(np.array([0] * 30 + [1] * 9), "binary", ["neg", "pos"]) == \
        "9 validation examples of 'pos' (39 in all)"
    assert thin_validation(np.array([0] * 30 + [1] * 10), "binary", ["neg", "pos"]) is None
    assert thin_validation(np.array([], dtype=int), "binary", ["neg", "pos"]) is None  # no validation: no choice


def test_predict_proba_restores_mode_and_sums_to_one():
    model = _model()
    model.train()
    prob = predict_proba(model, torch.randn(7, N_FEATURES), "binary", batch_size=3)
    assert prob.shape == (7, 2) and np.allclose(prob.sum(1), 1, atol=1e-6)
    assert model.training
