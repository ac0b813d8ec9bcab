"""The federated report: report.html and report.md of a federated run's folder, from its results.csv,
predictions.csv and federation.json, built from the blocks of `reporting.blocks`.

Every number is recomputed from the saved per-patient test probabilities, as in the experiment report:
per site, each method's seed-mean test AUC and accuracy with a percentile bootstrap 95% CI over that
site's test patients, and the paired AUC difference against local-only and against pooled (the same
resamples for both methods, so patient-level difficulty cancels). The summary puts the mean over sites
of the per-site accuracy at threshold 0.5 next to FLamby's Fed-Heart-Disease benchmark.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..evaluation.metrics import auc_paired_difference, auc_paired_mean_ci
from ..runs import read_json
from ..training.privacy import NONE, parse_dp
from .blocks import Block, Bullets, Heading, Paragraph, Plot, Table, png, to_html, to_markdown
from .experiment import format_ci, format_p, rate_mean_ci

# FLamby (du Terrail et al., NeurIPS 2022 Datasets and Benchmarks), Fed-Heart-Disease: logistic regression,
# accuracy at threshold 0.5, mean over the 4 centres, its own fixed train/test split per centre.
FLAMBY = {"pooled": "0.735", "fedavg": "0.685", "fedadam": "0.726", "fedadagrad": "0.731", "local": "0.567–0.722"}
FLAMBY_NOTE = ("FLamby's Fed-Heart-Disease benchmark (du Terrail et al., NeurIPS 2022): a logistic regression on "
               "13 encoded features, accuracy at threshold 0.5, mean over the 4 centres on its own fixed train/test "
               "split; local models range over the 4 centres' local models. Not the same split, features or training "
               "as this run: a reference point, not a paired comparison.")
REFERENCES = ("local", "pooled", "source")


def write_federated_report(folder: str | Path, seed: int = 0) -> tuple[Path, Path]:
    """Write report.html and report.md into a federated run's folder; returns their paths."""
    folder = Path(folder)
    summary = read_json(folder / "federation.json")
    results = pd.read_csv(folder / "results.csv", dtype={"site": str, "method": str, "positive": str})
    predictions = pd.read_csv(folder / "predictions.csv", dtype={"site": str, "method": str, "id": str})
    blocks = federated_blocks(summary, results, predictions, seed)
    title = f"medtransfer federated report: {summary['name']}"
    html_path, md_path = folder / "report.html", folder / "report.md"
    html_path.write_text(to_html(title, blocks), encoding="utf-8")
    md_path.write_text(to_markdown(title, blocks), encoding="utf-8")
    return html_path, md_path


def methods_in_order(results: pd.DataFrame) -> list[str]:
    """References first, then each federated strategy followed by its personalised form."""
    present = list(dict.fromkeys(results["method"]))
    return [m for m in REFERENCES if m in present] + [m for m in present if m not in REFERENCES]


def federated_blocks(summary: dict, results: pd.DataFrame, predictions: pd.DataFrame, seed: int = 0) -> list[Block]:
    n_boot = int(summary.get("n_boot", 1000))
    stats = {site: site_stats(site, results, predictions, summary, n_boot, seed) for site in summary["sites"]}
    return [*setup(summary, results), *overview(summary, results, stats), *privacy_utility(summary, results, stats),
            Heading("Per site"), *[b for site in summary["sites"] for b in site_section(site, stats[site], summary)],
            *federations(summary)]


