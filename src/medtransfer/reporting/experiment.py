"""Experiment report: data-efficiency curves, paired comparisons, ROC/calibration/confusion, environment.

Why one self-contained HTML file: a report gets mailed, archived and opened offline long after the run,
so every plot is an embedded base64 PNG and nothing is fetched. ``report.md`` carries the same tables
for diffs and reviews. All numbers are recomputed from the saved per-sample test predictions (only the
multiclass macro sensitivity/specificity are results.csv's seed means), so every CI is a seeded bootstrap
over the *same* test patients for all models of a target (DESIGN.md, Evaluation principles): the seed-mean
AUC of a method, its sensitivity and specificity, and the paired difference between two methods.
With repeated hold-out (``resplit``: each seed redraws the split) the models of one seed share a test
split, and each split is resampled on its own.

The method reported at each budget is chosen on *validation* (seed-mean validation AUC, ties broken by
validation log-loss) and the test split is only reported, once: choosing the test-best of many methods
would make its test AUC an optimistic, selected number rather than an estimate.

No strategy is named here: which methods are baselines, and which baseline a transfer method is compared
with, comes from the tags the strategies declare (``strategies/base.py``). A target's part of the report
is the list ``TARGET_SECTIONS``; a new plot or table is one function of a ``TargetView`` plus one line there.

Figures are built with ``matplotlib.figure.Figure`` (rendered by Agg on ``savefig``) instead of pyplot,
so no global backend or figure registry is touched and nothing has to be closed.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FixedFormatter, FixedLocator, NullLocator
from sklearn.metrics import confusion_matrix, roc_curve

from ..evaluation import FEW_EXAMPLES as FEW_VALIDATION, grid_choice_key, thin_validation, thinnest_class
from ..evaluation.metrics import auc_paired_difference, auc_paired_mean_ci, expected_calibration_error
from ..experiment import short
from ..experiment.config import DP_NONE
from ..strategies import STRATEGIES
from ..training.privacy import parse_dp
from .blocks import Block, Bullets, Heading, Paragraph, Plot, Pre, Table, png, to_html, to_markdown

# Baselines are drawn in greys and dashes, given out in the order of `baselines()`; transfer methods get colours.
_BASELINE_STYLES = [("black", "--"), ("dimgrey", "-."), ("grey", ":"), ("saddlebrown", ":"), ("darkgrey", "-.")]
_CHROMIUM = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# results.csv columns that older experiment folders lack: read as empty, reported as "not recorded"
_NUMBER_COLUMNS = ("val_auc", "val_log_loss", "val_balanced_acc", "threshold", "n_test")
_TEXT_COLUMNS = ("positive", "threshold_rule", "calibration", "degenerate")  # class names may look like numbers
NOT_RECORDED = "not recorded"
FEW = 10  # a test split with fewer examples of a class than this gets a warning


# ----------------------------------------------------------------------------- public API


def write_report(exp_dir, n_boot: int = 1000, seed: int = 0) -> tuple[Path, Path]:
    """Read ``results.csv`` and the cells' ``predictions.csv`` in ``exp_dir``; write report.html and report.md."""
    exp = Path(exp_dir)
    if not (exp / "results.csv").is_file():
        raise FileNotFoundError(f"{exp / 'results.csv'} not found; run the experiment first (medtransfer experiment).")
    rows, preds, failed = _load(exp)
    blocks = _summary(rows, failed, n_boot, seed)
    for target, group in rows.groupby("target", sort=True):  # every method of a target meets the same baselines
        group = group.copy()
        several = group.groupby(["strategy", "source"])["backbone"].transform("nunique") > 1
        group.loc[several, "method"] = group.loc[several, "method"] + " · " + group.loc[several, "backbone"]
        backbones = ", ".join(sorted(set(group["backbone"].astype(str))))
        blocks += _target_section(target, backbones, group, preds, failed, n_boot, seed)
    if failed:
        blocks += [Heading("Failed or missing cells"),
                   Table(["cell", "target", "method", "budget", "seed", "reason"], failed)]
    blocks += _environment(exp)
    title = f"medtransfer report: {exp.resolve().name}"
    html_path, md_path = exp / "report.html", exp / "report.md"
    html_path.write_text(to_html(title, blocks), encoding="utf-8")
    md_path.write_text(to_markdown(title, blocks), encoding="utf-8")
    return html_path, md_path


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome binary on PATH, or None."""
    return next((p for p in map(shutil.which, _CHROMIUM) if p), None)


def browser_check(html_path, timeout: float = 60) -> int:
    """Open the report in headless Chromium; return how many plot images actually decoded (naturalWidth > 0).

    The report's inline script writes that count to ``<body data-plots-loaded>`` on ``load``; the
    dumped DOM is parsed for it. Raises RuntimeError if no browser is found or the count is absent.
    """
    binary = find_chromium()
    if binary is None:
        raise RuntimeError(f"no Chromium binary found on PATH (tried {', '.join(_CHROMIUM)})")
    with tempfile.TemporaryDirectory() as profile:
        cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--dump-dom",
               Path(html_path).resolve().as_uri()]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    found = re.search(r'data-plots-loaded="(\d+)"', done.stdout)
    if not found:
        raise RuntimeError(f"Chromium did not report loaded plots (exit {done.returncode}): {done.stderr[-500:]}")
    return int(found.group(1))


# ----------------------------------------------------------------------------- baselines, from the tags


def is_baseline(strategy: str) -> bool:
    """A strategy tagged ``baseline``; a name the registry does not know (an old results.csv) is not one."""
    cls = STRATEGIES.get(strategy)
    return cls is not None and cls.baseline


@dataclass(frozen=True)
class Reference:
    """A kind of baseline the chosen transfer method is compared with, defined by tags rather than a name."""
    fits: Callable[[type], bool]

    def matches(self, strategy: str) -> bool:
        return is_baseline(strategy) and self.fits(STRATEGIES[strategy])

    def name_in(self, strategies) -> str:
        """The strategies of this kind among ``strategies`` ("a/b"); when none ran, the first registered one,
        so the report can still say which comparison is missing."""
        found = list(dict.fromkeys(s for s in strategies if self.matches(s)))
        return "/".join(found) or next((n for n in baselines() if self.matches(n)), "baseline")


def _sourceless(c) -> bool:
    return not c.needs_source_model and not c.needs_source_data


# No source at all, the same network from random weights (today: scratch); no source and no backbone, a
# classical model of the labelled target rows (target-only); fitted on the source data and applied without
# target labels (source-only); the source model applied without target labels (source-model).
NO_SOURCE = Reference(lambda c: _sourceless(c) and c.uses_backbone)
TARGET_ONLY = Reference(lambda c: _sourceless(c) and not c.uses_backbone)
SOURCE_DATA_ONLY = Reference(lambda c: c.needs_source_data and not c.needs_source_model and not c.needs_labels)
SOURCE_MODEL_ONLY = Reference(lambda c: c.needs_source_model and not c.needs_source_data and not c.needs_labels)
REFERENCES = (NO_SOURCE, TARGET_ONLY, SOURCE_DATA_ONLY, SOURCE_MODEL_ONLY)


def baselines() -> list[str]:
    """The registered baselines: the no-source ones first (every transfer is measured against them), then
    in registry order. Fixes the order the summary names them in and each baseline's line style."""
    return sorted((n for n, c in STRATEGIES.items() if c.baseline), key=lambda n: not NO_SOURCE.matches(n))


