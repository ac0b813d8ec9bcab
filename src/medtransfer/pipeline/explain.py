"""`explain`: why a saved run decided what it did, for the inputs `predict` takes.

Inputs are read and scored exactly as `predict` reads and scores them (`reuse.read_inputs`,
`reuse.probability_frame`), so the probabilities next to an explanation are the predictions. Then, by
the model's modality:
- images (2D, 3D): Grad-CAM / Grad-CAM++ on the backbone's last stage, an overlay PNG per input, and the
  sanity check of Adebayo et al. 2018 (the maps of the same architecture at random weights must differ:
  Spearman's rho per input in sanity.json);
- tables: integrated gradients per prediction, summed back to the original columns (attributions.csv),
  and permutation importance by original column on the run's own test split (importance.csv, AUC drop);
- signals: integrated gradients per sample, plotted under the recording;
- texts (transformer runs): integrated gradients over the token embeddings (tokens.csv, tokens.html).
The folder is staged and swapped in whole (`runs.commit_dir`); `write_report(explanation, folder)`, given
by the API, adds the report (explanations.md / .html) before the swap.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..data import load_dataset
from ..data.tabular import TabularEncoder
from ..errors import MedTransferError
from ..evaluation import compute_metrics
from ..models import attribution
from ..models.checkpoint import load_checkpoint
from ..runs import check_writable, clean_name, commit_dir, staging_dir, write_json
from . import explain_figures as figures
from .request import check_int
from .reuse import labels_as_model_classes, probability_frame, read_config, read_inputs, stored_operating_point
from .run_folder import require_classifier

METHODS = {"image2d": attribution.CAM_METHODS, "image3d": attribution.CAM_METHODS, "tabular": ("ig",),
           "signal": ("ig",), "text": ("ig",)}
SANE_RHO = 0.5  # mean |rho| below this: the maps depend on the learned weights (Adebayo et al. 2018)
SANITY_PANEL = 6  # inputs shown side by side (trained / randomised) in sanity.png


@dataclass
class Explanation:
    run: str
    inputs: str
    modality: str
    task: str
    method: str
    classes: list[str]
    predictions: pd.DataFrame  # what `predict` returns for these inputs
    explained: pd.DataFrame  # explanations.csv: id, predicted, explained class, its probability, file
    out: Path | None = None
    layer: str | None = None  # images: the module the maps come from
    maps: np.ndarray | None = None  # images: maps (N, *spatial); signals (N, C, T); texts (N, L)
    random_maps: np.ndarray | None = None  # images: the randomised model's maps
    sanity: dict | None = None
    attributions: pd.DataFrame | None = None  # tables: id x original column
    importance: pd.DataFrame | None = None  # tables: column, mean_drop, std_drop
    figures: dict = field(default_factory=dict)  # "sanity", "importance", "tokens": file names in `out`
    notes: list[str] = field(default_factory=list)


def explain(run: str | Path, inputs: str, out: str | Path, method: str | None = None, class_name: str | None = None,
            limit: int | None = None, layer: str | None = None, overwrite: bool = False, data_root=None,
            seed: int = 0, repeats: int = 5, write_report=None) -> Explanation:
    """Explain a saved run's predictions for `inputs` into the folder `out` (refused when it holds
    anything, unless `overwrite`). `method`: gradcam / gradcam++ (images), ig (tables, signals, texts);
    `class_name`: the class explained (default: the positive class of a binary run, else the class
    decided); `limit`: the first N inputs only; `layer`: images, the backbone stage (default: the last)."""
    out = Path(out)
    check_int("limit", limit, 1, "--limit")
    check_int("repeats", repeats, 1)
    check_writable(out, overwrite)
    run = Path(run)
    model, meta = load_checkpoint(run)
    require_classifier(meta, run)
    modality = meta["input"]["modality"]
    method = pick_method(modality, method)
    classes = meta["classes"]
    if class_name is not None and class_name not in classes:
        raise MedTransferError(f"unknown class {class_name!r} (--class); the run's classes: {', '.join(classes)}")
    warnings: list[str] = []
    x, ids, id_name = read_inputs(meta, str(inputs), data_root, warnings)
    x, ids = x[:limit], ids[:limit]
    frame = probability_frame(model, meta, x, ids, warnings, id_name)
    prob = frame[[f"prob_{c}" for c in classes]].to_numpy()
    targets = explained_classes(meta, frame, prob, class_name)
    explained = pd.DataFrame({id_name: ids, **({"predicted": frame["predicted"]} if "predicted" in frame else {}),
                              "explained_class": [classes[t] for t in targets],
                              "probability": prob[np.arange(len(prob)), targets]})
    result = Explanation(str(run), str(inputs), modality, meta["task"], method, classes, frame, explained,
                         notes=list(warnings))
    stage = staging_dir(out)
    try:
        EXPLAINERS[modality](result, model, meta, x, targets, stage, layer=layer, seed=seed, repeats=repeats,
                             data_root=data_root)
        frame.to_csv(stage / "predictions.csv", index=False)
        result.explained.to_csv(stage / "explanations.csv", index=False)
        if write_report is not None:
            write_report(result, stage)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    commit_dir(stage, out)
    result.out = out
    return result


def pick_method(modality: str, method: str | None) -> str:
    fits = METHODS.get(modality, ())
    if not fits:
        raise MedTransferError(f"explanations of {modality} models are not supported")
    if method is None:
        return fits[0]
    if method not in fits:
        raise MedTransferError(f"method {method!r} does not fit a {modality} model; choose {', '.join(fits)} "
                               "(--method)")
    return method


def explained_classes(meta: dict, frame: pd.DataFrame, prob: np.ndarray, class_name: str | None) -> np.ndarray:
    """The class each input's explanation is for: the one asked for, else a binary run's positive class,
    else the class decided at the run's operating point (multilabel: the most probable label)."""
    classes = meta["classes"]
    if class_name is not None:
        return np.full(len(prob), classes.index(class_name))
    if meta["task"] == "binary":
        return np.full(len(prob), stored_operating_point(meta)[0].positive)
    if "predicted" in frame:
        return np.array([classes.index(c) for c in frame["predicted"]])
    return prob.argmax(axis=1)


