"""The experiment report chooses the method it reports on validation, never on test, and says what the test
split and the test decisions were: the reference baselines by kind, the test split's size and prevalence,
one-class decisions, sensitivity and specificity at the operating point; older folders read "not recorded".
Experiment folders are synthetic (the helpers of test_report.py); results.csv columns as docs/spec."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator
from sklearn.metrics import roc_auc_score

from medtransfer.evaluation import auc_paired_difference
from medtransfer.experiment.grid import Cell
from medtransfer.experiment.store import row as results_row
from medtransfer.reporting.experiment import (NO_SOURCE, SOURCE_DATA_ONLY, SOURCE_MODEL_ONLY, TARGET_ONLY,
                                              _label_axis, write_report)
from test_report import N_TEST, _probs, _write_cell

BINARY = ("neg", "pos")


class Grid:
    """A synthetic experiment folder: one cell per call, results.csv written by `report`."""

    def __init__(self, tmp_path, seed=0):
        self.exp, self.rng, self.rows, self.probs = tmp_path / "EXP", np.random.default_rng(seed), [], {}
        self.exp.mkdir()

    def cell(self, y, strategy, signal, *, source="heart:cleveland", budget="20", seed=0, split_seed=0,
             classes=BINARY, target="heart:va", decided=True, backbone="mlp", y_val=None, **columns):
        """``decided``: True writes argmax decisions, a list writes those, None none (an older folder);
        ``y_val``: the cell's validation labels (default: 30 at random)."""
        p = _probs(y, signal, self.rng, len(classes))
        task = "binary" if len(classes) == 2 else "multiclass"
        auc = roc_auc_score(y, p[:, 1]) if task == "binary" else roc_auc_score(y, p, multi_class="ovr")
        suffix = "" if backbone == "mlp" else f"_{backbone}"
        row = dict(cell_id=f"{target.split(':')[1]}_{strategy}_{budget}_s{seed}{suffix}", target=target,
                   source=source, strategy=strategy, backbone=backbone, budget=budget, n_labels=int(budget) if budget.isdigit() else 0,
                   seed=seed, split_seed=split_seed, task=task, test_auc=auc, **columns)
        predicted = [classes[k] for k in p.argmax(1)] if decided is True else decided
        _write_cell(self.exp, row, y, p, list(classes), self.rng, predicted, y_val)
        self.rows.append(row)
        self.probs[row["cell_id"]] = p
        return p

    def report(self, n_boot=200) -> str:
        pd.DataFrame(self.rows).to_csv(self.exp / "results.csv", index=False)
        return write_report(self.exp, n_boot=n_boot)[1].read_text()


def _section(md: str, heading: str) -> str:
    """The markdown of one level-3 section (up to the next heading)."""
    start = md.index(f"### {heading}")
    ends = [i for i in (md.find("\n## ", start + 1), md.find("\n### ", start + 1)) if i > 0]
    return md[start:min(ends) if ends else len(md)]


# ----------------------------------------------------------------------------- the choice


