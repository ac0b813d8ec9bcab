"""Linear-probe variants on frozen features: does anything cheap lift the probe at small label budgets?

For each source (weights, not a dataset) the features of the target's train / val / test images (and of the
images flipped left-right) come from the feature cache; each seed draws its labelled examples as a grid cell
does (`data.budget.apply_budget`) and fits the one logistic helper (`models.logistic.fit_logistic`, C chosen on
validation AUC, features standardised on up to 2000 training inputs, labels unused, as the probe does).
Variants of one source's features:
- `probe`: the pooled features as the linear probe uses them (the baseline);
- `flip-mean`: the mean of an image's and its mirror image's features (test-time augmentation in the features);
- `sqrt`: signed square root of each feature (power normalisation: softens a few large activations);
- `l2`: each row scaled to unit length before standardising.
With two or more sources, two ways to combine them:
- `stack`: one probe on the sources' features side by side (what `stack:A+B` does);
- `ensemble`: one probe per source, their logits averaged (a late fusion; itself a linear head on the stacked
  features, block by block).
Prints validation AUC (what a choice may be made on) and test AUC, seed means, with the per-seed test AUCs.

    PYTHONPATH=src .venv/bin/python benchmarks/probe_variants.py --data-root ../shared/data/medmnist

Runtime on 2 CPU cores with the defaults (BreastMNIST, Lite0-2 at their native sizes, 1% and 10%, 3 seeds):
about 12 minutes with an empty feature cache (the images and their mirror images through three networks: 740 s
when a prototype of this script computed the same features), 8 s with the features cached. PneumoniaMNIST (`--data medmnist:pneumoniamnist --no-flip`): 36 minutes cold.
Measured (README, Strategies): no variant reaches BreastMNIST test AUC 0.85 at 10%; the best is 0.840.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from medtransfer.data import load_dataset
from medtransfer.data.budget import apply_budget
from medtransfer.defaults import PROBE_SCALING_MAX
from medtransfer.models.imagenet import native_size
from medtransfer.models.inference import extract_features
from medtransfer.models.logistic import fit_logistic
from medtransfer.models.sources import load_source_model

SPLITS = ("train", "val", "test")
VARIANTS = {
    "probe": lambda f, mirror: f,
    "flip-mean": lambda f, mirror: (f + mirror) / 2,
    "sqrt": lambda f, mirror: np.sign(f) * np.sqrt(np.abs(f)),
    "l2": lambda f, mirror: f / np.linalg.norm(f, axis=1, keepdims=True),
}


def source_features(spec: str, data, train_rows: np.ndarray, flip: bool) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{split: (features, features of the mirrored images)}, at the source's native size when it has one.
    Training images outside `train_rows` (never labelled or scaling in this run) are left as NaN, not computed;
    without `flip` the mirrored features are NaN."""
    name = spec.split(":", 1)[1] if spec.startswith("imagenet:") else None
    size = native_size(name) if name else None
    model = load_source_model(spec, "image2d", data.train.x.shape[1], image_size=size).model.eval()
    out = {}
    for split in SPLITS:
        x = getattr(data, split).x
        rows = train_rows if split == "train" else np.arange(len(x))
        both = []
        for images in (x[rows], x[rows].flip(-1)):
            f = np.full((len(x), model.num_features), np.nan, np.float32)
            if flip or not both:
                f[rows] = extract_features(model, images)
            both.append(f)
        out[split] = tuple(both)
    return out


def row_index(subset: torch.Tensor, whole: torch.Tensor) -> np.ndarray:
    """Where each row of a budgeted split sits in the whole split (rows matched by their bytes)."""
    where = {whole[i].numpy().tobytes(): i for i in range(len(whole))}
    return np.array([where[row.numpy().tobytes()] for row in subset])


def fit_and_score(features: dict[str, np.ndarray], rows: dict[str, np.ndarray], labels: dict, pool: np.ndarray,
                  seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(validation logits, test logits) of one probe: the positive class's decision value."""
    fit = fit_logistic(features["train"][rows["train"]], labels["train"][rows["train"]], features["val"][rows["val"]],
                       labels["val"][rows["val"]], "binary", 2, seed, scale_x=features["train"][pool])
    return fit.logits(features["val"][rows["val"]])[:, 1], fit.logits(features["test"])[:, 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default="../shared/data/medmnist")
    parser.add_argument("--data", default="medmnist:breastmnist")
    parser.add_argument("--sources", default="imagenet:efficientnet_lite0,imagenet:efficientnet_lite1,"
                                             "imagenet:efficientnet_lite2")
    parser.add_argument("--budgets", default="1%,10%")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--no-flip", action="store_true", help="skip the mirrored images (and flip-mean)")
    args = parser.parse_args()
    data = load_dataset(args.data, data_root=args.data_root)
    if data.task != "binary":
        raise SystemExit(f"{args.data}: this check scores binary targets only")
    sources = args.sources.split(",")
    labels = {split: getattr(data, split).y.numpy() for split in SPLITS}
    draw = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0))[:PROBE_SCALING_MAX]
    pool = np.sort(draw.numpy())  # the inputs that standardise the features, as `scaling_inputs` draws them
    rows = {budget: [{"train": row_index(d.train.x, data.train.x), "val": row_index(d.val.x, data.val.x)}
                     for d in (apply_budget(data, budget, seed) for seed in range(args.seeds))]
            for budget in args.budgets.split(",")}
    needed = np.unique(np.concatenate([pool] + [r["train"] for draws in rows.values() for r in draws]))
    features = {spec: source_features(spec, data, needed, not args.no_flip) for spec in sources}
    names = [name for name in VARIANTS if not (args.no_flip and name == "flip-mean")]

    def variant(spec: str, name: str) -> dict[str, np.ndarray]:
        return {split: VARIANTS[name](*features[spec][split]) for split in SPLITS}

    arms = {f"{spec.split(':')[-1]} {name}": [variant(spec, name)] for spec in sources for name in names}
    if len(sources) > 1:
        arms["stack probe"] = [{split: np.concatenate([features[s][split][0] for s in sources], 1) for split in SPLITS}]
        arms["ensemble probe"] = [variant(spec, "probe") for spec in sources]
    print(f"{args.data}, seeds 0-{args.seeds - 1}; seed means; the ensemble averages one probe per source\n")
    print("| budget | features | val AUC | test AUC | test AUC per seed |\n| --- | --- | --- | --- | --- |")
    for budget, draws in rows.items():
        for arm, members in arms.items():
            val, test = [], []
            for seed, seed_rows in enumerate(draws):
                logits = [fit_and_score(f, seed_rows, labels, pool, seed) for f in members]
                val.append(roc_auc_score(labels["val"][seed_rows["val"]], np.mean([v for v, _ in logits], 0)))
                test.append(roc_auc_score(labels["test"], np.mean([t for _, t in logits], 0)))
            print(f"| {budget} | {arm} | {np.mean(val):.3f} | {np.mean(test):.3f} | "
                  + ", ".join(f"{t:.3f}" for t in test) + " |", flush=True)


if __name__ == "__main__":
    main()