def setup(summary: dict, results: pd.DataFrame) -> list[Block]:
    rows = results.drop_duplicates("site").set_index("site")
    sites = ", ".join(f"{s} ({rows.loc[s, 'n_train']} train / {rows.loc[s, 'n_val']} val / {rows.loc[s, 'n_test']} "
                      "test)" for s in summary["sites"])
    encoding = ("the source model's own encoding (a fixed schema)" if summary["encoding"] == "source" else
                "federated statistics: each client sent counts, means and sums of squared deviations of its numeric "
                "columns and the level sets of its text columns (training split only); the server merged them")
    start = f"the source model ({summary['source_description']})" if summary.get("source") else \
        f"random weights drawn from each seed ({summary['backbone']})"
    seconds = summary["seconds"]
    engine = ("Ray, virtual clients on this machine" if summary["engine"] == "simulation" else
              "one client process per site over gRPC on 127.0.0.1")
    return [Heading("Setup"), Bullets([
        f"Sites: {sites}.",
        f"Flower engine: {summary['engine']} ({engine}); "
        f"strategies {', '.join(summary['strategies'])} (Flower's own), {summary['rounds']} rounds of "
        f"{summary['local_epochs']} local epochs, seeds {summary['seeds']}; the round with the lowest site-weighted "
        "validation loss is each federation's model.",
        f"Personalised: the federated model fine-tuned at each site on its own training split for up to "
        f"{summary['personalise_epochs']} epochs (early stopping on its validation split).",
        f"Models start from {start}; shared encoding: {encoding}.",
        "What left a site's client: weights (arrays of the model's shapes) and the aggregate statistics above; for "
        "this report, also each site's validation and test probabilities. Never a row.",
        f"Positive class {summary['positive']!r}; operating point {summary['threshold_rule']} chosen on each site's "
        "validation split. Accuracy at 0.5 is reported as well, for FLamby's comparison.",
        *privacy_setup(summary),
        f"Wall time: {seconds['federated']:.0f} s for the Flower run, {seconds['total']:.0f} s in all.",
    ])]


def private_levels(summary: dict) -> list[str]:
    return [level for level in summary.get("dp", []) if level != NONE]


def privacy_setup(summary: dict) -> list[str]:
    levels = private_levels(summary)
    if not levels:
        return []
    return [f"Differential privacy: each site trains with DP-SGD (Opacus) at {', '.join(levels)} (one federation "
            "per level, beside those without DP). A site's noise is calibrated for every epoch its rows train in "
            "(rounds x local epochs, then personalisation); each spent ε is the site's PRV accountant after the "
            "rounds the server saw (federated model) or after its personalisation (personalised model). Covered: "
            "each site's training examples. Not covered: the validation split (round selection, early stopping, "
            "operating point), the statistics round (shared encoding), the probabilities sent for this report, and "
            "the local-only and pooled references, which train without DP."]


def site_stats(site: str, results: pd.DataFrame, predictions: pd.DataFrame, summary: dict, n_boot: int,
               seed: int) -> dict:
    """Per method at one site: its seeds' test probabilities, seed-mean AUC and accuracies with CIs."""
    classes = summary["classes"]
    columns = [f"prob_{c}" for c in classes]
    test = predictions[(predictions["site"] == site) & (predictions["split"] == "test")]
    out = {}
    for method in methods_in_order(results):
        rows = test[test["method"] == method]
        seeds = sorted(rows["seed"].unique())
        if not seeds:
            continue
        parts = [rows[rows["seed"] == s].sort_values("index") for s in seeds]
        y = parts[0]["label"].to_numpy()
        probs = [p[columns].to_numpy(float) for p in parts]
        half = [(_decide_half(p, classes, summary["positive"]) == y, np.ones(len(y), bool)) for p in probs]
        point = [((p["predicted"].to_numpy() == np.asarray(classes, dtype=object)[y]), np.ones(len(y), bool))
                 for p in parts]
        task = "binary" if len(classes) == 2 else "multiclass"
        out[method] = {"y": y, "probs": probs, "task": task,
                       "auc": auc_paired_mean_ci(y, probs, n_boot=n_boot, seed=seed, task=task),
                       "acc_half": rate_mean_ci(half, [0] * len(half), n_boot, seed),
                       "acc_point": rate_mean_ci(point, [0] * len(point), n_boot, seed), "seeds": len(seeds)}
    for method, s in out.items():
        for ref in ("local", "pooled"):
            if ref in out and method != ref:
                s[f"vs_{ref}"] = auc_paired_difference(s["y"], s["probs"], out[ref]["probs"], n_boot=n_boot,
                                                       seed=seed, task=s["task"])
    return out