def _baseline_style(strategy: str) -> tuple[str, str] | None:
    order = baselines()
    return _BASELINE_STYLES[order.index(strategy) % len(_BASELINE_STYLES)] if strategy in order else None


# ----------------------------------------------------------------------------- loading


class Predictions(NamedTuple):
    """The test rows of one cell's predictions.csv, in index order, and its validation labels."""
    y: np.ndarray  # labels: class indices, or (N, L) 0/1 for multilabel
    prob: np.ndarray
    classes: list
    predicted: np.ndarray | None  # class names decided at the run's operating point; None in older folders
    val_y: np.ndarray  # the labelled validation examples the cell was chosen on (empty: none, or not saved)


def _method(strategy: str, source: str) -> str:
    return strategy if source in ("none", "") else f"{strategy} ← {short(source)}"


def _read_predictions(path: Path) -> Predictions:
    """The test rows of a predictions.csv and its validation labels; `predicted` read as text (class names
    such as "0" stay names)."""
    frame = pd.read_csv(path, dtype={"predicted": str})
    test = frame[frame["split"] == "test"].sort_values("index")
    prob_cols = [c for c in test.columns if c.startswith("prob_")]
    label_cols = ["label"] if "label" in test.columns else [c for c in test.columns if c.startswith("label_")]
    if test.empty or not prob_cols or not label_cols:
        raise ValueError("no test rows, prob_* or label columns")
    y, val_y = (part[label_cols].to_numpy() for part in (test, frame[frame["split"] == "val"]))
    if label_cols == ["label"]:
        y, val_y = y[:, 0], val_y[:, 0]
    predicted = test["predicted"].to_numpy(object) if "predicted" in test.columns else None
    return Predictions(y, test[prob_cols].to_numpy(float), [c[5:] for c in prob_cols], predicted, val_y)


def _load(exp: Path):
    """Results rows that have usable test predictions, those predictions by cell, and the failed cells."""
    res = pd.read_csv(exp / "results.csv", dtype={"cell_id": str, "budget": str, "source": str,
                                                  **dict.fromkeys(_TEXT_COLUMNS, str)})
    res = res.copy()  # one block per dtype: read_csv leaves hundreds (a multiclass grid's per-class columns)
    res["source"] = res["source"].fillna("none")
    res["split_seed"] = res.get("split_seed", pd.Series(0, index=res.index)).fillna(0).astype(int)
    res["method"] = [_method(st, so) for st, so in zip(res["strategy"], res["source"])]
    res["dp_level"] = [_dp_label(d) for d in res.get("dp", pd.Series(DP_NONE, index=res.index))]
    res["method"] = [m + (f" · DP {d}" if d else "") for m, d in zip(res["method"], res["dp_level"])]  # own method
    for name in _NUMBER_COLUMNS + _TEXT_COLUMNS:  # an older results.csv: the column is there, empty
        if name not in res:
            res[name] = np.nan
        elif name in _NUMBER_COLUMNS:
            res[name] = pd.to_numeric(res[name], errors="coerce")
    preds, failed, keep = {}, [], []
    for _, row in res.iterrows():
        error = row.get("error")  # a cell refused before training or failed while running: the runner's reason
        reason = error if isinstance(error, str) and error else None
        run_dir = row.get("run_dir")
        path = exp / (run_dir if isinstance(run_dir, str) else f"cells/{row['cell_id']}") / "predictions.csv"
        if reason is None and not np.isfinite(float(pd.to_numeric(row.get("test_auc", np.nan), errors="coerce"))):
            reason = "no test AUC in results.csv"
        if reason is None and not path.is_file():
            reason = f"missing {path.relative_to(exp)}"
        if reason is None:
            try:
                preds[row["cell_id"]] = _read_predictions(path)
            except (ValueError, KeyError, pd.errors.ParserError) as err:
                reason = f"unreadable predictions.csv: {err}"
        if reason is not None:
            failed.append([row["cell_id"], row["target"], row["method"], row["budget"], str(row["seed"]), reason])
        keep.append(reason is None)
    return res[keep].copy(), preds, failed


# ----------------------------------------------------------------------------- formatting helpers


def format_ci(value, ci, signed=False) -> str:
    f = "{:+.3f}" if signed else "{:.3f}"
    if not np.isfinite(value):
        return "n/a"
    return f.format(value) + (f" [{f.format(ci[0])}, {f.format(ci[1])}]" if np.isfinite(ci).all() else "")


def format_p(p) -> str:
    return "n/a" if not np.isfinite(p) else "< 0.001" if p < 0.001 else f"{p:.3f}"


def _fmt_score(value) -> str:
    return f"{value:.3f}" if np.isfinite(value) else NOT_RECORDED


def _significant(diff) -> bool | None:
    """Whether the 95% CI of a difference excludes zero; None when the CI is undefined."""
    lo, hi = diff["ci"]
    return None if not (np.isfinite(lo) and np.isfinite(hi)) else not lo <= 0 <= hi


def _verdict(diff, chosen) -> str:
    sig = _significant(diff)
    if sig is None:
        return "the CI is undefined"
    if not sig:
        return "not significant (the 95% CI includes zero)"
    return f"significant (the 95% CI excludes zero; {chosen} is {'better' if diff['value'] > 0 else 'worse'})"


def _seed_mean(values) -> float:
    """Mean over the seeds that recorded a value; nan when none did."""
    v = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(float)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")


def _recorded(values) -> list[str]:
    """The distinct values a column recorded for some cells, in order (empty, NaN and None are unrecorded)."""
    return list(dict.fromkeys(str(v) for v in values if not _blank(v)))