def file_names(ids: list[str], suffix: str) -> list[str]:
    """`<id>_<suffix>` per input, file-name safe (an image path gives its stem), made unique."""
    names, seen = [], set()
    for i in ids:
        path = Path(str(i))
        base = clean_name(path.stem if path.suffix else str(i)) or "input"
        name, n = f"{base}_{suffix}", 2
        while name in seen:
            name, n = f"{base}-{n}_{suffix}", n + 1
        seen.add(name)
        names.append(name)
    return names


def caption(result: Explanation, i: int) -> str:
    row = result.explained.iloc[i]
    decided = f"predicted {row['predicted']}, " if "predicted" in row else ""
    return f"{decided}p({row['explained_class']}) = {row['probability']:.3f}"


# ----------------------------------------------------------------------------- per modality


def explain_images(result: Explanation, model, meta: dict, x: torch.Tensor, targets: np.ndarray, stage: Path,
                   layer: str | None, seed: int, **_) -> None:
    stages = model.stages()
    layer = layer or stages[-1]
    if layer not in stages:
        raise MedTransferError(f"unknown layer {layer!r} (--layer); the backbone's stages: {', '.join(stages)}")
    result.layer = f"backbone.{layer}"
    twin = attribution.randomized_copy(model, seed)  # before any hook is registered on the model
    result.maps, signed = attribution.gradcam(model, x, result.layer, targets, result.method)
    result.random_maps, random_signed = attribution.gradcam(twin, x, result.layer, targets, result.method)
    rho = attribution.rank_correlations(signed, random_signed)
    shown_rho = attribution.rank_correlations(result.maps, result.random_maps)
    images = x.float().numpy()
    suffix = result.method.replace('++', 'pp')
    names = file_names(list(result.explained.iloc[:, 0]), f"{suffix}.png")
    for i, name in enumerate(names):
        figures.cam_overlay(images[i], result.maps[i], caption(result, i), stage / name)
    result.explained["map_file"] = names
    result.explained["sanity_rho"] = rho
    np.savez_compressed(stage / "maps.npz", ids=np.array(result.explained.iloc[:, 0], dtype=str),
                        trained=result.maps, randomised=result.random_maps, trained_signed=signed,
                        randomised_signed=random_signed)
    shown = slice(0, SANITY_PANEL)
    result.figures["sanity"] = figures.sanity_panel(images[shown], result.maps[shown], result.random_maps[shown],
                                                    rho[shown], list(result.explained.iloc[shown, 0]),
                                                    stage / "sanity.png")
    result.sanity = sanity_summary(rho, list(result.explained.iloc[:, 0]), result.method, result.layer, seed)
    result.sanity["shown_maps"] = shown_maps_summary(result.maps, result.random_maps, shown_rho)
    write_json(stage / "sanity.json", result.sanity)