def test_the_validation_best_is_reported_and_the_test_best_never_named_as_chosen(tmp_path):
    """full is far the best on test but worse on validation; head is chosen. scratch has the best validation
    AUC of all but is a baseline, so it is never chosen either."""
    grid = Grid(tmp_path)
    y = grid.rng.integers(0, 2, N_TEST)
    for seed in (0, 1):
        grid.cell(y, "full", 3.0, seed=seed, val_auc=0.70, val_log_loss=0.60)
        grid.cell(y, "head", 0.8, seed=seed, val_auc=0.80, val_log_loss=0.55)
        grid.cell(y, "scratch", 0.3, source="none", seed=seed, val_auc=0.95, val_log_loss=0.30)
    md = grid.report()
    tests = pd.DataFrame(grid.rows).groupby("strategy")["test_auc"].mean()
    assert tests["full"] > tests["head"] + 0.1  # full really is the test-best transfer method

    assert "Budget 20: validation-chosen method head ← cleveland (validation AUC 0.800)" in md
    assert "validation-chosen method full" not in md and "validation-chosen method scratch" not in md
    table = _section(md, "Validation-chosen method against the baselines")
    assert re.search(r"^\| 20 \| 20 \| head ← cleveland \| 0\.800 \| 0\.550 \|", table, re.M)
    assert "| full ← cleveland |" not in table
    assert "confusion matrix of head ← cleveland at budget 20" in md and "confusion matrix of full" not in md
    assert "chosen on validation, never on test" in md and "The test split is reported once" in md
    # the comparison is the chosen method's: head against scratch, paired on the same test patients
    head = [grid.probs[f"va_head_20_s{s}"] for s in (0, 1)]
    scratch = [grid.probs[f"va_scratch_20_s{s}"] for s in (0, 1)]
    d = auc_paired_difference(y, head, scratch, n_boot=200)
    assert f"Against scratch: ΔAUC {d['value']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]" in md
    html = (grid.exp / "report.html").read_text()
    assert "validation-chosen method head ← cleveland" in html and "validation-chosen method full" not in html


def test_a_tie_on_validation_auc_goes_to_the_lower_validation_log_loss(tmp_path):
    grid = Grid(tmp_path)
    y = grid.rng.integers(0, 2, N_TEST)
    grid.cell(y, "full", 3.0, val_auc=0.8, val_log_loss=0.50)  # first by name and best on test
    grid.cell(y, "partial", 1.0, val_auc=0.8, val_log_loss=0.40)
    grid.cell(y, "l2-sp", 2.0, val_auc=0.8)  # no log-loss recorded: loses a tie
    md = grid.report()
    assert "validation-chosen method partial ← cleveland (validation AUC 0.800; tied on validation AUC with" in md
    assert "chosen by the lower validation log-loss (0.400))" in md
    assert "validation-chosen method full" not in md and "validation-chosen method l2-sp" not in md


def test_methods_without_a_validation_score_are_not_chosen(tmp_path):
    """At budget 20 the test-best method recorded no validation AUC; at budget 0 no method has one."""
    grid = Grid(tmp_path)
    y = grid.rng.integers(0, 2, N_TEST)
    grid.cell(y, "full", 3.0, val_auc=np.nan)
    grid.cell(y, "head", 0.5, val_auc=0.6)
    grid.cell(y, "head", 0.4, budget="10", val_auc=0.55)
    grid.cell(y, "dann", 2.5, budget="0", val_auc=np.nan)  # no labelled validation examples at budget 0
    grid.cell(y, "source-only", 1.0, budget="0", val_auc=np.nan)
    md = grid.report()
    assert "Budget 20: validation-chosen method head ← cleveland" in md
    assert ("Budget 0: no transfer method has a validation score (not recorded: no labelled validation examples "
            "at this budget") in md
    assert "validation-chosen method full" not in md and "validation-chosen method dann" not in md
    assert "at budget 0." not in md  # no diagnostics figure of an unchosen method
    # the smallest and largest budget with a chosen method get figures, though budget 0 sorts last
    assert "confusion matrix of head ← cleveland at budget 10" in md
    assert "confusion matrix of head ← cleveland at budget 20" in md


def test_an_older_results_csv_without_the_new_columns_still_reports(tmp_path):
    """No val_log_loss, positive, threshold, calibration, n_test or degenerate column, no decided classes:
    the report chooses on val_auc and says "not recorded" for the rest instead of guessing."""
    grid = Grid(tmp_path)
    y = grid.rng.integers(0, 2, N_TEST)
    for seed in (0, 1):
        grid.cell(y, "full", 2.0, seed=seed, val_auc=0.9, decided=None)
        grid.cell(y, "scratch", 0.5, source="none", seed=seed, val_auc=0.6, decided=None)
    md = grid.report()
    assert "Budget 20: validation-chosen method full ← cleveland (validation AUC 0.900)" in md
    point = _section(md, "Operating point of the validation-chosen method")
    assert "| 20 | full ← cleveland | not recorded | not recorded | not recorded | not recorded | not recorded | " \
           "not recorded |" in point
    assert "not recorded (no positive class recorded)" in _section(md, "Test split")
    assert "Whether the test decisions fell in one class is not recorded for 4 of 4 cells" in md