def _blank(value) -> bool:
    return value is None or (isinstance(value, str) and not value.strip()) or (not isinstance(value, str)
                                                                                and bool(pd.isna(value)))


def _flag(value) -> bool | None:
    """results.csv's degenerate column (True/False, or the strings a CSV gives back); None when empty."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    text = str(value).strip().lower()
    return True if text in ("true", "1", "1.0") else False if text in ("false", "0", "0.0") else None


def _seeds(seeds) -> str:
    return ("seed " if len(seeds) == 1 else "seeds ") + ", ".join(str(int(s)) for s in seeds)


# ----------------------------------------------------------------------------- report-wide sections


def _summary(rows, failed, n_boot, seed) -> list[Block]:
    seeds = sorted(rows["seed"].unique().tolist()) if len(rows) else []
    present = [b for b in baselines() if b in set(rows["strategy"])]
    resplit = [Paragraph("Repeated hold-out: each seed redrew the target's train/val/test split, so the seed mean "
                         "averages over test splits too; the bootstrap resamples each split's test set on its own "
                         "and the models of one seed share its resamples.")] if rows["split_seed"].nunique() > 1 else []
    return resplit + [
        Paragraph(f"{len(rows) + len(failed)} cells: {len(rows)} with test predictions, {len(failed)} failed or "
                  f"missing. Targets: {', '.join(sorted(rows['target'].unique())) or 'none'}. "
                  f"Seeds: {seeds or 'none'}."),
        Paragraph("The method reported at each budget is chosen on validation, never on test: the validation-chosen "
                  "method is the transfer (non-baseline) method with the best seed-mean validation AUC, ties broken "
                  "by the lower seed-mean validation log-loss; a method without a validation score (budget 0, or "
                  "older run folders that did not record it) is not chosen. The test split is reported once, for "
                  "the chosen method and the baselines; the test AUCs of the other methods are shown beside them "
                  "but choose nothing. Baselines "
                  f"({', '.join(present) or 'none in this experiment'}) are never chosen."),
        Paragraph(f"AUC is the test-set ROC AUC (macro one-vs-rest for multiclass/multilabel), averaged over seeds. "
                  f"95% CIs are percentile bootstraps over test samples ({n_boot} resamples, seed {seed}), paired: "
                  "every model of a target is scored on the same resamples. Differences are 'chosen minus "
                  "baseline' in seed-mean test AUC with a two-sided bootstrap p-value. Sensitivity and specificity "
                  "are those of the test decisions at each run's operating point (its threshold rule, applied on "
                  "validation, and its positive class)."),
    ]


def _environment(exp) -> list[Block]:
    blocks = [Heading("Environment")]
    env_path, cfg_path = exp / "environment.json", exp / "config.yaml"
    if env_path.is_file():
        env = json.loads(env_path.read_text(encoding="utf-8"))
        blocks.append(Table(["key", "value"], [list(kv) for kv in _flatten(env)]))
    else:
        blocks.append(Paragraph("environment.json not found."))
    blocks.append(Heading("Experiment config (verbatim)"))
    config = cfg_path.read_text(encoding="utf-8") if cfg_path.is_file() else None
    blocks.append(Pre(config) if config is not None else Paragraph("config.yaml not found."))
    return blocks


def _flatten(d, prefix=""):
    for key, value in d.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", ", ".join(map(str, value)) if isinstance(value, list) else str(value)


# ----------------------------------------------------------------------------- one target


@dataclass
class TargetView:
    """What every section of one target reads: its paired statistics per (method, budget)."""
    target: str
    backbone: str
    task: str
    y: dict  # test labels per split seed (one split for a fixed test set)
    preds: dict  # cell id -> Predictions
    stats: dict  # (method, budget) -> dict(auc, ci, val_auc, val_log_loss, n_labels, cells, seeds, splits,
    #                                      strategy, rows: the cells' results.csv rows in seed order)
    budgets: list
    n_of: dict  # budget -> median number of labels ("" when it has none)
    methods: list  # table order: transfer methods, then baselines
    chosen_at: dict  # budget -> the validation-chosen transfer (non-baseline) method
    classes: list  # the target's class names, as in predictions.csv
    rows: pd.DataFrame  # the target's paired results.csv rows
    n_boot: int
    seed: int

    def strategy(self, method: str) -> str:
        """The strategy behind a method label (labels carry the source too)."""
        return next(s["strategy"] for (m, _), s in self.stats.items() if m == method)

    def at(self, budget) -> dict:
        """method -> stats at one budget, in the order of results.csv."""
        return {m: s for (m, b), s in self.stats.items() if b == budget}

    def reference_name(self, ref: Reference) -> str:
        return ref.name_in(s["strategy"] for s in self.stats.values())


def _target_section(target, backbone, group, preds, failed, n_boot, seed) -> list[Block]:
    """The test split, warnings, curves, tables, comparisons and diagnostics of one target (all its backbones)."""
    view = _target_view(target, backbone, group, preds, failed, n_boot, seed)
    return [Heading(f"{target} · {backbone}")] + [b for section in TARGET_SECTIONS for b in section(view)]


def _target_view(target, backbone, group, preds, failed, n_boot, seed) -> TargetView:
    """Pair the cells of a target on their shared test split(s) and bootstrap every (method, budget)."""
    y, keep = {}, []
    for split, cells in group.groupby("split_seed"):
        keys = [(preds[c].y.shape, preds[c].y.tobytes()) for c in cells["cell_id"]]
        common = Counter(keys).most_common(1)[0][0]  # the test split that (almost) every cell shares
        for (_, row), key in zip(cells.iterrows(), keys):
            if key != common:
                failed.append([row["cell_id"], target, row["method"], row["budget"], str(row["seed"]),
                               "test labels differ from the target's other cells (not paired); left out"])
            else:
                keep.append(row["cell_id"])
        y[split] = preds[cells["cell_id"].iloc[keys.index(common)]].y
    group = group[group["cell_id"].isin(keep)]
    task = group["task"].iloc[0]
    stats = {}
    for (method, budget), cells in group.groupby(["method", "budget"], sort=False):
        cells = cells.sort_values("seed")
        ci = auc_paired_mean_ci(y, [preds[c].prob for c in cells["cell_id"]], n_boot=n_boot, seed=seed, task=task,
                                split_of=list(cells["split_seed"]))
        stats[method, budget] = dict(auc=ci["value"], ci=ci["ci"], val_auc=_seed_mean(cells["val_auc"]),
                                     val_log_loss=_seed_mean(cells["val_log_loss"]),
                                     n_labels=float(cells["n_labels"].median()), cells=list(cells["cell_id"]),
                                     seeds=list(cells["seed"]), splits=list(cells["split_seed"]),
                                     strategy=cells["strategy"].iloc[0], rows=cells)
    labels = group[group["n_labels"] > 0].groupby("budget")["n_labels"].median().sort_values()
    budgets = list(labels.index) + sorted(set(group["budget"]) - set(labels.index))
    strategy_of = {}
    for (m, _), s in stats.items():
        strategy_of.setdefault(m, s["strategy"])
    methods = sorted(strategy_of, key=lambda m: (is_baseline(strategy_of[m]), m))
    return TargetView(target, backbone, task, y, preds, stats, budgets,
                      {b: f"{labels[b]:.0f}" if b in labels else "" for b in budgets}, methods,
                      _chosen_at(stats, budgets), preds[keep[0]].classes, group, n_boot, seed)


def _candidates(stats: dict, budget) -> dict:
    """The transfer (non-baseline) methods at a budget that have a validation score to be chosen by."""
    return {m: s for (m, b), s in stats.items() if b == budget and not is_baseline(s["strategy"])
            and np.isfinite(s["val_auc"])}


def _choice_key(s: dict, method: str):
    return grid_choice_key(float(s["val_auc"]), float(s["val_log_loss"]), method)


def _chosen_at(stats, budgets) -> dict:
    """The validation-chosen transfer method at each budget that has a candidate."""
    chosen = {}
    for b in budgets:
        cands = _candidates(stats, b)
        if cands:
            chosen[b] = min(cands, key=lambda m: _choice_key(cands[m], m))
    return chosen


# ----------------------------------------------------------------------------- the test split and warnings


def _split_positive(view: TargetView, split) -> str | None:
    """The positive class the runs on a test split recorded, when they agree on one of the target's classes."""
    names = _recorded(view.rows.loc[view.rows["split_seed"] == split, "positive"])
    return names[0] if len(names) == 1 and names[0] in view.classes else None