def _decide_half(prob: np.ndarray, classes: list, positive) -> np.ndarray:
    """Binary: the positive class when its probability is >= 0.5; multiclass: the argmax."""
    if len(classes) == 2 and positive in classes:
        k = classes.index(positive)
        return np.where(prob[:, k] >= 0.5, k, 1 - k)
    return prob.argmax(axis=1)


def overview(summary: dict, results: pd.DataFrame, stats: dict) -> list[Block]:
    rows = []
    for method in methods_in_order(results):
        per_site = [stats[s][method] for s in summary["sites"] if method in stats[s]]
        half = [s["acc_half"]["value"] for s in per_site]
        rows.append([method, f"{np.mean(half):.3f}", f"{min(half):.3f}–{max(half):.3f}",
                     f"{np.mean([s['acc_point']['value'] for s in per_site]):.3f}",
                     f"{np.mean([s['auc']['value'] for s in per_site]):.3f}", FLAMBY.get(method, "")])
    rows += [[f"{name} (FLamby only)", "", "", "", "", value] for name, value in FLAMBY.items()
             if name not in set(results["method"])]
    return [Heading("Mean over sites"),
            Paragraph(f"Mean over the {len(summary['sites'])} sites of each site's seed-mean test accuracy at "
                      "threshold 0.5, at the validation operating point, and test AUC; per-site CIs below. "
                      + FLAMBY_NOTE),
            Table(["method", "accuracy at 0.5", "range over sites", "accuracy at operating point", "AUC",
                   "FLamby accuracy at 0.5"], rows)]


def privacy_utility(summary: dict, results: pd.DataFrame, stats: dict) -> list[Block]:
    """Mean-over-sites test AUC and accuracy of each federated method at each dp level, beside its run
    without DP, with the accountants' spent ε; and the curve. Only for runs with DP federations."""
    if not private_levels(summary) or "dp" not in results:
        return []
    levels = results.drop_duplicates("method").set_index("method")["dp"].fillna(NONE).to_dict()
    curves: dict[str, list] = {}  # method without DP -> [(target epsilon or None, level label, method)]
    for method in methods_in_order(results):
        if method in REFERENCES:
            continue
        dp = parse_dp(levels.get(method, NONE), flag="dp")
        base = method.replace(f" · DP {dp.label()}", "") if dp else method
        curves.setdefault(base, []).append((dp.epsilon if dp else None, dp.label() if dp else "no DP", method))
    rows, auc = [], {}  # auc: method -> mean over sites of its seed-mean test AUC (table and plot)
    for base, entries in curves.items():
        entries.sort(key=lambda e: (e[0] is None, e[0] or 0))
        for target, label, method in entries:
            per_site = [stats[s][method] for s in summary["sites"] if method in stats[s]]
            auc[method] = float(np.mean([s["auc"]["value"] for s in per_site]))
            spent = results.loc[results["method"] == method, "epsilon"].astype(float)
            rows.append([base, label, f"{spent.max():.3f}" if target is not None else "∞", f"{auc[method]:.3f}",
                         f"{np.mean([s['acc_half']['value'] for s in per_site]):.3f}"])
    refs = {ref: np.mean([stats[s][ref]["auc"]["value"] for s in summary["sites"] if ref in stats[s]])
            for ref in ("local", "pooled") if any(ref in stats[s] for s in summary["sites"])}
    return [Heading("Privacy-utility curve (DP-SGD at every site)"),
            Paragraph("Mean over sites of each site's seed-mean test AUC and accuracy at 0.5, per target ε, beside the "
                      "same federated method without DP. Spent ε: the largest over sites and seeds of the accountant's "
                      "epsilon (δ per site as in federation.json); local-only and pooled (no DP) are the references: "
                      + ", ".join(f"{k} AUC {v:.3f}" for k, v in refs.items()) + "."),
            Plot(privacy_png(curves, auc, refs), "privacy-utility curve: mean test AUC over sites vs ε"),
            Table(["method", "DP", "spent ε (max)", "AUC (mean over sites)", "accuracy at 0.5"], rows)]


