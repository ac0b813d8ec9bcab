"""The shift report: `shift.md` (readings first, then the tables), `shift.json` (every number) and
PNG plots next to them, built from the blocks of `reporting.blocks`. A new plot is one function of the
diagnosis (returning a matplotlib `Figure`, or None when it does not apply) plus one line in `PLOTS`.
Figures use `matplotlib.figure.Figure` (Agg on savefig), as the experiment report does: no pyplot state."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from ..evaluation.shift import ShiftDiagnosis, readings, strength
from ..runs import write_json
from .blocks import Block, Bullets, Heading, Paragraph, Plot, Table, to_markdown

SOURCE_COLOUR, TARGET_COLOUR = "tab:blue", "tab:orange"


def write_shift_report(diag: ShiftDiagnosis, out: Path) -> Path:
    """Write the report into the folder `out` (created); returns the path of shift.md."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plots = []
    for name, make in PLOTS.items():
        fig = make(diag)
        if fig is not None:
            path = out / f"{name}.png"
            fig.savefig(path, dpi=110)
            plots.append(Plot(base64.b64encode(path.read_bytes()).decode("ascii"), name, file=path.name))
    write_json(out / "shift.json", diag.to_dict())
    path = out / "shift.md"
    path.write_text(to_markdown(f"Dataset shift: {diag.source} → {diag.target}", shift_blocks(diag, plots)),
                    encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- blocks


def _f(value, digits: int = 3) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def shift_blocks(diag: ShiftDiagnosis, plots: list[Plot]) -> list[Block]:
    """The report's sections in order, readings first; then the plots (already written next to shift.md)."""
    blocks = [b for section in SECTIONS for b in section(diag)]
    return blocks + ([Heading("Plots")] + plots if plots else [])


def _reading(diag: ShiftDiagnosis) -> list[Block]:
    return [Heading("Reading"), Bullets(readings(diag))]


def _covariate(diag: ShiftDiagnosis) -> list[Block]:
    d, m = diag.domain, diag.mmd
    return [Heading("Covariate shift"),
            Paragraph(f"Compared: {diag.representation}; {diag.n_source} source and {diag.n_target} target "
                      "examples (labels not used)."),
            Table(["test", "value", "95% CI / p", "reading"], [
                [f"domain classifier AUC (logistic regression, {d['folds']}-fold out-of-fold)", _f(d["auc"]),
                 f"[{_f(d['ci'][0])}, {_f(d['ci'][1])}]", f"{strength(d['auc'])} shift"],
                [f"kernel MMD² (Gaussian kernels, {m['n_perm']} permutations)", _f(m["mmd2"], 4),
                 f"p = {m['p']:.3g}", "significant" if m["p"] < 0.05 else "not significant"]])]


def _label(diag: ShiftDiagnosis) -> list[Block]:
    lab = diag.label
    if lab is None:
        return []
    header = ["class", "source prior", "EM estimate [95% CI]", "BBSE estimate [95% CI]", "mean predicted"]
    if "true" in lab:
        header.append("target truth (not used)")
    rows = []
    for k, name in enumerate(diag.classes):
        em, bbse = lab["em_ci"][k], lab["bbse_ci"][k]
        row = [name, _f(lab["source"][k]), f"{_f(lab['em'][k])} [{_f(em[0])}, {_f(em[1])}]",
               f"{_f(lab['bbse'][k])} [{_f(bbse[0])}, {_f(bbse[1])}]", _f(lab["mean_prob"][k])]
        if "true" in lab:
            row.append(_f(lab["true"][k]))
        rows.append(row)
    return [Heading("Label shift (class prior)"),
            Paragraph(f"Source model: {diag.model}. Estimates use the source model's outputs on the "
                      f"{lab['n_target']} unlabelled target examples; BBSE's confusion matrix and EM's calibration "
                      f"temperature (T = {lab['temperature']:.2f}) come from {lab['n_source_val']} labelled source "
                      "validation examples."),
            Table(header, rows)]


def _features(diag: ShiftDiagnosis) -> list[Block]:
    if not diag.features:
        return []
    return [Heading("Which features shift"),
            Paragraph("Univariate domain AUC (max(AUC, 1 − AUC) of the feature alone), standardised mean difference "
                      "(target − source in pooled SDs; features as the source model sees them) and the "
                      f"Kolmogorov–Smirnov test. Top 15 of {len(diag.features)}."),
            Table(["feature", "univariate AUC", "SMD", "source mean", "target mean", "KS", "KS p"], [
                [f["feature"], _f(f["domain_auc"]), _f(f["smd"], 2), _f(f["mean_source"], 2),
                 _f(f["mean_target"], 2), _f(f["ks"], 2), f"{f['ks_p']:.2g}"] for f in diag.features[:15]])]


def _missing(diag: ShiftDiagnosis) -> list[Block]:
    if not diag.missing:
        return []
    return [Heading("Missing values"),
            Paragraph("Columns whose share of missing values differs by 10 points or more."),
            Table(["column", "missing at source", "missing at target"], [
                [m["column"], _f(m["source"], 2), _f(m["target"], 2)] for m in diag.missing])]


def _per_class(diag: ShiftDiagnosis) -> list[Block]:
    if not diag.per_class:
        return []
    return [Heading("Per predicted class"),
            Paragraph("Examples grouped by the source model's predicted class: each site's share, and how well the "
                      "two sites can be told apart within the class."),
            Table(["class", "share source", "share target", "domain AUC", "MMD p", "n source", "n target"], [
                [r["class"], _f(r["share_source"]), _f(r["share_target"]), _f(r["domain_auc"]),
                 "n/a" if not np.isfinite(r["mmd_p"]) else f"{r['mmd_p']:.3g}", str(r["n_source"]),
                 str(r["n_target"])] for r in diag.per_class])]


def _notes(diag: ShiftDiagnosis) -> list[Block]:
    return [Heading("Notes"), Bullets(list(diag.notes))] if diag.notes else []


# The report's sections, in order; each returns no blocks when its part of the diagnosis is absent.
SECTIONS = [_reading, _covariate, _label, _features, _missing, _per_class, _notes]


# ----------------------------------------------------------------------------- plots


def covariate_plot(diag: ShiftDiagnosis) -> Figure:
    fig = Figure(figsize=(10, 3.6))
    ax1, ax2 = fig.subplots(1, 2)
    d, m = diag.domain, diag.mmd
    bins = np.linspace(0, 1, 31)
    ax1.hist(d["scores_source"], bins=bins, alpha=0.6, color=SOURCE_COLOUR, label=diag.source, density=True)
    ax1.hist(d["scores_target"], bins=bins, alpha=0.6, color=TARGET_COLOUR, label=diag.target, density=True)
    ax1.set(title=f"domain classifier (AUC {d['auc']:.2f})", xlabel="out-of-fold P(target)", ylabel="density")
    ax1.legend(fontsize=8)
    if len(m["null"]):
        ax2.hist(m["null"], bins=40, color="grey", alpha=0.7, label="permutation null")
    ax2.axvline(m["mmd2"], color="red", label=f"observed (p = {m['p']:.3g})")
    ax2.set(title="kernel MMD² two-sample test", xlabel="MMD²", ylabel="permutations")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    return fig


def prior_plot(diag: ShiftDiagnosis) -> Figure | None:
    lab = diag.label
    if lab is None:
        return None
    series = [("source prior", lab["source"], None, "grey"), ("EM", lab["em"], lab["em_ci"], "tab:green"),
              ("BBSE", lab["bbse"], lab["bbse_ci"], "tab:purple")]
    if "true" in lab:
        series.append(("target truth (not used)", lab["true"], None, "black"))
    k = len(diag.classes)
    fig = Figure(figsize=(max(5, 1.4 * k + 3), 3.6))
    ax = fig.subplots()
    width = 0.8 / len(series)
    for i, (name, values, ci, colour) in enumerate(series):
        x = np.arange(k) + (i - (len(series) - 1) / 2) * width
        err = None
        if ci is not None:
            lo, hi = np.array(ci)[:, 0], np.array(ci)[:, 1]
            err = np.clip([np.array(values) - lo, hi - np.array(values)], 0, None)
        style = dict(fill=False, edgecolor="black", hatch="//") if colour == "black" else dict(color=colour, alpha=0.8)
        ax.bar(x, values, width, yerr=err, capsize=3, label=name, **style)
    ax.set_xticks(np.arange(k), diag.classes, rotation=20 if k > 3 else 0)
    ax.set(ylim=(0, 1), ylabel="class prior", title=f"class prior: {diag.source} vs estimated at {diag.target}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def feature_plot(diag: ShiftDiagnosis, top: int = 15) -> Figure | None:
    if not diag.features:
        return None
    rows = diag.features[:top][::-1]
    fig = Figure(figsize=(8, 0.3 * len(rows) + 1.2))
    ax = fig.subplots()
    smd = np.array([r["smd"] for r in rows])
    shown = np.clip(np.nan_to_num(smd, posinf=5, neginf=-5), -5, 5)
    ax.barh(np.arange(len(rows)), shown, color=[TARGET_COLOUR if s > 0 else SOURCE_COLOUR for s in shown])
    ax.set_yticks(np.arange(len(rows)), [f"{r['feature']} (AUC {r['domain_auc']:.2f})" for r in rows], fontsize=8)
    ax.axvline(0, color="black", lw=0.8)
    ax.set(xlabel="standardised mean difference, target − source (clipped at ±5)",
           title=f"features that shift most: {diag.source} → {diag.target}")
    fig.tight_layout()
    return fig


def class_plot(diag: ShiftDiagnosis) -> Figure | None:
    rows = diag.per_class
    if not rows:
        return None
    k = len(rows)
    fig = Figure(figsize=(max(6, 1.2 * k + 4), 3.4))
    ax1, ax2 = fig.subplots(1, 2)
    x = np.arange(k)
    ax1.bar(x - 0.2, [r["share_source"] for r in rows], 0.4, color=SOURCE_COLOUR, label=diag.source)
    ax1.bar(x + 0.2, [r["share_target"] for r in rows], 0.4, color=TARGET_COLOUR, label=diag.target)
    ax1.set_xticks(x, [r["class"] for r in rows], rotation=20 if k > 3 else 0, fontsize=8)
    ax1.set(ylabel="share of predictions", title="predicted class shares")
    ax1.legend(fontsize=8)
    ax2.bar(x, [np.nan_to_num(r["domain_auc"], nan=0.5) for r in rows], color="tab:red", alpha=0.7)
    ax2.axhline(0.5, color="black", lw=0.8, ls="--")
    ax2.set_xticks(x, [r["class"] for r in rows], rotation=20 if k > 3 else 0, fontsize=8)
    ax2.set(ylim=(0.4, 1), ylabel="domain AUC within class", title="shift within each predicted class")
    fig.tight_layout()
    return fig


# File name (without .png) -> the plot; written in this order, shown in this order under "Plots".
PLOTS = {"covariate": covariate_plot, "priors": prior_plot, "features": feature_plot, "classes": class_plot}