def test_an_old_results_csv_without_any_validation_column_chooses_nothing(tmp_path):
    grid = Grid(tmp_path)
    y = grid.rng.integers(0, 2, N_TEST)
    grid.cell(y, "full", 2.0, decided=None)
    grid.cell(y, "scratch", 0.5, source="none", decided=None)
    md = grid.report()
    assert "Budget 20: no transfer method has a validation score (not recorded" in md
    assert "validation-chosen method full" not in md
    assert "| not recorded |" in _section(md, "Validation AUC")


# ----------------------------------------------------------------------------- the four kinds of reference


def test_the_four_kinds_of_reference_baseline(tmp_path):
    grid = Grid(tmp_path)
    y = grid.rng.integers(0, 2, N_TEST)
    grid.cell(y, "full", 2.0, val_auc=0.9)
    grid.cell(y, "scratch", 0.5, source="none", val_auc=0.6)
    grid.cell(y, "target-only", 0.7, source="none", val_auc=0.7)
    grid.cell(y, "source-only", 1.0, val_auc=0.7)
    grid.cell(y, "source-model", 1.2, val_auc=0.7)
    grid.cell(y, "pooled", 1.5, val_auc=0.8)  # a baseline, but of none of the four kinds
    md = grid.report()
    for name in ("scratch", "target-only", "source-only", "source-model"):
        assert f"Δ vs {name} [95% CI]" in md
    for other in ("scratch", "target-only", "source-only ← cleveland", "source-model ← cleveland"):
        assert f"Against {other}: ΔAUC" in md
    assert "Against pooled" not in md and "so no comparison" not in md


def test_a_missing_kind_of_reference_is_a_dash_and_a_sentence(tmp_path):
    grid = Grid(tmp_path)
    y = grid.rng.integers(0, 2, N_TEST)
    grid.cell(y, "full", 2.0, val_auc=0.9)
    grid.cell(y, "scratch", 0.5, source="none", val_auc=0.6)
    md = grid.report()
    assert ("No target-only, source-only or source-model cell at this budget, so no comparison against those "
            "baselines.") in md
    line = next(r for r in md.splitlines() if r.startswith("| 20 | 20 | full ← cleveland"))
    assert line.endswith(" | – | – | – | – | – | – |") and "| +" in line  # only the scratch pair is filled


def test_reference_kinds_are_defined_by_tags_not_names():
    def tags(model, data, labels, backbone):
        return type("Tagged", (), dict(needs_source_model=model, needs_source_data=data, needs_labels=labels,
                                       uses_backbone=backbone))

    kinds = (NO_SOURCE, TARGET_ONLY, SOURCE_DATA_ONLY, SOURCE_MODEL_ONLY)
    assert [k.fits(tags(False, False, True, True)) for k in kinds] == [True, False, False, False]
    assert [k.fits(tags(False, False, True, False)) for k in kinds] == [False, True, False, False]
    assert [k.fits(tags(False, True, False, False)) for k in kinds] == [False, False, True, False]
    assert [k.fits(tags(True, False, False, True)) for k in kinds] == [False, False, False, True]
    assert not any(k.fits(tags(False, True, True, False)) for k in kinds)  # pooled: source data and labels
    assert not any(k.matches("full") or k.matches("dann") for k in kinds)  # transfer methods are no baseline
    assert [k.matches(n) for k, n in zip(kinds, ("scratch", "target-only", "source-only", "source-model"))] == \
        [True] * 4


