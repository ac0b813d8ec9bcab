"""Domain adaptation: gradient reversal, CORAL and MMD losses, prior-shift correction, budget 0."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

import medtransfer as mt
from medtransfer.data import load_dataset
from medtransfer.errors import MedTransferError
from medtransfer.evaluation.shift import reweight, softmax
from medtransfer.models.backbones import create_model, default_spec
from medtransfer.strategies import STRATEGIES
from medtransfer.strategies.coral import coral_loss
from medtransfer.strategies.dann import DomainAdversarialLoss, DomainDiscriminator, ganin_coefficient, grad_reverse
from medtransfer.strategies.mmd import mk_mmd
from medtransfer.strategies.prior_shift import correct_head

ADAPTIVE = ["dann", "coral", "mmd"]


@pytest.mark.parametrize("coeff", [1.0, 0.25])
def test_gradient_reversal_flips_and_scales_the_gradient(coeff):
    x = torch.randn(5, 3, requires_grad=True)
    out = grad_reverse(x, coeff)
    assert torch.equal(out, x)  # identity forward
    (out * torch.arange(3.0)).sum().backward()
    assert torch.allclose(x.grad, -coeff * torch.arange(3.0).expand(5, 3))


def test_ganin_ramp_and_the_adversarial_loss_schedule():
    assert ganin_coefficient(0.0) == 0.0 and ganin_coefficient(1.0) == pytest.approx(1.0, abs=1e-4)
    values = [ganin_coefficient(p / 10) for p in range(11)]
    assert values == sorted(values)
    loss = DomainAdversarialLoss(DomainDiscriminator(4, 8), total_steps=10)
    assert loss.coefficient == 0.0
    value = loss(torch.randn(6, 4), torch.randn(6, 4)).detach()
    assert loss.step == 1 and 0 < loss.coefficient < 1
    assert abs(value.item() - math.log(2)) < 0.5  # an untrained discriminator is near chance


@pytest.mark.parametrize("loss", [coral_loss, mk_mmd])
def test_alignment_losses_are_zero_for_identical_batches_and_grow_with_shift(loss):
    g = torch.Generator().manual_seed(0)
    source = torch.randn(64, 8, generator=g)
    assert abs(float(loss(source, source.clone()))) < 1e-6
    noise = torch.randn(64, 8, generator=g)
    small, large = loss(source, noise + 0.3), loss(source, noise * 2 + 1.5)
    assert float(large) > float(small) > 0
    moved = source.clone().requires_grad_(True)
    loss(source, moved + 1.0).backward()
    assert torch.isfinite(moved.grad).all() and moved.grad.abs().sum() > 0


def test_prior_correction_in_the_head_is_exact():
    torch.manual_seed(0)
    arch = {"kind": "mlp", "name": "linear", "in_features": 4, "hidden": [], "dropout": 0.0}
    model = create_model(arch, default_spec("tabular", 0, list("abcd")), 3)
    x = torch.randn(20, 4)
    with torch.no_grad():
        before = model(x).numpy()
    source, target, temperature = np.array([0.5, 0.3, 0.2]), np.array([0.1, 0.3, 0.6]), 1.7
    correct_head(model, temperature, source, target)
    with torch.no_grad():
        after = torch.softmax(model(x), 1).numpy()
    assert np.allclose(after, reweight(softmax(before / temperature), source, target), atol=1e-5)


# ----------------------------------------------------------------------------- budget 0, end to end


@pytest.fixture(scope="module")
def tiny_sites(tmp_path_factory):
    """Two tiny hospitals: the target's features are shifted and its prevalence is higher."""
    folder = tmp_path_factory.mktemp("sites")
    rng = np.random.default_rng(0)
    for name, n, prevalence, offset in (("source", 160, 0.4, 0.0), ("target", 120, 0.7, 0.8)):
        y = (rng.random(n) < prevalence).astype(int)
        x = rng.normal(size=(n, 4)) + y[:, None] * np.array([1.2, 0.8, 0, 0]) + offset * np.array([0, 0, 1, 0.5])
        frame = pd.DataFrame(x, columns=["a", "b", "c", "d"])
        frame["site"] = rng.choice(["x", "y"], size=n)
        frame["y"] = np.where(y == 1, "sick", "well")
        frame.to_csv(folder / f"{name}.csv", index=False)
    return folder


def _run(folder, strategy, budget=0, **kw):
    return mt.transfer(f"csv:{folder / 'target.csv'}", strategy, source=f"csv:{folder / 'source.csv'}", target="y",
                       budget=budget, save=False, progress=False, n_boot=0, epochs=3, source_epochs=5, **kw)