def sanity_summary(rho: np.ndarray, ids: list[str], method: str, layer: str, seed: int) -> dict:
    """The model-randomisation test's numbers and what they say."""
    defined = rho[np.isfinite(rho)]
    summary = {"test": "model parameter randomisation (Adebayo et al. 2018): every backbone and head layer "
                       f"re-initialised (reset_parameters, seed {seed}), preprocess and calibration kept",
               "method": method, "layer": layer,
               "statistic": "Spearman rank correlation of the flattened signed class-activation maps (before "
                            "Grad-CAM's ReLU: defined even where a model has no positive evidence)",
               "n": len(rho), "n_defined": int(len(defined)),
               "per_input": [{"id": i, "rho": float(r)} for i, r in zip(ids, rho)]}
    if len(defined) == 0:
        summary["reading"] = "undefined: every map pair holds a constant map"
        return summary
    summary.update(mean_rho=float(defined.mean()), median_rho=float(np.median(defined)),
                   min_rho=float(defined.min()), max_rho=float(defined.max()),
                   mean_abs_rho=float(np.abs(defined).mean()), threshold=SANE_RHO,
                   passed=bool(np.abs(defined).mean() < SANE_RHO))
    summary["reading"] = (f"passed: mean |rho| {summary['mean_abs_rho']:.3f} < {SANE_RHO}, the maps depend on the "
                          "learned weights" if summary["passed"] else
                          f"failed: mean |rho| {summary['mean_abs_rho']:.3f} >= {SANE_RHO}, the maps look alike "
                          "with random weights (they may show the input's structure more than the model's evidence)")
    if len(defined) < len(rho):
        summary["reading"] += f"; {len(rho) - len(defined)} pair(s) with a constant map left out"
    return summary


def shown_maps_summary(maps: np.ndarray, random_maps: np.ndarray, rho: np.ndarray) -> dict:
    """The same comparison on the maps shown (after the ReLU), where rank correlation is defined, and how
    many maps hold no positive evidence at all."""
    def empty(m: np.ndarray) -> int:
        return int((m.reshape(len(m), -1).max(axis=1) == 0).sum())

    defined = rho[np.isfinite(rho)]
    return {"statistic": "Spearman rank correlation of the maps shown (after Grad-CAM's ReLU)",
            "n_defined": int(len(defined)), "mean_rho": float(defined.mean()) if len(defined) else None,
            "all_zero_trained": empty(maps), "all_zero_randomised": empty(random_maps)}


def add_baseline_probability(result: Explanation, attributions: np.ndarray) -> None:
    """The baseline's probability of the explained class, per input: integrated gradients are complete
    (an input's attributions sum to p(input) - p(baseline)), so this is what they are measured against."""
    total = attributions.reshape(len(attributions), -1).sum(axis=1)
    result.explained["baseline_probability"] = result.explained["probability"].to_numpy() - total


def explain_table(result: Explanation, model, meta: dict, x: torch.Tensor, targets: np.ndarray, stage: Path,
                  seed: int, repeats: int, data_root=None, **_) -> None:
    encoder = TabularEncoder.from_dict(meta["encoder"])
    blocks = attribution.column_blocks(encoder)
    dataset, data = run_dataset(Path(result.run), meta, data_root)
    if dataset is not None:
        background, where = dataset.train.x, f"the mean training row of {data}"
    else:
        background, where = x, "the mean of the explained rows (the run's dataset could not be loaded)"
        result.notes.append(f"integrated gradients start from {where}")
    baseline = background.float().mean(dim=0, keepdim=True)
    encoded = attribution.integrated_gradients(model, x, targets, baseline, result.task)
    per_column = attribution.by_column(encoded, blocks)
    result.maps = encoded
    add_baseline_probability(result, per_column)
    result.attributions = pd.DataFrame(per_column, columns=list(blocks))
    result.attributions.insert(0, result.explained.columns[0], list(result.explained.iloc[:, 0]))
    result.attributions.to_csv(stage / "attributions.csv", index=False)
    result.notes.append(f"per-prediction attributions: integrated gradients of p(explained class) from {where}, "
                        "summed over each column's encoded features; a row sums to p(input) - p(baseline)")
    if dataset is None:
        result.notes.append("global importance needs the run's own test split with labels; it was not computed")
        return
    result.importance = table_importance(model, meta, dataset, data, blocks, seed, repeats)
    result.importance.to_csv(stage / "importance.csv", index=False)
    result.figures["importance"] = figures.importance_plot(result.importance, stage / "importance.png")
    result.notes.append(f"global importance: permutation importance on the test split of {data} "
                        f"({len(dataset.test)} rows, {repeats} permutations per column, seed {seed}): the drop of the "
                        "test AUC when a column's values are shuffled across patients")