# ----------------------------------------------------------------------------- the test split and warnings


def test_test_split_table_gives_n_and_prevalence_and_warns_about_rare_classes(tmp_path):
    """Repeated hold-out: split 0 holds 8 positives of 60 (a warning), split 1 holds 30."""
    grid = Grid(tmp_path)
    y0 = np.array([1] * 8 + [0] * 52)
    y1 = np.array([1] * 30 + [0] * 30)
    for seed, y in ((0, y0), (1, y1)):
        for strategy, source in (("full", "heart:cleveland"), ("scratch", "none")):
            grid.cell(y, strategy, 1.0, source=source, seed=seed, split_seed=seed, val_auc=0.8, positive="pos")
    md = grid.report()
    table = _section(md, "Test split")
    assert "| test split (split_seed) | n | neg | pos | prevalence of the positive class |" in table
    assert "| 0 | 60 | 52 | 8 | 13.3% (pos) |" in table and "| 1 | 60 | 30 | 30 | 50.0% (pos) |" in table
    warnings = _section(md, "Warnings")
    assert "Test split 0 has only 8 test examples of 'pos' (fewer than 10)" in warnings
    assert "Test split 1 has" not in warnings


def test_prevalence_is_of_the_recorded_positive_class_even_when_it_comes_first(tmp_path):
    grid = Grid(tmp_path)
    y = np.array([0] * 45 + [1] * 75)  # 45 "disease" (class 0)
    grid.cell(y, "full", 1.0, classes=("disease", "healthy"), val_auc=0.8, positive="disease")
    md = grid.report()
    assert "| 0 | 120 | 45 | 75 | 37.5% (disease) |" in _section(md, "Test split")
    assert "Warnings" not in md


def test_one_class_decisions_are_warned_with_method_budget_and_seeds(tmp_path):
    """full: results.csv says seed 0 is degenerate; head: no such column value, its predictions.csv shows
    seed 1 deciding 'pos' only; scratch decides both classes."""
    grid = Grid(tmp_path)
    y = grid.rng.integers(0, 2, N_TEST)
    for seed in (0, 1):
        grid.cell(y, "full", 2.0, seed=seed, val_auc=0.9, decided=["neg"] * N_TEST if seed == 0 else True,
                  degenerate=seed == 0)
        grid.cell(y, "head", 1.0, seed=seed, val_auc=0.8, decided=["pos"] * N_TEST if seed == 1 else True)
        grid.cell(y, "scratch", 0.5, source="none", seed=seed, val_auc=0.6, degenerate=False)
    md = grid.report()
    warnings = _section(md, "Warnings")
    assert "full ← cleveland at budget 20: every test decision fell in one class (all neg) in seed 0," in warnings
    assert "head ← cleveland at budget 20: every test decision fell in one class (all pos) in seed 1," in warnings
    assert "scratch at budget" not in warnings and "not recorded" not in warnings


def test_a_choice_made_on_a_thin_validation_split_is_warned(tmp_path):
    """Budget 5: every seed's validation split holds 1 'pos' in 5, and the chosen method ties with another at
    validation AUC 1.000, as BreastMNIST at 1% does. Budget 40: 20 of each class, no warning."""
    grid = Grid(tmp_path)
    y = grid.rng.integers(0, 2, N_TEST)
    thin, enough = [0, 0, 1, 0, 0], [0, 1] * 20
    for seed in (0, 1):
        for budget, y_val in (("5", thin), ("40", enough)):
            grid.cell(y, "full", 1.0, seed=seed, budget=budget, y_val=y_val, val_auc=1.0, val_log_loss=0.3)
            grid.cell(y, "head", 1.0, seed=seed, budget=budget, y_val=y_val, val_auc=1.0, val_log_loss=0.4)
            grid.cell(y, "scratch", 0.5, source="none", seed=seed, budget=budget, y_val=y_val, val_auc=0.9)
    md = grid.report()
    warnings = _section(md, "Warnings")
    assert ("Budget 5: full ← cleveland was chosen on validation splits with as few as 1 validation example of "
            "'pos' (5 in all); 1 other candidate tied with it on validation AUC.") in warnings
    assert "close to chance" in warnings and "Budget 40" not in warnings
    assert "validation-chosen method full ← cleveland (validation AUC 1.000; tied on validation AUC with head ← " \
           "cleveland, chosen by the lower validation log-loss (0.300)) on a thin validation split (see Warnings)" in md
    assert md.count("on a thin validation split") == 1  # budget 40's sentence has no such clause