def _class_counts(view: TargetView, split) -> list[tuple[str, int]]:
    """(class, test examples) of a split; for multilabel (label, positive examples)."""
    y = view.y[split]
    if view.task == "multilabel":
        return [(c, int(y[:, k].sum())) for k, c in enumerate(view.classes)]
    return [(c, int((y == k).sum())) for k, c in enumerate(view.classes)]


def _test_splits(view: TargetView) -> list[Block]:
    """n, the examples of each class and (binary) the prevalence of the positive class, per test split."""
    binary = view.task == "binary"
    what = "positive examples of " if view.task == "multilabel" else ""
    header = ["test split (split_seed)", "n"] + [f"{what}{c}" for c in view.classes]
    header += ["prevalence of the positive class"] if binary else []
    rows = []
    for split, y in sorted(view.y.items()):
        counts = _class_counts(view, split)
        line = [str(split), str(len(y))] + [str(n) for _, n in counts]
        if binary:
            positive = _split_positive(view, split)
            share = dict(counts).get(positive, 0) / len(y) if positive else None
            line.append(f"{share:.1%} ({positive})" if positive else f"{NOT_RECORDED} (no positive class recorded)")
        rows.append(line)
    return [Heading("Test split", 3), Table(header, rows)]


def _few_examples(view: TargetView) -> list[str]:
    """A line for every class (multilabel: every label's positives or negatives) with fewer than FEW test examples."""
    lines = []
    for split, y in sorted(view.y.items()):
        for name, n in _class_counts(view, split):
            kinds = [("positive ", n), ("negative ", len(y) - n)] if view.task == "multilabel" else [("", n)]
            lines += [f"Test split {split} has only {k} {kind}test examples of {name!r} (fewer than {FEW}): "
                      f"its sensitivity, specificity and AUC there rest on very few patients."
                      for kind, k in kinds if k < FEW]
    return lines


def _degenerate(view: TargetView, cell: str, recorded) -> tuple[bool | None, str | None]:
    """(whether every test decision of a cell fell in one class, that class when known): from results.csv's
    `degenerate`, else from predictions.csv's `predicted`; (None, None) when neither recorded it."""
    predicted = view.preds[cell].predicted
    names = list(dict.fromkeys(v for v in predicted if isinstance(v, str))) if predicted is not None else []
    flag = _flag(recorded)
    if flag is None and predicted is not None:
        flag = len(names) == 1
    return flag, (names[0] if flag and len(names) == 1 else None)


def _degenerate_lines(view: TargetView) -> list[str]:
    """A warning per method and budget whose test decisions fell in one class in some seed, and a note of how
    many cells did not record it."""
    lines, unknown = [], 0
    for (method, budget), s in view.stats.items():
        hits, classes = [], set()
        for cell, seed, recorded in zip(s["cells"], s["seeds"], s["rows"]["degenerate"]):
            flag, name = _degenerate(view, cell, recorded)
            unknown += flag is None
            if flag:
                hits.append(seed)
                classes |= {name} if name else set()
        if hits:
            into = f" (all {', '.join(sorted(classes))})" if classes else ""
            lines.append(f"{method} at budget {budget}: every test decision fell in one class{into} in "
                         f"{_seeds(hits)}, so one of sensitivity and specificity is 0 there; check its threshold "
                         "rule, calibration and the class balance.")
    if unknown:
        lines.append(f"Whether the test decisions fell in one class is {NOT_RECORDED} for {unknown} of "
                      f"{len(view.rows)} cells (run folders without decided classes).")
    return lines


def _thin_choice(view: TargetView, b) -> str | None:
    """The thinnest validation split among the seeds the choice at budget `b` was made on, as a phrase
    (thin_validation's), or None when every seed's validation split holds enough of every class."""
    s = view.stats[view.chosen_at[b], b]
    thin = [(thinnest_class(view.preds[c].val_y, view.task, view.classes), c) for c in s["cells"]]
    thin = [(t, c) for t, c in thin if t is not None]
    if not thin:
        return None  # older folders that saved no validation rows: nothing to say
    cell = min(thin, key=lambda tc: tc[0][1])[1]
    return thin_validation(view.preds[cell].val_y, view.task, view.classes)