@pytest.mark.parametrize("strategy", ADAPTIVE + ["prior-shift", "prior-shift-bbse", "source-model", "source-only"])
def test_budget_zero_works_without_target_labels(tiny_sites, strategy):
    result = _run(tiny_sites, strategy)
    assert result.config["n_train_labels"] == 0 and result.config["n_val_labels"] == 0
    assert result.metrics["val"] == {} and 0 <= result.metrics["test"]["auc"]["value"] <= 1
    assert set(result.predictions["split"]) == {"test"}
    notes = result.config["strategy_notes"]
    if strategy in ADAPTIVE:
        assert notes["selection"].startswith("source validation") and notes["labelled_target"] == 0
        full = load_dataset(f"csv:{tiny_sites / 'target.csv'}", target="y")
        assert notes["unlabelled_target"] == len(full.train)  # every training row, without its label
    if strategy.startswith("prior-shift"):
        assert notes["target_prior"]["sick"] > notes["source_prior"]["sick"]  # the prevalence rose


def test_adaptation_with_a_few_labels_selects_on_target_validation(tiny_sites):
    result = _run(tiny_sites, "dann", budget=10)
    assert result.config["strategy_notes"]["selection"].startswith("target validation")
    assert result.config["strategy_notes"]["labelled_target"] == 10


def test_adapted_models_save_and_load_as_normal_checkpoints(tiny_sites, tmp_path):
    result = mt.transfer(f"csv:{tiny_sites / 'target.csv'}", "prior-shift", source=f"csv:{tiny_sites / 'source.csv'}",
                         target="y", budget=0, out=tmp_path / "run", progress=False, n_boot=0, source_epochs=5)
    metrics = mt.evaluate(tmp_path / "run", n_boot=0)
    assert metrics["auc"]["value"] == pytest.approx(result.metrics["test"]["auc"]["value"])
    assert mt.evaluate(tmp_path / "run", n_boot=0)["brier"]["value"] == pytest.approx(
        result.metrics["test"]["brier"]["value"], abs=1e-6)


@pytest.mark.parametrize("strategy, source, message", [
    ("full", "csv", "needs labelled target examples, so --budget 0 is refused"),
    ("target-only", None, "needs labelled target examples"),
    ("dann", None, "needs --source"),
    ("coral", "run", "needs --source to be a source dataset"),
    ("prior-shift", "run", "needs --source to be a source dataset"),
])
def test_bad_input_is_one_clear_line(tiny_sites, tmp_path, strategy, source, message):
    if source == "run":
        mt.transfer(f"csv:{tiny_sites / 'source.csv'}", "scratch", target="y", out=tmp_path / "src", progress=False,
                    n_boot=0, epochs=2)
        source = str(tmp_path / "src")
    elif source == "csv":
        source = f"csv:{tiny_sites / 'source.csv'}"
    with pytest.raises(MedTransferError, match=message) as info:
        mt.transfer(f"csv:{tiny_sites / 'target.csv'}", strategy, source=source, target="y", budget=0, save=False,
                    progress=False, n_boot=0, epochs=2, source_epochs=5)
    assert "\n" not in str(info.value)


def test_registry_marks_the_label_free_strategies():
    free = {name for name, cls in STRATEGIES.items() if cls.unlabelled_ok}
    assert free == {"dann", "coral", "mmd", "prior-shift", "prior-shift-bbse", "source-model", "source-only"}


def test_image_adaptation_on_a_shifted_copy(tmp_path):
    """DANN with no target labels on tiny generated images: source = clean, target = gamma-shifted copy."""
    rng = np.random.default_rng(0)
    parts = {}
    for split, n in (("train", 48), ("val", 16), ("test", 24)):
        y = rng.integers(0, 2, n)
        images = rng.integers(0, 120, (n, 28, 28)) + y[:, None, None] * 100
        parts[f"{split}_images"], parts[f"{split}_labels"] = images.astype(np.uint8), y[:, None]
    np.savez(tmp_path / "pneumoniamnist.npz", **parts)
    result = mt.transfer("shift:gamma:2:medmnist:pneumoniamnist", "dann", source="medmnist:pneumoniamnist",
                         budget=0, data_root=tmp_path, epochs=1, source_epochs=1, image_size=16, batch_size=16,
                         save=False, progress=False, n_boot=0)
    assert result.config["strategy_notes"]["unlabelled_target"] == 48
    assert 0 <= result.metrics["test"]["auc"]["value"] <= 1 and result.metrics["val"] == {}
