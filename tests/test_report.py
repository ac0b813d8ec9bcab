"""The experiment report: paired AUC difference, self-contained HTML/markdown, plots that decode in a browser.
(How the reported method is chosen, on validation only, is tested in test_report_selection.py.)"""

import json
import re

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from medtransfer.evaluation import auc_paired_difference
from medtransfer.reporting.experiment import browser_check, find_chromium, write_report

N_TEST = 120


def _probs(y, signal, rng, classes):
    """Class probabilities whose quality grows with ``signal`` (softmax of noisy one-hot logits)."""
    logits = rng.normal(size=(len(y), classes)) + signal * np.eye(classes)[y]
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def _write_cell(exp, row, y, p, classes, rng, predicted=None, y_val=None):
    """A cell folder with predictions.csv (val and test rows); ``predicted``: the test decisions (class
    names) as a run at its operating point writes them, or None for a folder from before they were saved;
    ``y_val``: the validation labels (default: 30 drawn at random)."""
    run_dir = exp / "cells" / row["cell_id"]
    run_dir.mkdir(parents=True)
    frames = []
    drawn = rng.integers(0, len(classes), 30)
    y_val = drawn if y_val is None else np.asarray(y_val, dtype=int)
    for split, ys, ps in (("val", y_val, _probs(y_val, 0.5, rng, len(classes))), ("test", y, p)):
        f = pd.DataFrame(ps, columns=[f"prob_{c}" for c in classes])
        f.insert(0, "label", ys)
        f.insert(0, "index", np.arange(len(ps)))
        f.insert(0, "split", split)
        if predicted is not None:
            f["predicted"] = list(predicted) if split == "test" else [classes[k] for k in ps.argmax(1)]
        frames.append(f)
    pd.concat(frames).to_csv(run_dir / "predictions.csv", index=False)
    row["run_dir"] = f"cells/{row['cell_id']}"


def make_experiment(exp, with_second_target=True):
    """A fake EXP dir: heart:hungary (binary, scratch/full/source-only, 2 budgets, 2 seeds, one failed cell)
    and optionally medmnist:organamnist-like multiclass target with a single seed and no scratch."""
    rng = np.random.default_rng(0)
    exp.mkdir(parents=True, exist_ok=True)
    rows = []
    plan = [("heart:hungary", "binary", ["neg", "pos"], [("scratch", "none", 0.3), ("full", "heart:cleveland", 2.5),
                                                         ("source-only", "heart:cleveland", 1.0)], [0, 1])]
    if with_second_target:
        imagenet = "imagenet:efficientnet_lite0"
        plan.append(("medmnist:bloodmnist", "multiclass", ["a", "b", "c"],
                     [("full", imagenet, 2.0), ("linear-probe", imagenet, 1.0)], [0]))
    for target, task, classes, strategies, seeds in plan:
        y = rng.integers(0, len(classes), N_TEST)
        for strategy, source, signal in strategies:
            for budget, n_labels in (("10", 10), ("all", 150)):
                for seed in seeds:
                    cell = f"{target.split(':')[1]}_{strategy}_{budget}_s{seed}"
                    p = _probs(y, signal * (1.5 if budget == "all" else 1.0), rng, len(classes))
                    auc = roc_auc_score(y, p[:, 1]) if task == "binary" else roc_auc_score(y, p, multi_class="ovr")
                    row = dict(cell_id=cell, target=target, source=source, strategy=strategy,
                               backbone="mlp" if task == "binary" else "effnet", budget=budget,
                               n_labels=0 if strategy == "source-only" else n_labels,
                               seed=seed, task=task, test_auc=auc, test_auc_lo=auc - 0.05, test_auc_hi=auc + 0.05,
                               val_auc=auc, seconds=1.0)
                    _write_cell(exp, row, y, p, classes, rng)
                    rows.append(row)
    rows.append(dict(cell_id="hungary_full_10_s2", target="heart:hungary", source="heart:cleveland", backbone="mlp",
                     strategy="full", budget="10", n_labels=10, seed=2, task="binary", test_auc=np.nan,
                     run_dir="cells/hungary_full_10_s2"))
    pd.DataFrame(rows).to_csv(exp / "results.csv", index=False)
    (exp / "config.yaml").write_text("name: demo  # <exact> & verbatim\ntargets: [heart:hungary]\nseeds: [0, 1]\n")
    (exp / "environment.json").write_text(json.dumps({"python": "3.11", "packages": {"torch": "2.4"}, "device": "cpu"}))
    return exp


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    exp = make_experiment(tmp_path_factory.mktemp("exp") / "EXP")
    html_path, md_path = write_report(exp, n_boot=300)
    return exp, html_path, md_path


def test_auc_paired_difference_matches_hand_computation():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    good = [_probs(y, 2.0, rng, 2) for _ in range(2)]
    bad = [_probs(y, 0.2, rng, 2)[:, 1] for _ in range(3)]  # (N,) positive-class probabilities are accepted too
    res = auc_paired_difference(y, good, bad, n_boot=500, seed=0)
    hand = np.mean([roc_auc_score(y, p[:, 1]) for p in good]) - np.mean([roc_auc_score(y, q) for q in bad])
    assert res["value"] == pytest.approx(hand)
    assert res["ci"][0] < res["value"] < res["ci"][1]
    assert res["ci"][0] > 0 and res["p"] < 0.01
    assert res == auc_paired_difference(y, good, bad, n_boot=500, seed=0)  # seeded

    same = auc_paired_difference(y, good, good, n_boot=500, seed=0)
    assert same["value"] == 0 and same["ci"] == [0.0, 0.0] and same["p"] > 0.2


