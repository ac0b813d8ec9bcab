"""Experiment report: data-efficiency curves, paired comparisons, ROC/calibration/confusion, environment.

Why one self-contained HTML file: a report gets mailed, archived and opened offline long after the run,
so every plot is an embedded base64 PNG and nothing is fetched. ``report.md`` carries the same tables
for diffs and reviews. All numbers are recomputed from the saved per-sample test predictions, so every
CI is a seeded bootstrap over the *same* test patients for all models of a target (DESIGN.md,
Evaluation principles): the seed-mean AUC of a method and the paired difference between two methods.
With repeated hold-out (``resplit``: each seed redraws the split) the models of one seed share a test
split, and each split is resampled on its own.

Figures are built with ``matplotlib.figure.Figure`` (rendered by Agg on ``savefig``) instead of pyplot,
so no global backend or figure registry is touched and nothing has to be closed.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.metrics import confusion_matrix, roc_curve

from ..experiment import short
from .metrics import auc_paired_difference, auc_paired_mean_ci, expected_calibration_error

BASELINES = ("scratch", "target-only", "source-only", "pooled")
_BASELINE_STYLE = {"scratch": ("black", "--"), "target-only": ("dimgrey", "-."),
                   "source-only": ("grey", ":"), "pooled": ("saddlebrown", ":")}  # transfer methods get colours
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
        blocks += [("h2", "Failed or missing cells"),
                   ("table", ["cell", "target", "method", "budget", "seed", "reason"], failed)]
    blocks += _environment(exp)
    title = f"medtransfer report: {exp.resolve().name}"
    html_path, md_path = exp / "report.html", exp / "report.md"
    html_path.write_text(_to_html(title, blocks), encoding="utf-8")
    md_path.write_text(_to_markdown(title, blocks), encoding="utf-8")
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
        reason = None
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


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


# ----------------------------------------------------------------------------- sections


def _summary(rows, failed, n_boot, seed):
    seeds = sorted(rows["seed"].unique().tolist()) if len(rows) else []
    resplit = [("p", "Repeated hold-out: each seed redrew the target's train/val/test split, so the seed mean "
                     "averages over test splits too; the bootstrap resamples each split's test set on its own "
                     "and the models of one seed share its resamples.")] if rows["split_seed"].nunique() > 1 else []
    return resplit + [
        ("p", f"{len(rows) + len(failed)} cells: {len(rows)} with test predictions, {len(failed)} failed or missing. "
              f"Targets: {', '.join(sorted(rows['target'].unique())) or 'none'}. Seeds: {seeds or 'none'}."),
        ("p", f"AUC is the test-set ROC AUC (macro one-vs-rest for multiclass/multilabel), averaged over seeds. "
              f"95% CIs are percentile bootstraps over test samples ({n_boot} resamples, seed {seed}), paired: "
              "every model of a target is scored on the same resamples. Baselines "
              f"({', '.join(BASELINES)}) are excluded when choosing the best method. Differences are "
              "'best minus baseline' in seed-mean AUC with a two-sided bootstrap p-value."),
    ]


def _target_section(target, backbone, group, preds, failed, n_boot, seed):
    """Curves, the AUC table, the comparisons and diagnostics for one target (all its backbones)."""
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
    stats = {}  # (method, budget) -> dict(auc, ci, n_labels, seeds, splits, cells, strategy)
    for (method, budget), cells in group.groupby(["method", "budget"], sort=False):
        cells = cells.sort_values("seed")
        ci = auc_paired_mean_ci(y, [preds[c][1] for c in cells["cell_id"]], n_boot=n_boot, seed=seed, task=task,
                                split_of=list(cells["split_seed"]))
        stats[method, budget] = dict(auc=ci["value"], ci=ci["ci"], n_labels=float(cells["n_labels"].median()),
                                     cells=list(cells["cell_id"]), seeds=list(cells["seed"]),
                                     splits=list(cells["split_seed"]), strategy=cells["strategy"].iloc[0])
    labels = group[group["n_labels"] > 0].groupby("budget")["n_labels"].median().sort_values()
    budgets = list(labels.index) + sorted(set(group["budget"]) - set(labels.index))
    n_of = {b: f"{labels[b]:.0f}" if b in labels else "" for b in budgets}
    methods = sorted({m for m, _ in stats}, key=lambda m: (_strategy_of(stats, m) in BASELINES, m))
    table = [[m, "–".join(sorted({str(len(stats[m, b]["seeds"])) for b in budgets if (m, b) in stats}))]
             + [_fmt(stats[m, b]["auc"], stats[m, b]["ci"]) if (m, b) in stats else "" for b in budgets]
             for m in methods]
    blocks = [("h2", f"{target} · {backbone}"),
              ("img", _curves_png(target, backbone, stats, methods), f"Test AUC vs labelled examples, {target}"),
              ("h3", "Test AUC, mean over seeds [95% CI]"),
              ("table", ["method", "seeds"] + [f"{b} ({n_of[b]} labels)" if n_of[b] else b for b in budgets], table)]
    best_at, comparison = _comparisons(y, task, stats, budgets, n_of, preds, n_boot, seed)
    return blocks + comparison + _diagnostics(y, task, stats, budgets, best_at, preds)


def _comparisons(y, task, stats, budgets, n_of, preds, n_boot, seed):
    """Best non-baseline method per budget and its paired AUC difference against scratch and source-only."""
    rows, sentences, best_at = [], [], {}
    for b in budgets:
        here = {m: s for (m, bb), s in stats.items() if bb == b}
        cands = {m: s for m, s in here.items() if s["strategy"] not in BASELINES and np.isfinite(s["auc"])}
        if not cands:
            sentences.append(f"Budget {b}: no transfer (non-baseline) method finished; no comparison.")
            continue
        best = best_at[b] = max(cands, key=lambda m: cands[m]["auc"])
        line = [b, n_of[b], best, _fmt(here[best]["auc"], here[best]["ci"])]
        text = f"Budget {b}: best transfer method {best}, AUC {_fmt(here[best]['auc'], here[best]['ci'])}."
        for base in ("scratch", "source-only"):
            others = [m for m, s in here.items() if s["strategy"] == base]
            if not others:
                line += ["–", "–"]
                if base == "scratch":
                    text += " No scratch cell at this budget, so no comparison against scratch."
                continue
            same_source = [m for m in others if m.partition(" ← ")[2] == best.partition(" ← ")[2]]
            other = (same_source or others)[0]
            d = auc_paired_difference(y, [preds[c][1] for c in here[best]["cells"]],
                                      [preds[c][1] for c in here[other]["cells"]], n_boot=n_boot, seed=seed,
                                      task=task, split_of_a=here[best]["splits"], split_of_b=here[other]["splits"])
            line += [_fmt(d["value"], d["ci"], signed=True) + (" (n.s.)" if _significant(d) is False else ""),
                     _fmt_p(d["p"])]
            text += (f" Against {other}: ΔAUC {_fmt(d['value'], d['ci'], signed=True)}, p = {_fmt_p(d['p'])}, "
                     f"{_verdict(d, best)}.")
        rows.append(line)
        sentences.append(text)
    blocks = [("h3", "Best transfer method against the baselines")]
    if rows:
        blocks.append(("table", ["budget", "labels", "best method", "AUC [95% CI]", "Δ vs scratch [95% CI]", "p",
                                 "Δ vs source-only [95% CI]", "p"], rows))
    return best_at, blocks + [("ul", sentences)]


def _diagnostics(y, task, stats, budgets, best_at, preds):
    """ROC / reliability / confusion figures of the best method at the smallest and the largest budget."""
    chosen = list(dict.fromkeys(b for b in (budgets[0], budgets[-1]) if b in best_at))
    if not chosen:
        return []
    blocks = [("h3", "Diagnostics of the best method at the smallest and largest budget"),
              ("p", "Each figure uses the predictions of a single model, the lowest seed of that method (seed 0 "
                    "when present), not a seed ensemble. The ROC panel also shows scratch (its lowest seed) at the "
                    "same budget when available. Confusion matrices use the argmax class.")]
    for b in chosen:
        best = stats[best_at[b], b]
        split = best["splits"][0]  # scratch is drawn on the same test split
        scratch = [s["cells"][s["splits"].index(split)] for (m, bb), s in stats.items()
                   if bb == b and s["strategy"] == "scratch" and split in s["splits"]]
        png = _diagnostics_png(y[split], task, preds[best["cells"][0]], best_at[b], best["strategy"],
                               int(best["seeds"][0]), preds[scratch[0]] if scratch else None, b)
        blocks.append(("img", png, f"ROC, reliability and confusion matrix of {best_at[b]} at budget {b}"))
    return blocks


def _strategy_of(stats, method):
    """The strategy behind a method label (labels carry the source too)."""
    return next(s["strategy"] for (m, _), s in stats.items() if m == method)


def _environment(exp):
    blocks = [("h2", "Environment")]
    env_path, cfg_path = exp / "environment.json", exp / "config.yaml"
    if env_path.is_file():
        env = json.loads(env_path.read_text(encoding="utf-8"))
        blocks.append(("table", ["key", "value"], [list(kv) for kv in _flatten(env)]))
    else:
        blocks.append(("p", "environment.json not found."))
    blocks.append(("h2", "Experiment config (verbatim)"))
    config = cfg_path.read_text(encoding="utf-8") if cfg_path.is_file() else None
    blocks.append(("pre", config) if config is not None else ("p", "config.yaml not found."))
    return blocks


def _flatten(d, prefix=""):
    for key, value in d.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", ", ".join(map(str, value)) if isinstance(value, list) else str(value)


# ----------------------------------------------------------------------------- plots


def _curves_png(target, backbone, stats, methods) -> str:
    """Seed-mean test AUC vs labelled examples (log x), a paired-bootstrap band per method."""
    fig = Figure(figsize=(7.5, 4.2))
    ax = fig.subplots()
    colours = iter(f"C{i}" for i in range(100))
    for m in methods:
        pts = sorted((s["n_labels"], s["auc"], *s["ci"]) for (mm, _), s in stats.items() if mm == m)
        x, v, lo, hi = (np.array(a, dtype=float) for a in zip(*pts))
        strategy = _strategy_of(stats, m)
        colour, ls = _BASELINE_STYLE.get(strategy) or (next(colours), "-")
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
    ax.set_title(f"Data efficiency: {target} · {backbone}", fontsize=11)
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    return _png(fig)


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


def _diagnostics_png(y, task, pred, method, strategy, seed, scratch, budget) -> str:
    """ROC, reliability diagram and confusion matrix of one model, side by side."""
    _, p, classes = pred
    fig = Figure(figsize=(13, 4.3), layout="constrained")
    roc_ax, rel_ax, cm_ax = fig.subplots(1, 3)
    for name, probs, style in [(strategy, p, "-")] + ([("scratch", scratch[1], "--")] if scratch else []):
        fpr, tpr = _roc(y, probs, task)
        auc = auc_paired_mean_ci(y, [probs], n_boot=0, task=task)["value"]
        roc_ax.plot(fpr, tpr, ls=style, label=f"{name}: AUC {auc:.3f}")
    roc_ax.plot([0, 1], [0, 1], color="grey", lw=0.8)
    roc_ax.set(xlabel="false positive rate", ylabel="true positive rate",
               title="ROC" + ("" if task == "binary" else " (macro one-vs-rest)"))
    roc_ax.legend(fontsize=8, loc="lower right")
    if task == "binary":
        target, conf, what = y.astype(float), p[:, 1], "predicted probability of the positive class"
    elif task == "multiclass":
        target, conf, what = (p.argmax(1) == y).astype(float), p.max(1), "confidence of the predicted class"
    else:
        target, conf, what = y.ravel().astype(float), p.ravel(), "predicted probability (all labels)"
    bins = np.digitize(conf, np.linspace(0, 1, 11)[1:-1], right=True)  # the (lo, hi] bins of the ECE
    used = [k for k in range(10) if (bins == k).any()]
    rel_ax.bar(np.arange(10) / 10 + 0.05, np.bincount(bins, minlength=10) / len(bins), width=0.1,
               color="lightgrey", edgecolor="grey", label="share of samples")
    rel_ax.plot([conf[bins == k].mean() for k in used], [target[bins == k].mean() for k in used], "o-",
                color="C0", ms=4, label="model (bin means)")
    rel_ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--", label="perfect calibration")
    rel_ax.set(xlim=(0, 1), ylim=(-0.02, 1.02), xlabel=what, ylabel="observed frequency",
               title=f"Reliability (ECE {expected_calibration_error(target, conf):.3f})")
    rel_ax.legend(fontsize=8, loc="upper left")
    if task == "multilabel":
        cm_ax.axis("off")
        cm_ax.text(0.5, 0.5, "no confusion matrix\nfor multilabel tasks", ha="center", va="center")
    else:
        cm = confusion_matrix(y, p.argmax(1), labels=range(len(classes)))
        cm_ax.imshow(cm, cmap="Blues")
        names = [c[:12] for c in classes]
        cm_ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7 if len(names) > 4 else 9)
        cm_ax.set_yticks(range(len(names)), names, fontsize=7 if len(names) > 4 else 9)
        for (i, j), n in np.ndenumerate(cm):
            cm_ax.text(j, i, str(n), ha="center", va="center", fontsize=7 if len(names) > 4 else 10,
                       color="white" if n > cm.max() / 2 else "black")
        cm_ax.set(xlabel="predicted (argmax)", ylabel="true", title="Confusion matrix")
    fig.suptitle(f"{method} · budget {budget} · seed {seed}", fontsize=11)
    return _png(fig)


# ----------------------------------------------------------------------------- rendering

_CSS = """body{font-family:system-ui,sans-serif;max-width:1150px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.8em 0;font-size:.88em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left}
th{background:#f3f3f3}tr:nth-child(even) td{background:#fafafa}img{max-width:100%;display:block;margin:.8em 0}
pre{background:#f6f6f6;padding:1em;overflow-x:auto;font-size:.85em}"""
_SCRIPT = """window.addEventListener('load', function () {
  var ok = function (img) { return img.complete && img.naturalWidth > 0; };
  document.body.dataset.plotsLoaded = String(Array.prototype.filter.call(document.images, ok).length);
});"""


def _to_html(title, blocks) -> str:
    e, out = html.escape, []
    for kind, *args in blocks:
        if kind in ("h1", "h2", "h3", "p"):
            out.append(f"<{kind}>{e(args[0])}</{kind}>")
        elif kind == "ul":
            out.append("<ul>" + "".join(f"<li>{e(t)}</li>" for t in args[0]) + "</ul>")
        elif kind == "table":
            head = "".join(f"<th>{e(h)}</th>" for h in args[0])
            body = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>" for r in args[1])
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif kind == "img":
            out.append(f'<img class="plot" alt="{e(args[1])}" src="data:image/png;base64,{args[0]}">')
        elif kind == "pre":
            out.append(f"<pre>{e(args[0])}</pre>")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>'
            f"<style>{_CSS}</style><script>{_SCRIPT}</script></head>\n<body><h1>{e(title)}</h1>\n"
            + "\n".join(out) + "\n</body></html>\n")


def _to_markdown(title, blocks) -> str:
    def cell(c):
        return str(c).replace("|", "\\|").replace("\n", " ")

    out = [f"# {title}"]
    for kind, *args in blocks:
        if kind in ("h1", "h2", "h3"):
            out.append("#" * int(kind[1]) + " " + args[0])
        elif kind == "p":
            out.append(args[0])
        elif kind == "ul":
            out.append("\n".join(f"- {t}" for t in args[0]))
        elif kind == "table":
            rows = [args[0], ["---"] * len(args[0])] + args[1]
            out.append("\n".join("| " + " | ".join(cell(c) for c in r) + " |" for r in rows))
        elif kind == "img":
            out.append(f"_Plot in report.html: {args[1]}._")
        elif kind == "pre":
            fence = "~~~~" if "```" in args[0] else "```"
            out.append(f"{fence}\n{args[0].rstrip()}\n{fence}")
    return "\n\n".join(out) + "\n"
