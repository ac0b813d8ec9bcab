"""Probe scaling benchmark: a linear probe's features standardised on the labelled examples only against
standardised on the target's unlabelled training inputs (the default, `strategies.linear_probe.scaling_inputs`).

Both arms run `mt.transfer(..., "linear-probe")` on the same target, source, budget and seed; the first with
`scaling_inputs` switched off. The features are cached, so after the first run each cell costs seconds.
Prints validation AUC (what the choice was made on) and test AUC per arm, seed-averaged, with the per-seed
test differences.

    MEDTRANSFER_DATA=../shared/data/medmnist PYTHONPATH=src .venv/bin/python benchmarks/probe_scaling.py
    PYTHONPATH=src .venv/bin/python benchmarks/probe_scaling.py --targets heart:hungary,heart:switzerland,heart:va \
        --source heart:cleveland --budgets 5,10,20,40 --seeds 5 --image-size default

Runtime on 2 CPU cores with the defaults (BreastMNIST and PneumoniaMNIST, Lite0 at 224 px, 1% and 10%,
3 seeds): 29 s with the features cached; a cold cache first computes Lite0's features of the images used
(minutes at 224 px; not timed). The heart example: 24 s.
"""

from __future__ import annotations

import argparse

import numpy as np

import medtransfer as mt
from medtransfer.strategies import linear_probe


def probe(target: str, source: str, budget: str, seed: int, pool: bool, image_size) -> tuple[float, float]:
    original = linear_probe.scaling_inputs
    if not pool:
        linear_probe.scaling_inputs = lambda ctx: None
    try:
        run = mt.transfer(target, "linear-probe", source, budget=budget, seed=seed, save=False, progress=False,
                          image_size=image_size)
    finally:
        linear_probe.scaling_inputs = original
    return run.metrics["val"]["auc"]["value"], run.metrics["test"]["auc"]["value"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", default="medmnist:breastmnist,medmnist:pneumoniamnist")
    parser.add_argument("--source", default="imagenet:efficientnet_lite0")
    parser.add_argument("--budgets", default="1%,10%")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--image-size", default="native",
                        help="a number of pixels, native, or default (the modality's own; for other data)")
    args = parser.parse_args()
    named = {"native": "native", "default": None}
    size = named[args.image_size] if args.image_size in named else int(args.image_size)
    print(f"linear-probe <- {args.source}, image size {size}, seeds 0-{args.seeds - 1}; seed means\n")
    print("| target | budget | val AUC labelled / unlabelled | test AUC labelled / unlabelled | test Δ per seed |")
    print("| --- | --- | --- | --- | --- |")
    for target in args.targets.split(","):
        for budget in args.budgets.split(","):
            arms = {pool: np.array([probe(target, args.source, budget, seed, pool, size)
                                    for seed in range(args.seeds)]) for pool in (False, True)}
            labelled, pooled = arms[False].mean(0), arms[True].mean(0)  # (val AUC, test AUC)
            delta = arms[True][:, 1] - arms[False][:, 1]
            print(f"| {target} | {budget} | {labelled[0]:.3f} / {pooled[0]:.3f} | {labelled[1]:.3f} / {pooled[1]:.3f} | "
                  + ", ".join(f"{d:+.3f}" for d in delta) + " |", flush=True)


if __name__ == "__main__":
    main()