def test_auc_paired_difference_multiclass_and_shape_check():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 150)
    a, b = _probs(y, 2.0, rng, 3), _probs(y, 0.5, rng, 3)
    res = auc_paired_difference(y, [a], [b], n_boot=200, task="multiclass")
    hand = roc_auc_score(y, a, multi_class="ovr") - roc_auc_score(y, b, multi_class="ovr")
    assert res["value"] == pytest.approx(hand)
    with pytest.raises(ValueError, match="empty"):
        auc_paired_difference(y, [], [b])


def test_report_files_are_self_contained(report):
    exp, html_path, md_path = report
    assert html_path == exp / "report.html" and md_path == exp / "report.md"
    page = html_path.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page)
    assert "http://" not in page and "https://" not in page
    # 2 targets x (1 curve + diagnostics at the smallest and largest budget)
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64,[A-Za-z0-9+/=]+"', page)) == 6
    assert "name: demo  # &lt;exact&gt; &amp; verbatim" in page  # config shown verbatim, escaped
    assert "packages.torch" in page and "2.4" in page
    assert "http" not in md_path.read_text()


def test_markdown_names_best_method_and_paired_difference(report):
    exp, _, md_path = report
    md = md_path.read_text()
    assert "full ← cleveland" in md and "source-only ← cleveland" in md
    assert "Budget 10: validation-chosen method full ← cleveland (validation AUC" in md
    # the reported difference is the paired difference of seed-mean AUCs on the same test samples
    preds = {c: pd.read_csv(exp / "cells" / c / "predictions.csv").query("split == 'test'")
             for c in ("hungary_full_10_s0", "hungary_full_10_s1", "hungary_scratch_10_s0", "hungary_scratch_10_s1")}
    y = preds["hungary_full_10_s0"]["label"].to_numpy()
    prob = {c: f[["prob_neg", "prob_pos"]].to_numpy() for c, f in preds.items()}
    d = auc_paired_difference(y, [prob["hungary_full_10_s0"], prob["hungary_full_10_s1"]],
                              [prob["hungary_scratch_10_s0"], prob["hungary_scratch_10_s1"]], n_boot=300)
    assert d["value"] > 0.2 and d["ci"][0] > 0
    assert f"Against scratch: ΔAUC {d['value']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]" in md
    assert "significant (the 95% CI excludes zero; full ← cleveland is better)" in md
    assert "Against source-only ← cleveland" in md
    assert "No target-only or source-model cell at this budget, so no comparison against those baselines." in md
    # second target: single seed, no baseline at all -> said plainly; the failed cell is listed
    assert ("No scratch, target-only, source-only or source-model cell at this budget, so no comparison against "
            "those baselines.") in md
    assert "imagenet:efficientnet_lite0" in md
    assert "hungary_full_10_s2" in md and "no test AUC" in md


def test_report_survives_only_failed_cells(tmp_path):
    exp = tmp_path / "EXP"
    exp.mkdir()
    pd.DataFrame([dict(cell_id="c1", target="heart:va", source="none", backbone="mlp", strategy="scratch",
                       budget="10", n_labels=10, seed=0, task="binary", test_auc=np.nan, run_dir="cells/c1")]
                 ).to_csv(exp / "results.csv", index=False)
    html_path, md_path = write_report(exp, n_boot=10)
    assert "c1" in md_path.read_text() and "config.yaml not found" in md_path.read_text()
    assert "<img" not in html_path.read_text()


def test_plots_decode_in_headless_chromium(report):
    if find_chromium() is None:
        pytest.skip("no chromium/chromium-browser binary on PATH (CI installs it); browser check not run")
    _, html_path, _ = report
    assert browser_check(html_path) == 6


def test_baselines_and_references_come_from_the_strategy_tags(tmp_path):
    """source-model is tagged a baseline, so it is never chosen even when it scores highest on validation;
    each kind of reference baseline gets its own comparison; an unknown strategy counts as a transfer."""
    rng = np.random.default_rng(3)
    exp = tmp_path / "EXP"
    exp.mkdir()
    y, rows = rng.integers(0, 2, N_TEST), []
    for strategy, signal, val in (("source-only", 1.0, 0.7), ("source-model", 3.0, 0.99), ("dann", 2.0, 0.9),
                                  ("mystery", 0.5, 0.6)):
        p = _probs(y, signal, rng, 2)
        row = dict(cell_id=f"va_{strategy}", target="heart:va", source="heart:cleveland", strategy=strategy,
                   backbone="mlp", budget="10", n_labels=10, seed=0, task="binary", test_auc=roc_auc_score(y, p[:, 1]),
                   val_auc=val)
        _write_cell(exp, row, y, p, ["neg", "pos"], rng)
        rows.append(row)
    pd.DataFrame(rows).to_csv(exp / "results.csv", index=False)
    md = write_report(exp, n_boot=50)[1].read_text()
    assert "Budget 10: validation-chosen method dann ← cleveland" in md
    assert "Baselines (source-only, source-model) are never chosen" in md
    assert "Δ vs source-only [95% CI]" in md and "Δ vs source-model [95% CI]" in md
    assert "Against source-only ← cleveland" in md and "Against source-model ← cleveland" in md
    assert "No scratch or target-only cell at this budget, so no comparison against those baselines." in md


def test_metrics_table_block_formats_like_the_cli():
    from medtransfer.reporting.blocks import metrics_table, to_markdown

    table = metrics_table({"auc": {"value": 0.91234, "ci": [0.8, 0.95678]}}, "run on data (test)")
    assert table.header == ["metric", "value", "95% CI"] and table.title == "run on data (test)"
    assert table.rows == [["auc", "0.9123", "[0.8000, 0.9568]"]]
    assert "| auc | 0.9123 | [0.8000, 0.9568] |" in to_markdown("t", [table])