def _thin_choice_lines(view: TargetView) -> list[str]:
    """A warning per budget whose method was chosen on a validation split with very few examples of a class."""
    lines = []
    for b, chosen in view.chosen_at.items():
        thin = _thin_choice(view, b)
        if thin:
            ties = _tied(view, b, chosen)
            tied = f"; {len(ties)} other candidate{'s' if len(ties) > 1 else ''} tied with it on validation AUC" \
                if ties else ""
            lines.append(f"Budget {b}: {chosen} was chosen on validation splits with as few as {thin}{tied}. A "
                         "validation AUC over so few examples takes only a handful of values, so this choice is "
                         "close to chance: read the test AUC of every method in the table, and give validation "
                         f"more labels (at least {FEW_VALIDATION} of each class) before relying on the choice.")
    return lines


def _warnings(view: TargetView) -> list[Block]:
    lines = _few_examples(view) + _degenerate_lines(view) + _thin_choice_lines(view)
    return [Heading("Warnings", 3), Bullets(lines)] if lines else []


# ----------------------------------------------------------------------------- tables and comparisons


def _curves(view: TargetView) -> list[Block]:
    return [Plot(_curves_png(view), f"Test AUC vs labelled examples, {view.target}")]


def _header(view: TargetView) -> list[str]:
    return ["method", "seeds"] + [f"{b} ({view.n_of[b]} labels)" if view.n_of[b] else b for b in view.budgets]


def _seed_counts(view: TargetView, m) -> str:
    return "–".join(sorted({str(len(view.stats[m, b]["seeds"])) for b in view.budgets if (m, b) in view.stats}))


def _validation_table(view: TargetView) -> list[Block]:
    """What the choice is made on: seed-mean validation AUC (log-loss breaks ties) per method and budget."""
    stats = view.stats
    rows = [[m, _seed_counts(view, m)] + [_fmt_score(stats[m, b]["val_auc"]) if (m, b) in stats else ""
                                          for b in view.budgets] for m in view.methods]
    return [Heading("Validation AUC, mean over seeds (the choice is made on this)", 3), Table(_header(view), rows)]


def _auc_table(view: TargetView) -> list[Block]:
    stats = view.stats
    rows = [[m, _seed_counts(view, m)] + [format_ci(stats[m, b]["auc"], stats[m, b]["ci"]) if (m, b) in stats else ""
                                          for b in view.budgets] for m in view.methods]
    return [Heading("Test AUC, mean over seeds [95% CI] (reported, never used to choose)", 3),
            Table(_header(view), rows)]


def _reference(here: dict, chosen: str, ref: Reference) -> str | None:
    """The baseline of kind ``ref`` at a budget: the one with the chosen method's source, else the first."""
    others = [m for m, s in here.items() if ref.matches(s["strategy"])]
    same_source = [m for m in others if m.partition(" ← ")[2] == chosen.partition(" ← ")[2]]
    return (same_source or others or [None])[0]


def _no_choice(view: TargetView, b) -> str:
    """Why nothing is chosen at a budget."""
    if not any(bb == b and not is_baseline(s["strategy"]) for (_, bb), s in view.stats.items()):
        return f"Budget {b}: no transfer (non-baseline) method finished; no comparison."
    return (f"Budget {b}: no transfer method has a validation score ({NOT_RECORDED}: no labelled validation "
            "examples at this budget, or run folders that did not save it), so no method is chosen and none is "
            "compared; the test AUCs above are not used to choose one.")


def _tied(view: TargetView, b, chosen: str) -> list[str]:
    """The other candidates at budget `b` with the chosen method's validation AUC."""
    cands = _candidates(view.stats, b)
    return [m for m, s in cands.items() if m != chosen and s["val_auc"] == cands[chosen]["val_auc"]]


def _tie(view: TargetView, b, chosen: str) -> str:
    """A note when another candidate had the same validation AUC and the log-loss decided."""
    tied = _tied(view, b, chosen)
    if not tied:
        return ""
    return (f"; tied on validation AUC with {', '.join(tied)}, chosen by the lower validation log-loss "
            f"({_fmt_score(view.stats[chosen, b]['val_log_loss'])})")


def _missing(names: list[str]) -> str:
    if len(names) == 1:
        return f" No {names[0]} cell at this budget, so no comparison against {names[0]}."
    return (f" No {', '.join(names[:-1])} or {names[-1]} cell at this budget, so no comparison against "
            "those baselines.")


def _comparisons(view: TargetView) -> list[Block]:
    """The validation-chosen method per budget and its paired test AUC difference against each reference kind."""
    names = {ref: view.reference_name(ref) for ref in REFERENCES}
    rows, sentences = [], []
    for b in view.budgets:
        if b not in view.chosen_at:
            sentences.append(_no_choice(view, b))
            continue
        here, chosen = view.at(b), view.chosen_at[b]
        s = here[chosen]
        line = [b, view.n_of[b], chosen, _fmt_score(s["val_auc"]), _fmt_score(s["val_log_loss"]),
                format_ci(s["auc"], s["ci"])]
        thin = " on a thin validation split (see Warnings)" if _thin_choice(view, b) else ""
        text = (f"Budget {b}: validation-chosen method {chosen} (validation AUC {_fmt_score(s['val_auc'])}"
                f"{_tie(view, b, chosen)}){thin}, test AUC {format_ci(s['auc'], s['ci'])}.")
        missing = []
        for ref in REFERENCES:
            other = _reference(here, chosen, ref)
            if other is None:
                line += ["–", "–"]
                missing.append(names[ref])
                continue
            d = auc_paired_difference(view.y, [view.preds[c].prob for c in s["cells"]],
                                      [view.preds[c].prob for c in here[other]["cells"]], n_boot=view.n_boot,
                                      seed=view.seed, task=view.task, split_of_a=s["splits"],
                                      split_of_b=here[other]["splits"])
            line += [format_ci(d["value"], d["ci"], signed=True) + (" (n.s.)" if _significant(d) is False else ""),
                     format_p(d["p"])]
            text += (f" Against {other}: ΔAUC {format_ci(d['value'], d['ci'], signed=True)}, p = {format_p(d['p'])}, "
                     f"{_verdict(d, chosen)}.")
        rows.append(line)
        sentences.append(text + (_missing(missing) if missing else ""))
    blocks = [Heading("Validation-chosen method against the baselines (test split, reported once)", 3)]
    if rows:
        header = ["budget", "labels", "validation-chosen method", "val AUC", "val log-loss", "test AUC [95% CI]"]
        for ref in REFERENCES:
            header += [f"Δ vs {names[ref]} [95% CI]", "p"]
        blocks.append(Table(header, rows))
    return blocks + [Bullets(sentences)]