def test_the_thinnest_seed_is_named_and_older_folders_without_validation_rows_say_nothing(tmp_path):
    grid = Grid(tmp_path)
    y = grid.rng.integers(0, 2, N_TEST)
    for seed, y_val in ((0, [0, 1] * 20), (1, [0] * 30 + [1] * 3)):
        grid.cell(y, "full", 1.0, seed=seed, y_val=y_val, val_auc=0.9)
        grid.cell(y, "full", 1.0, seed=seed, budget="all", y_val=[], val_auc=0.9)  # no validation rows saved
    warnings = _section(grid.report(), "Warnings")
    assert "Budget 20: full ← cleveland was chosen on validation splits with as few as 3 validation examples of " \
           "'pos' (33 in all)." in warnings
    assert "Budget all" not in warnings


# ----------------------------------------------------------------------------- the operating point


def _rate(y, predicted, positive_index, positive):
    hits = [(np.asarray(p) == positive) & (y == positive_index) for p in predicted]
    return np.mean([h.sum() / (y == positive_index).sum() for h in hits])


def test_sensitivity_and_specificity_at_the_operating_point_of_the_chosen_method(tmp_path):
    """The positive class is class 0 here, so a report that took index 1 would print the specificity."""
    grid = Grid(tmp_path)
    classes = ("disease", "healthy")
    y = grid.rng.integers(0, 2, N_TEST)
    decided = {}
    for seed, threshold in ((0, 0.31), (1, 0.28)):
        p = _probs(y, 1.5, np.random.default_rng(10 + seed), 2)
        decided[seed] = np.where(p[:, 0] > threshold, "disease", "healthy")
        grid.cell(y, "full", 1.5, seed=seed, classes=classes, decided=list(decided[seed]), val_auc=0.85,
                  val_log_loss=0.4, positive="disease", threshold_rule="sens=0.90", threshold=threshold,
                  calibration="temperature", n_test=N_TEST, degenerate=False)
    md = grid.report()
    sens = _rate(y, decided.values(), 0, "disease")
    spec = np.mean([((d == "healthy") & (y == 1)).sum() / (y == 1).sum() for d in decided.values()])
    line = next(r for r in _section(md, "Operating point").splitlines() if r.startswith("| 20 |"))
    assert line.startswith("| 20 | full ← cleveland | disease | sens=0.90 | 0.310, 0.280 | temperature | ")
    cells = line.strip("| ").split(" | ")
    for text, value in ((cells[6], sens), (cells[7], spec)):
        point, lo, hi = map(float, re.match(r"([\d.]+) \[([\d.]+), ([\d.]+)\]", text).groups())
        assert point == pytest.approx(value, abs=5e-4) and lo <= point <= hi and hi - lo > 0.01


def test_multiclass_operating_point_is_the_macro_seed_mean_of_results_csv(tmp_path):
    grid = Grid(tmp_path)
    y = grid.rng.integers(0, 3, N_TEST)
    for seed, sens, spec in ((0, 0.6, 0.8), (1, 0.7, 0.9)):
        grid.cell(y, "full", 1.5, seed=seed, classes=("a", "b", "c"), target="medmnist:bloodmnist", val_auc=0.8,
                  threshold_rule="argmax", test_sensitivity=sens, test_specificity=spec)
    md = grid.report()
    line = next(r for r in _section(md, "Operating point").splitlines() if r.startswith("| 20 |"))
    assert line == ("| 20 | full ← cleveland | – | argmax | – | not recorded | 0.650 (macro, seed mean) | "
                    "0.850 (macro, seed mean) |")
    assert "| 0 | 120 |" in _section(md, "Test split")