def run_dataset(run: Path, meta: dict, data_root) -> tuple:
    """(the run's own dataset loaded as `evaluate` loads it, its spec), or (None, reason) when it cannot be."""
    config = read_config(run)
    data = config.get("data")
    if not data:
        return None, "the run records no dataset"
    try:
        dataset = load_dataset(data, data_root=data_root or config.get("data_root"), target=config.get("target"),
                               group=config.get("group"), id=config.get("id_column"),
                               drop=tuple(config.get("drop") or ()), text=config.get("text_column"),
                               encoder=TabularEncoder.from_dict(meta["encoder"]),
                               split_seed=config.get("split_seed", 0))
    except MedTransferError as exc:
        return None, str(exc)
    return dataset, data


def table_importance(model, meta: dict, dataset, data: str, blocks: dict, seed: int, repeats: int) -> pd.DataFrame:
    test = dataset.test
    if len(test) == 0:
        raise MedTransferError(f"the test split of {data} is empty: no permutation importance can be measured")
    y = labels_as_model_classes(test.y, dataset, meta["classes"], data).numpy()
    _, options = stored_operating_point(meta)

    def auc(prob: np.ndarray) -> float:
        return compute_metrics(y, prob, meta["task"], n_boot=0, **options)["auc"]["value"]

    base, drops = attribution.permutation_importance(model, test.x, blocks, meta["task"], auc, repeats, seed)
    if not np.isfinite(base):
        raise MedTransferError(f"the test AUC of {data} is undefined (one class only): no permutation importance")
    frame = pd.DataFrame({"column": list(drops), "mean_drop": [np.mean(d) for d in drops.values()],
                          "std_drop": [np.std(d) for d in drops.values()]})
    frame["test_auc"] = base
    return frame.sort_values("mean_drop", ascending=False, ignore_index=True)


def explain_signals(result: Explanation, model, meta: dict, x: torch.Tensor, targets: np.ndarray, stage: Path,
                    **_) -> None:
    """Integrated gradients per sample from a flat recording at the training mean of each channel (which
    the model's standardisation maps to 0)."""
    mean = torch.tensor(model.spec.mean, dtype=torch.float32)
    baseline = mean.expand(x.shape[1]).reshape(1, -1, 1).expand(1, x.shape[1], x.shape[2])
    result.maps = attribution.integrated_gradients(model, x, targets, baseline, result.task)
    add_baseline_probability(result, result.maps)
    signals = x.float().numpy()
    names = file_names(list(result.explained.iloc[:, 0]), "ig.png")
    for i, name in enumerate(names):
        figures.signal_plot(signals[i], result.maps[i], caption(result, i), stage / name)
    result.explained["map_file"] = names
    np.savez_compressed(stage / "attributions.npz", ids=np.array(result.explained.iloc[:, 0], dtype=str),
                        attributions=result.maps)
    result.notes.append("integrated gradients of p(explained class) per sample, from a flat recording at each "
                        "channel's training mean")


def explain_texts(result: Explanation, model, meta: dict, x: torch.Tensor, targets: np.ndarray, stage: Path,
                  **_) -> None:
    from ..data.text import load_tokenizer

    attribution.embedding_layer(model)  # a TF-IDF run is refused before the tokenizer loads
    tokenizer = load_tokenizer((meta["input"].get("tokenizer") or "minilm").partition("#")[0])
    result.maps = attribution.token_attributions(model, x, targets, result.task, tokenizer.pad_token_id,
                                                 list(tokenizer.all_special_ids))
    add_baseline_probability(result, result.maps)
    rows, html_rows = [], []
    for i, ident in enumerate(result.explained.iloc[:, 0]):
        n = int(x[i, 1].sum())
        tokens = tokenizer.convert_ids_to_tokens(x[i, 0, :n].tolist())
        rows += [{"id": ident, "position": p, "token": t, "attribution": float(result.maps[i, p])}
                 for p, t in enumerate(tokens)]
        html_rows.append((f"{ident}: {caption(result, i)}", tokens, result.maps[i, :n]))
    pd.DataFrame(rows).to_csv(stage / "tokens.csv", index=False)
    (stage / "tokens.html").write_text(figures.token_html(html_rows, f"Token attributions: {result.run}"),
                                       encoding="utf-8")
    result.figures["tokens"] = "tokens.html"
    result.notes.append("layer integrated gradients of p(explained class) over the token embeddings, from the same "
                        "text with every ordinary token replaced by padding (its probability: baseline_probability in "
                        "explanations.csv)")


EXPLAINERS = {"image2d": explain_images, "image3d": explain_images, "tabular": explain_table,
              "signal": explain_signals, "text": explain_texts}