def _per_backbone(view: TargetView) -> list[Block]:
    """With several backbones: the validation-chosen transfer method of each backbone against scratch on that
    same backbone, per budget (does the source help this network?). Chosen by the same validation rule."""
    def backbone(s: dict) -> str:
        return str(s["rows"]["backbone"].iloc[0])

    backbones = sorted({backbone(s) for s in view.stats.values()})
    if len(backbones) < 2:
        return []
    rows = []
    for b in view.budgets:
        here = view.at(b)
        for net in backbones:
            cands = {m: s for m, s in _candidates(view.stats, b).items() if backbone(s) == net}
            if not cands:
                continue
            chosen = min(cands, key=lambda m: _choice_key(cands[m], m))
            s = here[chosen]
            line = [b, view.n_of[b], net, chosen, _fmt_score(s["val_auc"]), format_ci(s["auc"], s["ci"])]
            other = next((m for m, t in here.items() if NO_SOURCE.matches(t["strategy"]) and backbone(t) == net), None)
            if other is None:
                rows.append(line + ["–", "–", "–"])
                continue
            d = auc_paired_difference(view.y, [view.preds[c].prob for c in s["cells"]],
                                      [view.preds[c].prob for c in here[other]["cells"]], n_boot=view.n_boot,
                                      seed=view.seed, task=view.task, split_of_a=s["splits"],
                                      split_of_b=here[other]["splits"])
            shown = format_ci(d["value"], d["ci"], signed=True) + (" (n.s.)" if _significant(d) is False else "")
            rows.append(line + [format_ci(here[other]["auc"], here[other]["ci"]), shown, format_p(d["p"])])
    if not rows:
        return []
    name = view.reference_name(NO_SOURCE)
    return [Heading(f"Per backbone: the validation-chosen transfer method against {name} on the same backbone", 3),
            Table(["budget", "labels", "backbone", "validation-chosen method", "val AUC", "test AUC [95% CI]",
                   f"{name} test AUC", f"Δ vs {name} [95% CI]", "p"], rows)]


# ----------------------------------------------------------------------------- the operating point