# ----------------------------------------------------------------------------- the data-efficiency axis


@pytest.mark.parametrize("counts, scale", [([10, 20, 150], "log"), ([10, 20, 50], "linear")])
def test_curves_have_the_label_counts_as_ticks(counts, scale):
    ax = Figure().subplots()
    ax.plot(counts, [0.6, 0.7, 0.8])
    note = _label_axis(ax, counts)
    assert ax.get_xscale() == scale and note == (" (log scale)" if scale == "log" else "")
    assert list(ax.get_xticks()) == counts
    assert [t.get_text() for t in ax.get_xticklabels()] == [str(c) for c in counts]
    assert isinstance(ax.xaxis.get_minor_locator(), NullLocator)


# ----------------------------------------------------------------------------- results.csv rows


def _folder(tmp_path, metrics, predictions=None):
    out = tmp_path / "exp"
    folder = out / "cells" / "va_full_20_s0"
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "config.json").write_text(json.dumps({"n_train_labels": 20, "task": "binary", "backbone": "mlp"}))
    if predictions is not None:
        predictions.to_csv(folder / "predictions.csv", index=False)
    return out, folder


CELL = Cell("heart:va", "heart:cleveland", "mlp", "full", "20", 0)


def test_results_row_records_validation_and_the_operating_point(tmp_path):
    m = lambda v: {"value": v, "ci": [v - 0.1, v + 0.1]}  # noqa: E731
    metrics = {"val": {"auc": m(0.8), "log_loss": m(0.45), "balanced_acc": m(0.7)},
               "test": {"auc": m(0.75), "prevalence": m(0.4), "sensitivity": m(0.9)}, "fit": {"total_seconds": 3},
               "operating_point": {"rule": "sens=0.90", "threshold": 0.31, "positive": "disease", "chosen_on": "val"},
               "calibration": {"method": "temperature", "params": {"temperature": 1.7}},
               "test_counts": {"n": 120, "per_class": {"no disease": 70, "disease": 50}},
               "predicted_counts": {"no disease": 120, "disease": 0}}
    out, folder = _folder(tmp_path, metrics)
    row = results_row(CELL, folder, out)
    assert row["val_auc"] == 0.8 and row["val_log_loss"] == 0.45 and row["val_balanced_acc"] == 0.7
    assert (row["positive"], row["threshold_rule"], row["threshold"]) == ("disease", "sens=0.90", 0.31)
    assert row["calibration"] == "temperature" and row["n_test"] == 120 and row["degenerate"] is True
    assert row["test_prevalence"] == 0.4 and row["test_prevalence_lo"] == pytest.approx(0.3)
    assert row["test_sensitivity_hi"] == pytest.approx(1.0)
    metrics["predicted_counts"] = {"no disease": 100, "disease": 20}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    assert results_row(CELL, folder, out)["degenerate"] is False


def test_results_row_of_an_older_folder_leaves_the_new_columns_empty(tmp_path):
    metrics = {"val": {"auc": {"value": 0.8, "ci": [0.7, 0.9]}}, "test": {"auc": {"value": 0.7, "ci": [0.6, 0.8]}},
               "fit": {}}
    test = pd.DataFrame({"split": ["val"] + ["test"] * 5, "index": [0, 0, 1, 2, 3, 4], "label": [0, 1, 0, 1, 0, 1],
                         "prob_a": 0.5, "prob_b": 0.5})
    out, folder = _folder(tmp_path, metrics, test)
    row = results_row(CELL, folder, out)
    assert row["val_auc"] == 0.8 and row["val_log_loss"] is None and row["val_balanced_acc"] is None
    assert row["positive"] is None and row["threshold_rule"] is None and row["threshold"] is None
    assert row["calibration"] == "none" and row["n_test"] == 5 and row["degenerate"] is None
    test["predicted"] = "b"  # decided classes without predicted_counts: read from predictions.csv
    test.to_csv(folder / "predictions.csv", index=False)
    assert results_row(CELL, folder, out)["degenerate"] is True