def privacy_png(curves: dict, auc: dict, refs: dict) -> str:
    fig = Figure(figsize=(6.5, 3.8))
    ax = fig.subplots()
    for i, (base, entries) in enumerate(curves.items()):
        points = [(target, auc[method]) for target, _, method in entries if target is not None]
        if points:
            ax.plot(*zip(*points), marker="o", ms=4, color=f"C{i}", label=base)
        for target, _, method in entries:
            if target is None:
                ax.axhline(auc[method], color=f"C{i}", ls=":", lw=1, label=f"{base}, no DP")
    for (name, value), style in zip(refs.items(), ("--", "-.")):
        ax.axhline(value, color="grey", ls=style, lw=1, label=f"{name} (no DP)")
    ax.set_xscale("log")
    targets = sorted({t for entries in curves.values() for t, _, _ in entries if t is not None})
    ax.set_xticks(targets, [f"{t:g}" for t in targets])
    ax.minorticks_off()
    ax.set(xlabel="target ε (log scale)", ylabel="test AUC, mean over sites", title="Privacy-utility, federated")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return png(fig)


def site_section(site: str, stats: dict, summary: dict) -> list[Block]:
    rows = []
    for method, s in stats.items():
        diffs = [(format_ci(s[k]["value"], s[k]["ci"], signed=True), format_p(s[k]["p"])) if k in s else ("–", "–")
                 for k in ("vs_local", "vs_pooled")]
        rows.append([method, format_ci(s["auc"]["value"], s["auc"]["ci"]), *diffs[0], *diffs[1],
                     format_ci(s["acc_half"]["value"], s["acc_half"]["ci"]),
                     format_ci(s["acc_point"]["value"], s["acc_point"]["ci"])])
    y, classes = next(iter(stats.values()))["y"], summary["classes"]
    counts = ", ".join(f"{int((y == k).sum())} {c}" for k, c in enumerate(classes))
    return [Heading(site, 3),
            Paragraph(f"{len(y)} test patients ({counts}). Seed means with percentile bootstrap 95% CIs "
                      "over the test patients; Δ AUC is paired (same resamples) against local-only and pooled."),
            Table(["method", "test AUC [95% CI]", "Δ AUC vs local [95% CI]", "p", "Δ AUC vs pooled [95% CI]", "p",
                   "accuracy at 0.5 [95% CI]", "accuracy at operating point [95% CI]"], rows)]


def federations(summary: dict) -> list[Block]:
    feds = summary["federations"]
    rows = [[f.get("method", f["strategy"]), str(f["seed"]), str(f["selected_round"]), f"{f['selected_val_loss']:.4f}",
             ", ".join(f"{k.split(':')[-1]} {v}" for k, v in f["personalised_epoch"].items()) or "–",
             noise(f.get("privacy") or {})] for f in feds]
    blocks = [Heading("Federations"),
              Table(["method", "seed", "selected round", "validation loss", "personalisation: best epoch per site",
                     "DP noise multiplier per site"], rows)]
    fig = Figure(figsize=(6.5, 3.6))
    ax = fig.subplots()
    for method in dict.fromkeys(f.get("method", f["strategy"]) for f in feds):
        curves = [[h.get("val_loss", np.nan) for h in f["history"]] for f in feds
                  if f.get("method", f["strategy"]) == method]
        if curves and curves[0]:
            ax.plot(range(1, len(curves[0]) + 1), np.nanmean(np.array(curves, dtype=float), axis=0), label=method)
    ax.set(xlabel="round", ylabel="validation loss (site-weighted)", title="Federated validation loss, seed mean")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return blocks + [Plot(png(fig), "federated validation loss per round")]


def noise(privacy: dict) -> str:
    """Each site's DP-SGD noise multiplier and sample rate, or – without DP."""
    return ", ".join(f"{site.split(':')[-1]} {r['noise_multiplier']:.2f} (q {r['sample_rate']:.2f})"
                     for site, r in privacy.items()) or "–"