def rate_mean_ci(parts: list, split_of: list, n_boot: int, seed: int) -> dict:
    """Seed mean of a rate ``hits / of`` (sensitivity: true positives over positives) with a paired percentile
    bootstrap over the test patients: the models on one test split share its resamples, and each split is
    resampled on its own, as the AUC CIs are. ``parts``: per model (hits, of) as 0/1 arrays over its split."""
    point, boots = 0.0, np.zeros(n_boot)
    for split in sorted(set(split_of)):
        members = [part for part, s in zip(parts, split_of) if s == split]
        hits = np.stack([h for h, _ in members]).astype(float)  # (K, N)
        of = np.stack([o for _, o in members]).astype(float)
        share, n = len(members) / len(parts), hits.shape[1]
        with np.errstate(invalid="ignore", divide="ignore"):
            point += share * float(np.mean(hits.sum(1) / of.sum(1)))
            rng = np.random.default_rng(seed if split == 0 else [seed, split])
            step, values = max(1, 4_000_000 // n), []
            for start in range(0, n_boot, step):
                b = min(step, n_boot - start)
                w = np.stack([np.bincount(r, minlength=n) for r in rng.integers(0, n, size=(b, n))]).astype(float)
                values.append(((w @ hits.T) / (w @ of.T)).mean(axis=1))
        boots = boots + share * (np.concatenate(values) if values else np.empty(0))
    finite = boots[np.isfinite(boots)]
    ci = list(np.percentile(finite, [2.5, 97.5])) if finite.size else [np.nan, np.nan]
    return {"value": point, "ci": [float(c) for c in ci]}


def _binary_rates(view: TargetView, s: dict) -> tuple[str, str]:
    """Sensitivity and specificity of a method's test decisions (predicted, label, positive class per cell)."""
    sens, spec = [], []
    for cell, positive in zip(s["cells"], s["rows"]["positive"]):
        pred = view.preds[cell]
        if pred.predicted is None or not isinstance(positive, str) or positive not in pred.classes:
            return NOT_RECORDED, NOT_RECORDED
        is_pos, decided = pred.y == pred.classes.index(positive), pred.predicted == positive
        sens.append((decided & is_pos, is_pos))
        spec.append((~decided & ~is_pos, ~is_pos))
    return tuple(format_ci(r["value"], r["ci"]) for r in (rate_mean_ci(part, s["splits"], view.n_boot, view.seed)
                                                      for part in (sens, spec)))


def _rates(view: TargetView, s: dict) -> tuple[str, str]:
    if view.task == "binary":
        return _binary_rates(view, s)
    if view.task == "multilabel":
        return "n/a (multilabel)", "n/a (multilabel)"
    return _macro(s["rows"], "test_sensitivity"), _macro(s["rows"], "test_specificity")


def _macro(rows: pd.DataFrame, column: str) -> str:
    """A multiclass macro rate: the seed mean of results.csv's test column."""
    mean = _seed_mean(rows[column]) if column in rows else float("nan")
    return f"{mean:.3f} (macro, seed mean)" if np.isfinite(mean) else NOT_RECORDED


def _thresholds(s: dict) -> str:
    values = pd.to_numeric(s["rows"]["threshold"], errors="coerce").to_numpy(float)
    if np.isfinite(values).any():
        return ", ".join(f"{v:.3f}" if np.isfinite(v) else NOT_RECORDED for v in values)
    return "–" if _recorded(s["rows"]["threshold_rule"]) else NOT_RECORDED


def _operating_point(view: TargetView) -> list[Block]:
    """Sensitivity and specificity of the validation-chosen method at its operating point, and what set it."""
    rows = []
    for b, method in view.chosen_at.items():
        s = view.stats[method, b]
        positive = (", ".join(_recorded(s["rows"]["positive"])) or NOT_RECORDED) if view.task == "binary" else "–"
        rows.append([b, method, positive, ", ".join(_recorded(s["rows"]["threshold_rule"])) or NOT_RECORDED,
                     _thresholds(s), ", ".join(_recorded(s["rows"]["calibration"])) or NOT_RECORDED, *_rates(view, s)])
    if not rows:
        return []
    how = ("the seed mean, with a paired percentile bootstrap 95% CI over the test patients, of the classes each "
           "run decided in predictions.csv" if view.task == "binary" else
           "macro over the classes, each against the rest: the seed mean of results.csv's test columns, no CI")
    return [Heading("Operating point of the validation-chosen method", 3),
            Paragraph(f"Sensitivity and specificity of the test decisions at the operating point each run set on "
                      f"validation: {how}. Thresholds are listed per seed."),
            Table(["budget", "method", "positive class", "threshold rule", "threshold", "calibration",
                   "sensitivity [95% CI]", "specificity [95% CI]"], rows)]


def _diagnostics(view: TargetView) -> list[Block]:
    """ROC / reliability / confusion figures of the validation-chosen method at the smallest and largest budget."""
    picked = [b for b in view.budgets if b in view.chosen_at]  # budgets without labels come last, never chosen
    if not picked:
        return []
    chosen = list(dict.fromkeys((picked[0], picked[-1])))
    name = view.reference_name(NO_SOURCE)
    blocks = [Heading("Diagnostics of the validation-chosen method at the smallest and largest budget", 3),
              Paragraph("Each figure uses the predictions of a single model, the lowest seed of that method (seed 0 "
                        f"when present), not a seed ensemble. The ROC panel also shows {name} (its lowest seed) at "
                        "the same budget when available. Confusion matrices use the classes each run decided at "
                        "its operating point (the argmax class for run folders that did not save them).")]
    for b in chosen:
        method = view.chosen_at[b]
        s = view.stats[method, b]
        split = s["splits"][0]  # the reference is drawn on the same test split
        refs = [r for r in view.at(b).values() if NO_SOURCE.matches(r["strategy"]) and split in r["splits"]]
        ref = (refs[0]["strategy"], view.preds[refs[0]["cells"][refs[0]["splits"].index(split)]]) if refs else None
        image = _diagnostics_png(view.y[split], view.task, view.preds[s["cells"][0]], method, s["strategy"],
                                 int(s["seeds"][0]), ref, b)
        blocks.append(Plot(image, f"ROC, reliability and confusion matrix of {method} at budget {b}"))
    return blocks


def _dp_label(level) -> str:
    """A cell's dp value as a method suffix ("ε=1"); "" without DP (also an older results.csv's empty cell)."""
    dp = None if _blank(level) else parse_dp(str(level), flag="dp")
    return dp.label() if dp is not None else ""


def _privacy_utility(view: TargetView) -> list[Block]:
    """Test AUC against the privacy budget (target epsilon, and the accountant's spent epsilon beside it),
    per method with DP cells and its run without DP; only for targets whose grid has DP cells."""
    curves: dict = {}  # (method without DP, budget) -> [(target epsilon or None, label, stats)]
    for (m, b), s in view.stats.items():
        level = str(s["rows"]["dp_level"].iloc[0]) if "dp_level" in s["rows"] else ""
        base = m.replace(f" · DP {level}", "") if level else m
        target = _seed_mean(s["rows"]["dp_epsilon_target"]) if level and "dp_epsilon_target" in s["rows"] else None
        curves.setdefault((base, b), []).append((target, level, s))
    curves = {k: sorted(v, key=lambda e: (e[0] is not None, e[0] or 0)) for k, v in curves.items()
              if any(e[1] for e in v)}
    if not curves:
        return []
    rows = []
    for (base, b), entries in curves.items():
        for target, level, s in entries:
            spent = _seed_mean(s["rows"]["dp_epsilon"]) if level and "dp_epsilon" in s["rows"] else float("nan")
            rows.append([base, f"{b} ({view.n_of[b]} labels)" if view.n_of.get(b) else b, level or "no DP",
                         _fmt_score(spent) if level else "∞", str(len(s["seeds"])), format_ci(s["auc"], s["ci"]),
                         _fmt_score(s["val_auc"])])
    return [Heading("Privacy-utility curve (differential privacy, DP-SGD)", 3),
            Paragraph("Test AUC (mean over seeds, 95% CI) of each method trained with DP-SGD at each target epsilon, "
                      "beside the same method without DP. Spent ε is the accountant's (PRV) epsilon after the steps "
                      "actually taken (early stopping can stop before the planned steps), at the δ recorded in each "
                      "cell's metrics.json. The guarantee covers the target's labelled training examples; the "
                      "validation split (epoch, threshold, calibration) and the source model are not covered."),
            Plot(_privacy_png(view, curves), f"Privacy-utility curve, {view.target}"),
            Table(["method", "budget", "DP", "spent ε (mean)", "seeds", "test AUC [95% CI]", "val AUC"], rows)]


# One target's part of the report, in order: a new table or plot is a function of the view and one line here.
TARGET_SECTIONS = [_test_splits, _warnings, _curves, _privacy_utility, _validation_table, _auc_table, _comparisons,
                   _per_backbone, _operating_point, _diagnostics]


# ----------------------------------------------------------------------------- plots


def _curves_png(view: TargetView) -> str:
    """Seed-mean test AUC vs labelled examples, a paired-bootstrap band per method; the budgets' label
    counts are the x ticks."""
    fig = Figure(figsize=(7.5, 4.2))
    ax = fig.subplots()
    colours = iter(f"C{i}" for i in range(100))
    for m in view.methods:
        pts = sorted((s["n_labels"], s["auc"], *s["ci"]) for (mm, _), s in view.stats.items() if mm == m)
        x, v, lo, hi = (np.array(a, dtype=float) for a in zip(*pts))
        colour, ls = _baseline_style(view.strategy(m)) or (next(colours), "-")
        style = dict(color=colour, ls=ls)
        if (x <= 0).all():  # no target labels (e.g. source-only): a horizontal reference line
            ax.axhline(v.mean(), label=f"{m} (no target labels)", **style)
            ax.axhspan(np.nanmin(lo), np.nanmax(hi), color=style["color"], alpha=0.08)
            continue
        keep = x > 0
        ax.plot(x[keep], v[keep], marker="o", ms=4, label=m, **style)
        ax.fill_between(x[keep], lo[keep], hi[keep], color=style["color"], alpha=0.15, lw=0)
    scale = _label_axis(ax, sorted({s["n_labels"] for s in view.stats.values() if s["n_labels"] > 0}))
    ax.set_xlabel(f"labelled target examples{scale}")
    ax.set_ylabel("test AUC (mean over seeds)")
    ax.set_title(f"Data efficiency: {view.target} · {view.backbone}", fontsize=11)
    ax.grid(alpha=0.3, which="major")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    return png(fig)


def _privacy_png(view: TargetView, curves: dict) -> str:
    """Seed-mean test AUC vs target epsilon (log axis) with its paired-bootstrap CI, one line per method and
    budget; the method without DP as a dashed line and band of the same colour."""
    fig = Figure(figsize=(7.5, 4.2))
    ax = fig.subplots()
    ticks = set()
    for i, ((base, b), entries) in enumerate(curves.items()):
        colour = f"C{i % 10}"
        label = base if len(view.budgets) == 1 else f"{base}, budget {b}"
        private = [(t, s) for t, level, s in entries if level and t is not None and np.isfinite(t)]
        if private:
            x = np.array([t for t, _ in private])
            v = np.array([s["auc"] for _, s in private])
            lo = np.array([s["ci"][0] for _, s in private])
            hi = np.array([s["ci"][1] for _, s in private])
            ax.plot(x, v, marker="o", ms=4, color=colour, label=f"{label} (DP)")
            ax.fill_between(x, lo, hi, color=colour, alpha=0.15, lw=0)
            ticks |= set(x.tolist())
        for t, level, s in entries:
            if not level:
                ax.axhline(s["auc"], color=colour, ls="--", label=f"{label} (no DP)")
                if np.isfinite(s["ci"]).all():
                    ax.axhspan(s["ci"][0], s["ci"][1], color=colour, alpha=0.06)
    ax.set_xscale("log")
    if ticks:
        ax.xaxis.set_major_locator(FixedLocator(sorted(ticks)))
        ax.xaxis.set_major_formatter(FixedFormatter([f"{t:g}" for t in sorted(ticks)]))
        ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("target ε (log scale; smaller is more private)")
    ax.set_ylabel("test AUC (mean over seeds)")
    ax.set_title(f"Privacy-utility: {view.target} · {view.backbone}", fontsize=11)
    ax.grid(alpha=0.3, which="major")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    return png(fig)


def _label_axis(ax, counts: list) -> str:
    """Ticks at the budgets' label counts, written as plain numbers, no minor ticks: a log axis when the
    budgets span a factor 10 or more, else a linear one. Returns the axis label's note on the scale."""
    if not counts:
        return ""
    log = counts[-1] / counts[0] >= 10
    if log:
        ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(counts))
    ax.xaxis.set_major_formatter(FixedFormatter([f"{c:g}" for c in counts]))
    ax.xaxis.set_minor_locator(NullLocator())
    return " (log scale)" if log else ""


