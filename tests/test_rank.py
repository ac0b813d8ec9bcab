"""`medtransfer rank`: the transferability scores (LogME, LEEP, NCE) against their definitions, and the
ranking pipeline on the built-in heart sites: every source scored, dataset sources with their heads,
an incompatible source listed with its reason, bad input refused in one line, Kendall's tau against a grid."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.stats import kendalltau, multivariate_normal

from medtransfer import api
from medtransfer.errors import MedTransferError
from medtransfer.evaluation.transferability import _max_evidence, leep, logme, nce
from medtransfer.pipeline.rank import grid_aucs

SOURCES = ["heart:cleveland", "heart:va", "heart:switzerland"]
FAST = dict(budget=40, source_epochs=3, progress=False)  # one source cache key for every test here


def blobs(n: int, dim: int, classes: int, seed: int = 0, spread: float = 3.0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    centres = rng.normal(size=(classes, dim)) * spread
    return centres[y] + rng.normal(size=(n, dim)), y


# ----------------------------------------------------------------------------- LogME


def test_logme_is_higher_for_separable_than_for_random_features():
    f, y = blobs(60, 16, 3)
    noise = np.random.default_rng(1).normal(size=f.shape)
    assert logme(f, y, "multiclass") > logme(noise, y, "multiclass") + 0.1
    labels = np.stack([y == 0, y == 1], axis=1).astype(float)  # multilabel: one target per label column
    assert logme(f, labels, "multilabel") > logme(noise, labels, "multilabel")


@pytest.mark.parametrize("n, dim", [(80, 10), (30, 64)])  # more examples than dimensions, and fewer
def test_logme_is_the_exact_log_evidence_at_its_alpha_and_beta(n, dim):
    """The value is log N(y; 0, I/beta + F F^T/alpha) / N at the alpha, beta it settles on (the
    null space of F included when N < D), not an approximation of it."""
    f, y = blobs(n, dim, 2, seed=3)
    target = (y == 1).astype(float)
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    evidence, alpha, beta = _max_evidence(u, s ** 2, target, dim)
    exact = multivariate_normal(np.zeros(n), np.eye(n) / beta + f @ f.T / alpha).logpdf(target) / n
    assert evidence == pytest.approx(exact, abs=1e-8)


def test_logme_is_unchanged_by_rotation_scale_order_and_class_names():
    f, y = blobs(50, 12, 3, seed=2)
    base = logme(f, y, "multiclass")
    rotation = np.linalg.qr(np.random.default_rng(4).normal(size=(12, 12)))[0]
    order = np.random.default_rng(5).permutation(len(y))
    assert logme(f @ rotation, y, "multiclass") == pytest.approx(base, abs=1e-9)
    for scale in (37.0, 0.01):
        assert logme(f * scale, y, "multiclass") == pytest.approx(base, abs=1e-9)
    assert logme(f[order], y[order], "multiclass") == pytest.approx(base, abs=1e-9)
    assert logme(f, np.array([7, 3, 5])[y], "multiclass") == pytest.approx(base, abs=1e-9)


def test_logme_refuses_unusable_features():
    f, y = blobs(20, 4, 2)
    f[3, 1] = np.nan
    with pytest.raises(MedTransferError, match="NaN"):
        logme(f, y, "binary")
    with pytest.raises(MedTransferError, match="all zero"):
        logme(np.zeros((20, 4)), y, "binary")


# ----------------------------------------------------------------------------- LEEP and NCE


THETA = np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]])
Y = np.array([0, 1, 1])


def test_leep_equals_the_hand_computed_value():
    # P(y, z) = [[0.9, 0.1], [0.2 + 0.5, 0.8 + 0.5]] / 3, so P(y | z) = [[9/16, 1/14], [7/16, 13/14]]
    expected = [0.9 * 9 / 16 + 0.1 * 1 / 14, 0.2 * 7 / 16 + 0.8 * 13 / 14, 0.5 * 7 / 16 + 0.5 * 13 / 14]
    assert leep(THETA, Y) == pytest.approx(np.mean(np.log(expected)), abs=1e-12)


def test_leep_is_unchanged_by_source_order_target_names_and_example_order():
    base = leep(THETA, Y)
    assert leep(THETA[:, ::-1], Y) == pytest.approx(base)
    assert leep(THETA, np.array(["healthy", "sick", "sick"])) == pytest.approx(base)
    assert leep(THETA[[2, 0, 1]], Y[[2, 0, 1]]) == pytest.approx(base)


def test_leep_is_zero_when_the_source_labels_name_the_target_classes():
    assert leep(np.eye(3)[[0, 1, 2, 1]], [2, 0, 1, 0]) == pytest.approx(0.0)
    with pytest.raises(MedTransferError, match="sum to 1"):
        leep(THETA * 2, Y)


def test_nce_equals_the_hand_computed_value():
    # Z = 0: Y is 0 or 1 half the time (H = log 2); Z = 1: Y is always 1 (H = 0); P(Z = 0) = 1/2
    assert nce([0, 0, 1, 1], [0, 1, 1, 1]) == pytest.approx(-0.5 * math.log(2), abs=1e-12)
    assert nce([4, 4, 9, 9], ["a", "b", "b", "b"]) == pytest.approx(-0.5 * math.log(2), abs=1e-12)
    assert nce([0, 1, 2, 1], [2, 0, 1, 0]) == pytest.approx(0.0)  # Z determines Y
    y = [0, 1, 1, 1]  # a constant Z says nothing: -H(Y)
    assert nce([0, 0, 0, 0], y) == pytest.approx(0.25 * math.log(0.25) + 0.75 * math.log(0.75))


# ----------------------------------------------------------------------------- the pipeline


def test_rank_scores_every_heart_source_and_writes_strict_json(tmp_path):
    result = api.rank("heart:hungary", ",".join(SOURCES), out=tmp_path / "rank", **FAST)
    assert result.n_train == 40 and [s.refused for s in result.scores] == [None] * 3
    assert {s.source for s in result.scores} == set(SOURCES)
    for s in result.scores:  # dataset sources are supervised: their heads give LEEP and NCE
        assert all(math.isfinite(v) for v in (s.logme, s.leep, s.nce)) and s.leep <= 0 and s.nce <= 0
        assert s.n_features > 0 and s.seconds > 0
    assert [s.logme for s in result.scores] == sorted((s.logme for s in result.scores), reverse=True)
    written = json.loads((tmp_path / "rank" / "rank.json").read_text(),
                         parse_constant=lambda c: pytest.fail(f"non-strict JSON token {c}"))
    assert [s["source"] for s in written["scores"]] == [s.source for s in result.scores]
    assert "| LogME |" in (tmp_path / "rank" / "rank.md").read_text()
    again = api.rank("heart:hungary", SOURCES[:1], seed=0, **FAST)  # same budget and seed: same examples
    assert again.scores[0].logme == pytest.approx(next(s.logme for s in result.scores
                                                       if s.source == SOURCES[0]), abs=1e-9)


def tiny_image_folder(root, classes=("a", "b"), per_class=12):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(root / c / f"{i}.png")
    return f"folder:{root}"


def test_an_incompatible_source_is_listed_with_its_reason_before_pretraining(tmp_path):
    images = tiny_image_folder(tmp_path / "images")
    result = api.rank("heart:hungary", [images, SOURCES[0]], **FAST)
    scored, refused = result.scores
    assert scored.source == SOURCES[0] and scored.logme is not None
    assert refused.source == images and refused.logme is None
    assert "image2d" in refused.refused and "tabular" in refused.refused
    assert refused.seconds < 5  # refused from its input spec, not after pretraining it


def test_bad_input_is_refused_in_one_line(tmp_path):
    with pytest.raises(MedTransferError, match="no sources"):
        api.rank("heart:hungary", " , ", progress=False)
    with pytest.raises(MedTransferError, match="unknown source 'no-such-source'"):
        api.rank("heart:hungary", ["heart:va", "no-such-source"], progress=False)
    with pytest.raises(MedTransferError, match="given twice"):
        api.rank("heart:hungary", "heart:va,heart:va", progress=False)
    with pytest.raises(MedTransferError, match="--budget 0"):
        api.rank("heart:hungary", "heart:va", budget=0, progress=False)
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(6):
        Image.fromarray(np.full((8, 8), i * 40, np.uint8)).save(flat / f"{i}.png")
    with pytest.raises(MedTransferError, match="unlabelled"):
        api.rank(f"folder:{flat}", "heart:va", progress=False)


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "medtransfer.cli", "rank", *args], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, "COLUMNS": "200"})


def test_the_rank_command(tmp_path):
    done = cli("--data", "heart:hungary", "--sources", ",".join(SOURCES), "--budget", "40", "--source-epochs", "3",
               "--quiet", "--out", str(tmp_path / "r"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "LogME" in done.stdout and all(s in done.stdout for s in SOURCES) and (tmp_path / "r" / "rank.md").is_file()
    bad = cli("--data", "heart:hungary", "--sources", "heart:va,nowhere:else", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.startswith("error: unknown source") and len(bad.stderr.splitlines()) == 1


# ----------------------------------------------------------------------------- against a grid


def write_grid(folder, target="heart:hungary"):
    """A results.csv where each source's validation-chosen strategy is known: the baseline has the best
    validation AUC (never chosen), and per source the strategy with the better seed-mean val_auc wins."""
    rows = []
    aucs = {"heart:cleveland": {"linear-probe": (0.80, 0.90), "full": (0.70, 0.95)},
            "heart:va": {"linear-probe": (0.75, 0.70), "full": (0.78, 0.80)},
            "heart:switzerland": {"linear-probe": (0.60, 0.60), "full": (0.55, 0.99)}}
    for source, methods in aucs.items():
        for strategy, (val, test) in methods.items():
            for seed, jitter in ((0, -0.01), (1, 0.01)):
                rows.append(dict(target=target, source=source, backbone="mlp", strategy=strategy, budget=40,
                                 seed=seed, val_auc=val + jitter, val_log_loss=0.5, test_auc=test + jitter))
        rows.append(dict(target=target, source=source, backbone="mlp", strategy="target-only", budget=40, seed=0,
                         val_auc=0.99, val_log_loss=0.1, test_auc=0.5))
    rows.append(dict(target=target, source="heart:va", backbone="mlp", strategy="full", budget=20, seed=0,
                     val_auc=0.99, val_log_loss=0.1, test_auc=0.1))
    folder.mkdir()
    pd.DataFrame(rows).to_csv(folder / "results.csv", index=False)
    (folder / "config.yaml").write_text(f"name: g\nbackbones: [mlp]\ntrain: {{source_epochs: {FAST['source_epochs']}}}\n")
    return folder


def test_grid_aucs_are_chosen_on_validation_never_on_test(tmp_path):
    grid = grid_aucs(write_grid(tmp_path / "exp"), "heart:hungary", "40")
    assert grid["aucs"] == {"heart:cleveland": (pytest.approx(0.90), "linear-probe/mlp", 2),
                            "heart:va": (pytest.approx(0.80), "full/mlp", 2),
                            "heart:switzerland": (pytest.approx(0.60), "linear-probe/mlp", 2)}
    assert grid["probe"] == {"heart:cleveland": (pytest.approx(0.90), "linear-probe/mlp", 2),  # va's probe too
                             "heart:va": (pytest.approx(0.70), "linear-probe/mlp", 2),
                             "heart:switzerland": (pytest.approx(0.60), "linear-probe/mlp", 2)}
    with pytest.raises(MedTransferError, match="no cell of target heart:va"):
        grid_aucs(tmp_path / "exp", "heart:va", 40)
    with pytest.raises(MedTransferError, match="its budgets: 20, 40"):
        grid_aucs(tmp_path / "exp", "heart:hungary", "5%")
    with pytest.raises(MedTransferError, match="no results.csv"):
        grid_aucs(tmp_path, "heart:hungary", 40)


def test_rank_against_a_grid_reports_kendalls_tau(tmp_path):
    exp = write_grid(tmp_path / "exp")
    result = api.rank("heart:hungary", SOURCES, against=exp, out=tmp_path / "r", **FAST)
    aucs = {"heart:cleveland": 0.90, "heart:va": 0.80, "heart:switzerland": 0.60}
    assert {s.source: s.grid_auc for s in result.scores} == pytest.approx(aucs)
    for name in ("logme", "leep", "nce"):
        scores = [getattr(s, name) for s in result.scores]
        expected = kendalltau(scores, [aucs[s.source] for s in result.scores])
        assert result.against["tau"][name]["tau"] == pytest.approx(expected[0])
        assert result.against["tau"][name]["n"] == 3
        probe = {"heart:cleveland": 0.90, "heart:va": 0.70, "heart:switzerland": 0.60}
        expected = kendalltau(scores, [probe[s.source] for s in result.scores])
        assert result.against["tau_probe"][name]["tau"] == pytest.approx(expected[0])
    assert {s.source: s.probe_auc for s in result.scores} == pytest.approx(probe)
    report = (tmp_path / "r" / "rank.md").read_text()
    assert "Kendall's tau" in report and "tau with the linear-probe AUC" in report


def test_grid_choice_key_is_validation_auc_then_log_loss_then_name():
    from medtransfer.evaluation import grid_choice_key
    keys = {"b": grid_choice_key(0.9, 0.3, "b"), "a": grid_choice_key(0.9, float("nan"), "a"),
            "c": grid_choice_key(0.8, 0.1, "c"), "d": grid_choice_key(0.9, 0.3, "d")}
    assert sorted(keys, key=keys.get) == ["b", "d", "a", "c"]  # unrecorded log-loss ranks last among the tied


def test_rank_against_a_grid_takes_the_grids_source_settings_and_refuses_others(tmp_path):
    from medtransfer.pipeline.rank import RankRequest, as_grid_ran
    exp = write_grid(tmp_path / "exp")
    (exp / "config.yaml").write_text("name: g\nbackbones: [mlp]\ntrain: {source_epochs: 7, image_size: 64}\n")
    request = as_grid_ran(RankRequest("heart:hungary", SOURCES), exp)
    assert (request.source_epochs, request.image_size, request.backbone) == (7, 64, "mlp")
    assert as_grid_ran(RankRequest("heart:hungary", SOURCES, source_epochs=7), exp).source_epochs == 7
    with pytest.raises(MedTransferError, match="--source-epochs 3, but the experiment .* source epochs 7"):
        as_grid_ran(RankRequest("heart:hungary", SOURCES, source_epochs=3), exp)
    with pytest.raises(MedTransferError, match="--backbone linear, but the experiment .* ran mlp"):
        as_grid_ran(RankRequest("heart:hungary", SOURCES, backbone="linear"), exp)
    (exp / "config.yaml").write_text("name: g\nbackbones: [mlp, linear]\n")
    with pytest.raises(MedTransferError, match="--image-size 64, but .* image size its default"):
        as_grid_ran(RankRequest("heart:hungary", SOURCES, image_size=64), exp)
    assert as_grid_ran(RankRequest("heart:hungary", SOURCES), exp).backbone is None  # two ran: none imposed
    (exp / "config.yaml").unlink()  # results.csv alone cannot say which source models the grid fine-tuned
    with pytest.raises(MedTransferError, match="config.yaml is missing or unreadable"):
        as_grid_ran(RankRequest("heart:hungary", SOURCES), exp)
