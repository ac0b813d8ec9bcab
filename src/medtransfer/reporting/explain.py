"""The explanation report: explanations.md (figures as files next to it) and explanations.html (figures
embedded), from the blocks of `reporting.blocks`: the predictions explained, the sanity check's numbers
(images), the global importance and per-prediction attributions (tables), and the figures."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np

from .blocks import Block, Bullets, Heading, Paragraph, Plot, Table, to_html, to_markdown

SHOWN = 20  # per-input figures embedded in the report (all of them are in the folder)
TOP = 5  # attributions shown per prediction


def write_explain_report(result, folder: Path) -> tuple[Path, Path]:
    """explanations.md and explanations.html in `folder`, where the figures already are."""
    folder = Path(folder)
    title = f"Explanations: {Path(result.run).name}"
    blocks = explain_blocks(result, folder)
    md, page = folder / "explanations.md", folder / "explanations.html"
    md.write_text(to_markdown(title, blocks, html_name=page.name), encoding="utf-8")
    page.write_text(to_html(title, blocks), encoding="utf-8")
    return md, page


def _plot(folder: Path, name: str, alt: str) -> Plot:
    return Plot(base64.b64encode((folder / name).read_bytes()).decode("ascii"), alt, file=name)


def _f(value, digits: int = 3) -> str:
    return "" if value is None or (isinstance(value, float) and not np.isfinite(value)) else f"{value:.{digits}f}"


def explain_blocks(result, folder: Path) -> list[Block]:
    blocks: list[Block] = [Paragraph(f"Run {result.run}, inputs {result.inputs}: {len(result.explained)} "
                                     f"{result.modality} input(s) explained by {result.method}"
                                     + (f" on {result.layer}" if result.layer else "") + ".")]
    if result.notes:
        blocks.append(Bullets(list(result.notes)))
    blocks += _sanity(result, folder) + _importance(result, folder) + _predictions(result, folder)
    return blocks


def _sanity(result, folder: Path) -> list[Block]:
    s = result.sanity
    if not s:
        return []
    rows = [["inputs (defined)", f"{s['n']} ({s['n_defined']})"]]
    if s["n_defined"]:
        rows += [["mean rho", _f(s["mean_rho"])], ["median rho", _f(s["median_rho"])],
                 ["range", f"{_f(s['min_rho'])} to {_f(s['max_rho'])}"], ["mean |rho|", _f(s["mean_abs_rho"])]]
    shown = s.get("shown_maps")
    if shown:
        rows += [["maps shown (after ReLU): mean rho, defined pairs",
                  f"{_f(shown['mean_rho'])} ({shown['n_defined']})"],
                 ["all-zero maps: trained / randomised",
                  f"{shown['all_zero_trained']} / {shown['all_zero_randomised']}"]]
    blocks = [Heading("Sanity check: model randomisation"),
              Paragraph(f"{s['test']}. {s['statistic']} between the trained and the randomised model's maps, "
                        f"per input. {s['reading'][0].upper()}{s['reading'][1:]}."),
              Table(["", "value"], rows, title="trained vs randomised maps")]
    if "sanity" in result.figures:
        blocks.append(_plot(folder, result.figures["sanity"], "inputs, trained maps, randomised maps"))
    return blocks


def _importance(result, folder: Path) -> list[Block]:
    if result.importance is None and result.attributions is None:
        return []
    blocks: list[Block] = []
    if result.importance is not None:
        imp = result.importance
        blocks += [Heading("Global importance by original column"),
                   Table(["column", "AUC drop (mean)", "std"],
                         [[r.column, _f(r.mean_drop, 4), _f(r.std_drop, 4)] for r in imp.itertuples()],
                         title=f"permutation importance, test AUC {_f(float(imp['test_auc'].iloc[0]), 4)}")]
        if "importance" in result.figures:
            blocks.append(_plot(folder, result.figures["importance"], "permutation importance"))
    if result.attributions is not None:
        frame = result.attributions.set_index(result.attributions.columns[0])
        rows = []
        for ident, values in frame.iloc[:SHOWN].iterrows():
            top = values.abs().sort_values(ascending=False).index[:TOP]
            rows.append([str(ident), ", ".join(f"{col} {values[col]:+.3f}" for col in top)])
        blocks += [Heading("Largest attributions per prediction"),
                   Table(["input", f"top {TOP} columns (attribution to p)"], rows)]
    return blocks


def _predictions(result, folder: Path) -> list[Block]:
    table = result.explained
    header = [str(c) for c in table.columns]
    rows = [[_f(v) if isinstance(v, float) else str(v) for v in row]
            for row in table.iloc[:SHOWN].itertuples(index=False)]
    shown = "" if len(table) <= SHOWN else f" (first {SHOWN} of {len(table)}; all in explanations.csv)"
    blocks: list[Block] = [Heading("Predictions explained"), Table(header, rows, title=f"predictions{shown}")]
    if "map_file" in table:
        blocks += [_plot(folder, name, f"{ident}") for ident, name in
                   zip(table.iloc[:SHOWN, 0], table["map_file"].iloc[:SHOWN])]
    if "tokens" in result.figures:
        blocks.append(Paragraph(f"Tokens coloured by their attribution: {result.figures['tokens']} "
                                "(per token values in tokens.csv)."))
    return blocks