def _roc(y, p, task):
    """(fpr, tpr): the positive class for binary; the macro mean of one-vs-rest curves otherwise."""
    if task == "binary":
        fpr, tpr, _ = roc_curve(y, p[:, 1])
        return fpr, tpr
    grid, curves = np.linspace(0, 1, 201), []
    for k in range(p.shape[1]):
        pos = (y == k) if task == "multiclass" else (y[:, k] == 1)
        if 0 < pos.sum() < len(pos):
            fpr, tpr, _ = roc_curve(pos, p[:, k])
            curves.append(np.interp(grid, fpr, tpr))
    return grid, np.mean(curves, axis=0)


def _diagnostics_png(y, task, pred: Predictions, method, strategy, seed, reference, budget) -> str:
    """ROC, reliability diagram and confusion matrix of one model, side by side; ``reference`` is an
    optional (strategy, Predictions) drawn dashed in the ROC panel."""
    p = pred.prob
    fig = Figure(figsize=(13, 4.3), layout="constrained")
    roc_ax, rel_ax, cm_ax = fig.subplots(1, 3)
    curves = [(strategy, p, "-")] + ([(reference[0], reference[1].prob, "--")] if reference else [])
    for name, probs, style in curves:
        fpr, tpr = _roc(y, probs, task)
        auc = auc_paired_mean_ci(y, [probs], n_boot=0, task=task)["value"]
        roc_ax.plot(fpr, tpr, ls=style, label=f"{name}: AUC {auc:.3f}")
    roc_ax.plot([0, 1], [0, 1], color="grey", lw=0.8)
    roc_ax.set(xlabel="false positive rate", ylabel="true positive rate",
               title="ROC" + ("" if task == "binary" else " (macro one-vs-rest)"))
    roc_ax.legend(fontsize=8, loc="lower right")
    _reliability(rel_ax, y, p, task, pred.classes)
    _confusion(cm_ax, y, pred, task)
    fig.suptitle(f"{method} · budget {budget} · seed {seed}", fontsize=11)
    return png(fig)


def _reliability(ax, y, p, task, classes) -> None:
    if task == "binary":  # the second class's probability; the positive class's diagram is its mirror image
        target, conf, what = y.astype(float), p[:, 1], f"predicted probability of {classes[1]!r}"
    elif task == "multiclass":
        target, conf, what = (p.argmax(1) == y).astype(float), p.max(1), "confidence of the predicted class"
    else:
        target, conf, what = y.ravel().astype(float), p.ravel(), "predicted probability (all labels)"
    bins = np.digitize(conf, np.linspace(0, 1, 11)[1:-1], right=True)  # the (lo, hi] bins of the ECE
    used = [k for k in range(10) if (bins == k).any()]
    ax.bar(np.arange(10) / 10 + 0.05, np.bincount(bins, minlength=10) / len(bins), width=0.1,
           color="lightgrey", edgecolor="grey", label="share of samples")
    ax.plot([conf[bins == k].mean() for k in used], [target[bins == k].mean() for k in used], "o-",
            color="C0", ms=4, label="model (bin means)")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--", label="perfect calibration")
    ax.set(xlim=(0, 1), ylim=(-0.02, 1.02), xlabel=what, ylabel="observed frequency",
           title=f"Reliability (ECE {expected_calibration_error(target, conf):.3f})")
    ax.legend(fontsize=8, loc="upper left")


def _decisions(pred: Predictions) -> tuple[np.ndarray, str]:
    """Class indices decided at the run's operating point, or the argmax when the folder did not save them."""
    if pred.predicted is not None and all(v in pred.classes for v in pred.predicted):
        return np.array([pred.classes.index(v) for v in pred.predicted]), "predicted (operating point)"
    return pred.prob.argmax(1), "predicted (argmax)"


def _confusion(ax, y, pred: Predictions, task) -> None:
    if task == "multilabel":
        ax.axis("off")
        ax.text(0.5, 0.5, "no confusion matrix\nfor multilabel tasks", ha="center", va="center")
        return
    decided, what = _decisions(pred)
    cm = confusion_matrix(y, decided, labels=range(len(pred.classes)))
    ax.imshow(cm, cmap="Blues")
    names = [c[:12] for c in pred.classes]
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7 if len(names) > 4 else 9)
    ax.set_yticks(range(len(names)), names, fontsize=7 if len(names) > 4 else 9)
    for (i, j), n in np.ndenumerate(cm):
        ax.text(j, i, str(n), ha="center", va="center", fontsize=7 if len(names) > 4 else 10,
                color="white" if n > cm.max() / 2 else "black")
    ax.set(xlabel=what, ylabel="true", title="Confusion matrix")
