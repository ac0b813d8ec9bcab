"""Experiment report: data-efficiency curves, paired comparisons, ROC/calibration/confusion, environment.

Why one self-contained HTML file: a report gets mailed, archived and opened offline long after the run,
so every plot is an embedded base64 PNG and nothing is fetched. ``report.md`` carries the same tables
for diffs and reviews. All numbers are recomputed from the saved per-sample test predictions, so every
CI is a seeded bootstrap over the *same* test patients for all models of a target (DESIGN.md,
Evaluation principles): the seed-mean AUC of a method and the paired difference between two methods.
With repeated hold-out (``resplit``: each seed redraws the split) the models of one seed share a test
split, and each split is resampled on its own.

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
from typing import Callable

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.metrics import confusion_matrix, roc_curve

from ..evaluation.metrics import auc_paired_difference, auc_paired_mean_ci, expected_calibration_error
from ..experiment import short
from ..strategies import STRATEGIES
from .blocks import Block, Bullets, Heading, Paragraph, Plot, Pre, Table, png, to_html, to_markdown

# Baselines are drawn in greys and dashes, given out in the order of `baselines()`; transfer methods get colours.
_BASELINE_STYLES = [("black", "--"), ("dimgrey", "-."), ("grey", ":"), ("saddlebrown", ":"), ("darkgrey", "-.")]
_CHROMIUM = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


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
    """A kind of baseline the best transfer method is compared with, defined by tags rather than a name."""
    fits: Callable[[type], bool]
    say_missing: bool  # when no such baseline ran at a budget, say so in the sentence

    def matches(self, strategy: str) -> bool:
        return is_baseline(strategy) and self.fits(STRATEGIES[strategy])

    def name_in(self, strategies) -> str:
        """The strategies of this kind among ``strategies`` ("a/b"); when none ran, the first registered one,
        so the report can still say which comparison is missing."""
        found = list(dict.fromkeys(s for s in strategies if self.matches(s)))
        return "/".join(found) or next((n for n in baselines() if self.matches(n)), "baseline")


# (a) no source at all, the same network trained from random weights (today: scratch);
# (b) the source used without target labels (source-only, source-model).
NO_SOURCE = Reference(lambda c: not c.needs_source_model and not c.needs_source_data and c.uses_backbone, True)
NO_TARGET_LABELS = Reference(lambda c: not c.needs_labels, False)
REFERENCES = (NO_SOURCE, NO_TARGET_LABELS)


def baselines() -> list[str]:
    """The registered baselines: the no-source ones first (every transfer is measured against them), then
    in registry order. Fixes the order the summary names them in and each baseline's line style."""
    return sorted((n for n, c in STRATEGIES.items() if c.baseline), key=lambda n: not NO_SOURCE.matches(n))


def _baseline_style(strategy: str) -> tuple[str, str] | None:
    order = baselines()
    return _BASELINE_STYLES[order.index(strategy) % len(_BASELINE_STYLES)] if strategy in order else None


# ----------------------------------------------------------------------------- loading


def _method(strategy: str, source: str) -> str:
    return strategy if source in ("none", "") else f"{strategy} ← {short(source)}"


def _read_predictions(path: Path):
    """Test rows of one predictions.csv, in index order: (labels, probabilities, class names)."""
    frame = pd.read_csv(path)
    test = frame[frame["split"] == "test"].sort_values("index")
    prob_cols = [c for c in test.columns if c.startswith("prob_")]
    label_cols = ["label"] if "label" in test.columns else [c for c in test.columns if c.startswith("label_")]
    if test.empty or not prob_cols or not label_cols:
        raise ValueError("no test rows, prob_* or label columns")
    y = test[label_cols].to_numpy()
    return (y[:, 0] if label_cols == ["label"] else y), test[prob_cols].to_numpy(float), [c[5:] for c in prob_cols]


def _load(exp: Path):
    """Results rows that have usable test predictions, those predictions by cell, and the failed cells."""
    res = pd.read_csv(exp / "results.csv", dtype={"cell_id": str, "budget": str, "source": str})
    res["source"] = res["source"].fillna("none")
    res["split_seed"] = res.get("split_seed", pd.Series(0, index=res.index)).fillna(0).astype(int)
    res["method"] = [_method(st, so) for st, so in zip(res["strategy"], res["source"])]
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


