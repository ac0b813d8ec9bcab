"""Shift diagnosis: covariate-shift tests, prior estimation (EM, BBSE), the report, the `shift:` scheme."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medtransfer.data import load_dataset
from medtransfer.data.base import Split, TaskDataset
from medtransfer.data.shift import KINDS, apply_shift, parse_shift, shifted_dataset
from medtransfer.errors import MedTransferError
from medtransfer.evaluation.shift import (bbse_prior, diagnose, domain_auc, em_prior, feature_shift, fit_temperature,
                                          mmd_test, readings, reweight, softmax)
from medtransfer.reporting.shift import write_shift_report

MEANS = np.array([[-1.0, 0.0], [1.0, 0.5], [0.0, 2.0]])


def gaussian_sample(prior, n, rng, classes=2):
    """Two-feature Gaussian classes (unit variance) drawn with the given class prior."""
    y = rng.choice(classes, size=n, p=prior)
    return MEANS[y] + rng.normal(size=(n, 2)), y


def bayes_logits(x, source_prior, classes=2):
    """Logits of the Bayes classifier under the source prior: a perfectly calibrated source model."""
    log_lik = -0.5 * ((x[:, None, :] - MEANS[None, :classes]) ** 2).sum(-1)
    return log_lik + np.log(source_prior)[None, :]


@pytest.mark.parametrize("classes, source_prior, target_prior", [
    (2, [0.5, 0.5], [0.2, 0.8]),
    (2, [0.54, 0.46], [0.9, 0.1]),
    (3, [0.5, 0.3, 0.2], [0.1, 0.3, 0.6]),
])
def test_em_and_bbse_recover_a_known_prior(classes, source_prior, target_prior):
    rng = np.random.default_rng(0)
    source_prior, target_prior = np.array(source_prior), np.array(target_prior)
    x_val, y_val = gaussian_sample(source_prior, 4000, rng, classes)
    x_t, _ = gaussian_sample(target_prior, 4000, rng, classes)
    logits_val, logits_t = bayes_logits(x_val, source_prior, classes), bayes_logits(x_t, source_prior, classes)
    em = em_prior(softmax(logits_t), source_prior)
    bbse = bbse_prior(y_val, logits_val.argmax(1), logits_t.argmax(1), classes)
    assert np.allclose(em.sum(), 1) and np.allclose(bbse.sum(), 1)
    assert np.abs(em - target_prior).max() < 0.04
    assert np.abs(bbse - target_prior).max() < 0.06
    naive = softmax(logits_t).mean(0)  # classify-and-count is biased toward the source prior
    assert np.abs(em - target_prior).max() < np.abs(naive - target_prior).max()


def test_no_label_shift_leaves_the_prior():
    rng = np.random.default_rng(1)
    prior = np.array([0.6, 0.4])
    x, _ = gaussian_sample(prior, 3000, rng)
    assert np.abs(em_prior(softmax(bayes_logits(x, prior)), prior) - prior).max() < 0.04


def test_temperature_and_reweighting():
    rng = np.random.default_rng(2)
    prior = np.array([0.5, 0.5])
    x, y = gaussian_sample(prior, 3000, rng)
    logits = bayes_logits(x, prior)
    assert fit_temperature(3 * logits, y) == pytest.approx(3, rel=0.15)
    prob = softmax(logits)
    assert np.allclose(reweight(prob, prior, prior), prob)
    moved = reweight(prob, prior, np.array([0.1, 0.9]))
    assert np.allclose(moved.sum(1), 1) and (moved[:, 1] >= prob[:, 1] - 1e-12).all()


def test_covariate_tests_flag_a_shift_and_not_a_non_shift():
    rng = np.random.default_rng(3)
    xs = rng.normal(size=(150, 5))
    same = rng.normal(size=(150, 5))
    moved = rng.normal(size=(150, 5)) + np.array([0.8, 0, 0, 0, 0])
    shifted, null = domain_auc(xs, moved, n_boot=200), domain_auc(xs, same, n_boot=200)
    assert shifted["auc"] > 0.7 and shifted["ci"][0] > 0.5
    assert null["auc"] < 0.62 and null["ci"][0] < 0.5
    assert mmd_test(xs, moved, n_perm=200)["p"] < 0.01
    assert mmd_test(xs, same, n_perm=200)["p"] > 0.05
    ranked = feature_shift(xs, moved, [f"f{i}" for i in range(5)])
    assert ranked[0]["feature"] == "f0" and ranked[0]["smd"] > 0.5 and ranked[0]["ks_p"] < 0.01


def _diagnosis(xs, xt, rng):
    prior = np.array([0.5, 0.5])
    x_val, y_val = gaussian_sample(prior, 300, rng)
    logits = lambda x: bayes_logits(x[:, :2], prior)  # noqa: E731
    return diagnose("A", "B", "tabular", ["neg", "pos"], xs, xt, "3 synthetic features",
                    feature_names=["a", "b", "c"], model="Bayes", logits_source_val=logits(x_val), y_source_val=y_val,
                    logits_source=logits(xs), logits_target=logits(xt), source_prior=prior, n_perm=200, n_boot=20)


def test_diagnosis_flags_a_real_shift_and_not_a_non_shift(tmp_path):
    rng = np.random.default_rng(4)
    xs = np.c_[gaussian_sample([0.5, 0.5], 200, rng)[0], rng.normal(size=200)]
    same = np.c_[gaussian_sample([0.5, 0.5], 200, rng)[0], rng.normal(size=200)]
    moved = np.c_[gaussian_sample([0.5, 0.5], 200, rng)[0], rng.normal(size=200) + 1.5]
    assert not _diagnosis(xs, same, rng).significant
    diag = _diagnosis(xs, moved, rng)
    assert diag.significant and diag.features[0]["feature"] == "c"
    text = " ".join(readings(diag))
    assert "covariate shift" in text and "'pos'" in text and "c (SMD" in text
    md = write_shift_report(diag, tmp_path / "report")
    assert md.read_text().startswith("# Dataset shift: A → B")
    saved = json.loads((tmp_path / "report" / "shift.json").read_text())
    assert saved["significant"] is True and len(saved["label"]["em"]) == 2
    assert {p.name for p in (tmp_path / "report").glob("*.png")} == {"covariate.png", "priors.png", "features.png",
                                                                      "classes.png"}


def test_heart_sites_shift_report(tmp_path):
    import medtransfer as mt

    diag = mt.shift("heart:cleveland", "heart:switzerland", out=tmp_path / "sw", n_perm=200, n_boot=20)
    assert diag.significant and diag.domain["auc"] > 0.85
    assert abs(diag.label["em"][1] - diag.label["true"][1]) < 0.1  # 93% disease, estimated without labels
    assert any(m["column"] == "chol" and m["target"] == 1.0 for m in diag.missing)
    assert (tmp_path / "sw" / "shift.md").is_file() and (tmp_path / "sw" / "priors.png").is_file()
    with pytest.raises(MedTransferError, match="already exists"):
        mt.shift("heart:cleveland", "heart:switzerland", out=tmp_path / "sw")


# ----------------------------------------------------------------------------- the shift: scheme


def _images(n=12, seed=0, channels=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, channels, 16, 16), generator=g)


@pytest.mark.parametrize("kind", list(KINDS))
def test_shift_transforms_keep_shape_dtype_range_and_are_deterministic(kind):
    x = _images()
    strength = KINDS[kind][0]
    a = apply_shift(x, kind, strength, torch.Generator().manual_seed(7))
    b = apply_shift(x, kind, strength, torch.Generator().manual_seed(7))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    assert torch.equal(a, b)
    assert not torch.allclose(a, x)  # it changes the images


def test_shift_strength_zero_like_values_are_identity():
    x = _images()
    assert torch.allclose(apply_shift(x, "gamma", 1.0), x)
    assert torch.allclose(apply_shift(x, "contrast", 1.0), x, atol=1e-6)
    assert torch.allclose(apply_shift(x, "blur", 0.0), x)
    assert torch.allclose(apply_shift(x, "lowres", 1.0), x, atol=1e-6)


def test_shift_parsing_and_errors():
    assert parse_shift("gamma:medmnist:pneumoniamnist") == ("gamma", 1.8, "medmnist:pneumoniamnist")
    assert parse_shift("blur:1.5:medmnist:breastmnist") == ("blur", 1.5, "medmnist:breastmnist")
    assert parse_shift("noise:shift:blur:medmnist:x") == ("noise", 0.08, "shift:blur:medmnist:x")
    for bad, message in [("warp:medmnist:x", "unknown shift kind"), ("gamma", "names no dataset"),
                         ("gamma:-2:medmnist:x", "must be > 0"), ("lowres:0.5:medmnist:x", ">= 1")]:
        with pytest.raises(MedTransferError, match=message):
            parse_shift(bad)
    with pytest.raises(MedTransferError, match="is a table"):
        load_dataset("shift:blur:heart:va")


def test_shifted_dataset_every_split_labels_kept(tmp_path):
    rng = np.random.default_rng(0)
    npz = {f"{s}_{k}": (rng.integers(0, 256, (n, 28, 28), dtype=np.uint8) if k == "images"
                         else rng.integers(0, 2, (n, 1)))
           for s, n in (("train", 30), ("val", 10), ("test", 20)) for k in ("images", "labels")}
    np.savez(tmp_path / "pneumoniamnist.npz", **npz)
    base = load_dataset("medmnist:pneumoniamnist", data_root=tmp_path)
    one = load_dataset("shift:noise:0.1:medmnist:pneumoniamnist", data_root=tmp_path)
    two = load_dataset("shift:noise:0.1:medmnist:pneumoniamnist", data_root=tmp_path)
    assert one.name == "shift:noise:0.1:medmnist:pneumoniamnist" and one.info["shift"]["kind"] == "noise"
    for split in ("train", "val", "test"):
        a, b, ref = one.split(split), two.split(split), base.split(split)
        assert torch.equal(a.x, b.x) and torch.equal(a.y, ref.y) and a.x.shape == ref.x.shape
        assert not torch.equal(a.x, ref.x)
    tiny = TaskDataset("t", "image2d", "binary", ["a", "b"], *(Split(_images(4, i), torch.tensor([0, 1, 0, 1]))
                                                                for i in range(3)))
    assert shifted_dataset(tiny, "gamma", 2.0).name == "shift:gamma:2:t"