def test_results_csv_round_trip_keeps_the_new_columns(tmp_path):
    from medtransfer.experiment.store import Results

    m = {"value": 0.8, "ci": [0.7, 0.9]}
    metrics = {"val": {"auc": m, "log_loss": m}, "test": {"auc": m}, "fit": {},
               "operating_point": {"rule": "0.5", "threshold": 0.5, "positive": "1"},
               "test_counts": {"n": 120}, "predicted_counts": {"0": 120, "1": 0}}
    out, folder = _folder(tmp_path, metrics)
    frame = Results(out, [(CELL, folder)]).write()
    table = pd.read_csv(out / "results.csv", dtype={"positive": str, "threshold_rule": str})
    assert list(frame.columns) == list(table.columns)
    for name in ("val_auc", "val_log_loss", "val_balanced_acc", "positive", "threshold_rule", "threshold",
                 "calibration", "n_test", "degenerate"):
        assert name in table
    row = table.iloc[0]
    assert (row["positive"], row["threshold_rule"], row["n_test"], row["degenerate"]) == ("1", "0.5", 120, True)
    assert pd.isna(row["val_balanced_acc"]) and row["calibration"] == "none"


def test_per_backbone_compares_each_backbones_choice_with_its_own_scratch(tmp_path):
    """Two backbones: each one's validation-chosen transfer method is compared with scratch on that backbone
    (not with the other network's scratch), chosen on validation like the main table."""
    grid = Grid(tmp_path)
    y = grid.rng.integers(0, 2, N_TEST)
    for seed in (0, 1):
        grid.cell(y, "full", 2.0, seed=seed, backbone="cnn1d", val_auc=0.90, val_log_loss=0.4)
        grid.cell(y, "head", 3.0, seed=seed, backbone="cnn1d", val_auc=0.80, val_log_loss=0.4)
        grid.cell(y, "scratch", 0.5, source="none", seed=seed, backbone="cnn1d", val_auc=0.7, val_log_loss=0.5)
        grid.cell(y, "lp-ft", 1.0, seed=seed, backbone="gru", val_auc=0.85, val_log_loss=0.4)
        grid.cell(y, "scratch", 3.0, source="none", seed=seed, backbone="gru", val_auc=0.7, val_log_loss=0.5)
    table = _section(grid.report(), "Per backbone")
    rows = {line.split(" | ")[2]: line for line in table.splitlines() if line.startswith("| 20 |")}
    assert "| full ← cleveland |" in rows["cnn1d"]  # validation-chosen, though head is better on test
    assert "| lp-ft ← cleveland |" in rows["gru"]
    cnn_gain, gru_gain = (float(re.search(r"\| ([+-]\d\.\d{3}) \[", rows[b]).group(1)) for b in ("cnn1d", "gru"))
    assert cnn_gain > 0 > gru_gain  # full beats a weak cnn1d scratch; lp-ft loses to a strong gru scratch


def test_no_per_backbone_section_with_one_backbone(tmp_path):
    grid = Grid(tmp_path)
    y = grid.rng.integers(0, 2, N_TEST)
    grid.cell(y, "full", 2.0, val_auc=0.9, val_log_loss=0.4)
    grid.cell(y, "scratch", 0.5, source="none", val_auc=0.7, val_log_loss=0.5)
    assert "Per backbone" not in grid.report()