def _fmt(value, ci, signed=False) -> str:
    f = "{:+.3f}" if signed else "{:.3f}"
    if not np.isfinite(value):
        return "n/a"
    return f.format(value) + (f" [{f.format(ci[0])}, {f.format(ci[1])}]" if np.isfinite(ci).all() else "")


def _fmt_p(p) -> str:
    return "n/a" if not np.isfinite(p) else "< 0.001" if p < 0.001 else f"{p:.3f}"


def _significant(diff) -> bool | None:
    """Whether the 95% CI of a difference excludes zero; None when the CI is undefined."""
    lo, hi = diff["ci"]
    return None if not (np.isfinite(lo) and np.isfinite(hi)) else not lo <= 0 <= hi


def _verdict(diff, best) -> str:
    sig = _significant(diff)
    if sig is None:
        return "the CI is undefined"
    if not sig:
        return "not significant (the 95% CI includes zero)"
    return f"significant (the 95% CI excludes zero; {best} is {'better' if diff['value'] > 0 else 'worse'})"


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
        Paragraph(f"AUC is the test-set ROC AUC (macro one-vs-rest for multiclass/multilabel), averaged over seeds. "
                  f"95% CIs are percentile bootstraps over test samples ({n_boot} resamples, seed {seed}), paired: "
                  "every model of a target is scored on the same resamples. Baselines "
                  f"({', '.join(present) or 'none in this experiment'}) are excluded when choosing the best method. "
                  "Differences are 'best minus baseline' in seed-mean AUC with a two-sided bootstrap p-value."),
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
    y: dict  # test labels per split seed
    preds: dict  # cell id -> (labels, probabilities, classes)
    stats: dict  # (method, budget) -> dict(auc, ci, n_labels, cells, seeds, splits, strategy)
    budgets: list
    n_of: dict  # budget -> median number of labels ("" when it has none)
    methods: list  # table order: transfer methods, then baselines
    best_at: dict  # budget -> the best transfer (non-baseline) method
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
    """Curves, the AUC table, the comparisons and diagnostics for one target (all its backbones)."""
    view = _target_view(target, backbone, group, preds, failed, n_boot, seed)
    return [Heading(f"{target} · {backbone}")] + [b for section in TARGET_SECTIONS for b in section(view)]


def _target_view(target, backbone, group, preds, failed, n_boot, seed) -> TargetView:
    """Pair the cells of a target on their shared test split(s) and bootstrap every (method, budget)."""
    y, keep = {}, []  # y: test labels per split seed (one split for a fixed test set)
    for split, cells in group.groupby("split_seed"):
        keys = [(preds[c][0].shape, preds[c][0].tobytes()) for c in cells["cell_id"]]
        common = Counter(keys).most_common(1)[0][0]  # the test split that (almost) every cell shares
        for (_, row), key in zip(cells.iterrows(), keys):
            if key != common:
                failed.append([row["cell_id"], target, row["method"], row["budget"], str(row["seed"]),
                               "test labels differ from the target's other cells (not paired); left out"])
            else:
                keep.append(row["cell_id"])
        y[split] = preds[cells["cell_id"].iloc[keys.index(common)]][0]
    group = group[group["cell_id"].isin(keep)]
    task = group["task"].iloc[0]
    stats = {}
    for (method, budget), cells in group.groupby(["method", "budget"], sort=False):
        cells = cells.sort_values("seed")
        ci = auc_paired_mean_ci(y, [preds[c][1] for c in cells["cell_id"]], n_boot=n_boot, seed=seed, task=task,
                                split_of=list(cells["split_seed"]))
        stats[method, budget] = dict(auc=ci["value"], ci=ci["ci"], n_labels=float(cells["n_labels"].median()),
                                     cells=list(cells["cell_id"]), seeds=list(cells["seed"]),
                                     splits=list(cells["split_seed"]), strategy=cells["strategy"].iloc[0])
    labels = group[group["n_labels"] > 0].groupby("budget")["n_labels"].median().sort_values()
    budgets = list(labels.index) + sorted(set(group["budget"]) - set(labels.index))
    strategy_of = {}
    for (m, _), s in stats.items():
        strategy_of.setdefault(m, s["strategy"])
    methods = sorted(strategy_of, key=lambda m: (is_baseline(strategy_of[m]), m))
    return TargetView(target, backbone, task, y, preds, stats, budgets,
                      {b: f"{labels[b]:.0f}" if b in labels else "" for b in budgets}, methods,
                      _best_at(stats, budgets), n_boot, seed)


def _best_at(stats, budgets) -> dict:
    """The highest seed-mean AUC among the transfer (non-baseline) methods at each budget that has one."""
    best = {}
    for b in budgets:
        cands = {m: s for (m, bb), s in stats.items() if bb == b and not is_baseline(s["strategy"])
                 and np.isfinite(s["auc"])}
        if cands:
            best[b] = max(cands, key=lambda m: cands[m]["auc"])
    return best


def _curves(view: TargetView) -> list[Block]:
    return [Plot(_curves_png(view), f"Test AUC vs labelled examples, {view.target}")]


def _auc_table(view: TargetView) -> list[Block]:
    stats, budgets = view.stats, view.budgets
    rows = [[m, "–".join(sorted({str(len(stats[m, b]["seeds"])) for b in budgets if (m, b) in stats}))]
            + [_fmt(stats[m, b]["auc"], stats[m, b]["ci"]) if (m, b) in stats else "" for b in budgets]
            for m in view.methods]
    header = ["method", "seeds"] + [f"{b} ({view.n_of[b]} labels)" if view.n_of[b] else b for b in budgets]
    return [Heading("Test AUC, mean over seeds [95% CI]", 3), Table(header, rows)]


def _reference(here: dict, best: str, ref: Reference) -> str | None:
    """The baseline of kind ``ref`` at a budget: the one with the best method's source, else the first."""
    others = [m for m, s in here.items() if ref.matches(s["strategy"])]
    same_source = [m for m in others if m.partition(" ← ")[2] == best.partition(" ← ")[2]]
    return (same_source or others or [None])[0]


def _comparisons(view: TargetView) -> list[Block]:
    """Best transfer method per budget and its paired AUC difference against each kind of reference baseline."""
    names = {ref: view.reference_name(ref) for ref in REFERENCES}
    rows, sentences = [], []
    for b in view.budgets:
        if b not in view.best_at:
            sentences.append(f"Budget {b}: no transfer (non-baseline) method finished; no comparison.")
            continue
        here, best = view.at(b), view.best_at[b]
        line = [b, view.n_of[b], best, _fmt(here[best]["auc"], here[best]["ci"])]
        text = f"Budget {b}: best transfer method {best}, AUC {_fmt(here[best]['auc'], here[best]['ci'])}."
        for ref in REFERENCES:
            other = _reference(here, best, ref)
            if other is None:
                line += ["–", "–"]
                if ref.say_missing:
                    text += f" No {names[ref]} cell at this budget, so no comparison against {names[ref]}."
                continue
            d = auc_paired_difference(view.y, [view.preds[c][1] for c in here[best]["cells"]],
                                      [view.preds[c][1] for c in here[other]["cells"]], n_boot=view.n_boot,
                                      seed=view.seed, task=view.task, split_of_a=here[best]["splits"],
                                      split_of_b=here[other]["splits"])
            line += [_fmt(d["value"], d["ci"], signed=True) + (" (n.s.)" if _significant(d) is False else ""),
                     _fmt_p(d["p"])]
            text += (f" Against {other}: ΔAUC {_fmt(d['value'], d['ci'], signed=True)}, p = {_fmt_p(d['p'])}, "
                     f"{_verdict(d, best)}.")
        rows.append(line)
        sentences.append(text)
    blocks = [Heading("Best transfer method against the baselines", 3)]
    if rows:
        header = ["budget", "labels", "best method", "AUC [95% CI]"]
        for ref in REFERENCES:
            header += [f"Δ vs {names[ref]} [95% CI]", "p"]
        blocks.append(Table(header, rows))
    return blocks + [Bullets(sentences)]


def _diagnostics(view: TargetView) -> list[Block]:
    """ROC / reliability / confusion figures of the best method at the smallest and the largest budget."""
    chosen = list(dict.fromkeys(b for b in (view.budgets[0], view.budgets[-1]) if b in view.best_at))
    if not chosen:
        return []
    name = view.reference_name(NO_SOURCE)
    blocks = [Heading("Diagnostics of the best method at the smallest and largest budget", 3),
              Paragraph("Each figure uses the predictions of a single model, the lowest seed of that method (seed 0 "
                        f"when present), not a seed ensemble. The ROC panel also shows {name} (its lowest seed) at "
                        "the same budget when available. Confusion matrices use the argmax class.")]
    for b in chosen:
        method = view.best_at[b]
        best = view.stats[method, b]
        split = best["splits"][0]  # the reference is drawn on the same test split
        refs = [s for s in view.at(b).values() if NO_SOURCE.matches(s["strategy"]) and split in s["splits"]]
        ref = (refs[0]["strategy"], view.preds[refs[0]["cells"][refs[0]["splits"].index(split)]]) if refs else None
        image = _diagnostics_png(view.y[split], view.task, view.preds[best["cells"][0]], method, best["strategy"],
                                 int(best["seeds"][0]), ref, b)
        blocks.append(Plot(image, f"ROC, reliability and confusion matrix of {method} at budget {b}"))
    return blocks


# One target's part of the report, in order: a new table or plot is a function of the view and one line here.
TARGET_SECTIONS = [_curves, _auc_table, _comparisons, _diagnostics]


# ----------------------------------------------------------------------------- plots


def _curves_png(view: TargetView) -> str:
    """Seed-mean test AUC vs labelled examples (log x), a paired-bootstrap band per method."""
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
    ax.set_xscale("log")
    ax.set_xlabel("labelled target examples (log scale)")
    ax.set_ylabel("test AUC (mean over seeds)")
    ax.set_title(f"Data efficiency: {view.target} · {view.backbone}", fontsize=11)
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    return png(fig)


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


def _diagnostics_png(y, task, pred, method, strategy, seed, reference, budget) -> str:
    """ROC, reliability diagram and confusion matrix of one model, side by side; ``reference`` is an
    optional (strategy, predictions) drawn dashed in the ROC panel."""
    _, p, classes = pred
    fig = Figure(figsize=(13, 4.3), layout="constrained")
    roc_ax, rel_ax, cm_ax = fig.subplots(1, 3)
    curves = [(strategy, p, "-")] + ([(reference[0], reference[1][1], "--")] if reference else [])
    for name, probs, style in curves:
        fpr, tpr = _roc(y, probs, task)
        auc = auc_paired_mean_ci(y, [probs], n_boot=0, task=task)["value"]
        roc_ax.plot(fpr, tpr, ls=style, label=f"{name}: AUC {auc:.3f}")
    roc_ax.plot([0, 1], [0, 1], color="grey", lw=0.8)
    roc_ax.set(xlabel="false positive rate", ylabel="true positive rate",
               title="ROC" + ("" if task == "binary" else " (macro one-vs-rest)"))
    roc_ax.legend(fontsize=8, loc="lower right")
    _reliability(rel_ax, y, p, task)
    _confusion(cm_ax, y, p, task, classes)
    fig.suptitle(f"{method} · budget {budget} · seed {seed}", fontsize=11)
    return png(fig)


def _reliability(ax, y, p, task) -> None:
    if task == "binary":
        target, conf, what = y.astype(float), p[:, 1], "predicted probability of the positive class"
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


def _confusion(ax, y, p, task, classes) -> None:
    if task == "multilabel":
        ax.axis("off")
        ax.text(0.5, 0.5, "no confusion matrix\nfor multilabel tasks", ha="center", va="center")
        return
    cm = confusion_matrix(y, p.argmax(1), labels=range(len(classes)))
    ax.imshow(cm, cmap="Blues")
    names = [c[:12] for c in classes]
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7 if len(names) > 4 else 9)
    ax.set_yticks(range(len(names)), names, fontsize=7 if len(names) > 4 else 9)
    for (i, j), n in np.ndenumerate(cm):
        ax.text(j, i, str(n), ha="center", va="center", fontsize=7 if len(names) > 4 else 10,
                color="white" if n > cm.max() / 2 else "black")
    ax.set(xlabel="predicted (argmax)", ylabel="true", title="Confusion matrix")
