"""Accuracy benchmark: OrganAMNIST-pretrained ResNet-18 -> PneumoniaMNIST, against scratch.

Prints test AUC [95% CI] per (strategy, budget), mean over seeds. The source is pretrained once
and cached (MEDTRANSFER_CACHE). On 2 CPU cores: about 30 minutes with the defaults.

    python benchmarks/pneumonia_transfer.py --data-root ../shared/data/medmnist
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import medtransfer as mt
from medtransfer.evaluation import auc_paired_mean_ci


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-root", default="../shared/data/medmnist")
    parser.add_argument("--source", default="medmnist:organamnist")
    parser.add_argument("--source-epochs", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--budgets", default="1%,all")
    parser.add_argument("--strategies", default="scratch,full,linear-probe,lp-ft")
    args = parser.parse_args()
    rows = []
    for budget in args.budgets.split(","):
        for strategy in args.strategies.split(","):
            seeds = range(args.seeds) if budget != "all" else range(1)
            probs, started = [], time.perf_counter()
            for seed in seeds:
                result = mt.transfer("medmnist:pneumoniamnist", strategy, source=args.source, budget=budget,
                                     seed=seed, backbone="resnet18", data_root=args.data_root, save=False,
                                     epochs=args.epochs, source_epochs=args.source_epochs, progress=False)
                test = result.predictions[result.predictions.split == "test"]
                probs.append(test[["prob_normal", "prob_pneumonia"]].to_numpy())
                y = test["label"].to_numpy()
                print(f"  {strategy:13s} budget={budget:4s} seed={seed} test AUC "
                      f"{result.metrics['test']['auc']['value']:.4f}", flush=True)
            auc = auc_paired_mean_ci(y, probs, seed=0)
            rows.append((budget, strategy, len(probs), auc, time.perf_counter() - started))
    print(f"\n{'budget':6s} {'strategy':13s} seeds  test AUC [95% CI]        seconds")
    for budget, strategy, n, auc, secs in rows:
        print(f"{budget:6s} {strategy:13s} {n:5d}  {auc['value']:.4f} [{auc['ci'][0]:.4f}, {auc['ci'][1]:.4f}]  {secs:7.0f}")
    by = {(b, s): a["value"] for b, s, _, a, _ in rows}
    for budget in args.budgets.split(","):
        if (budget, "scratch") in by:
            best = max((v, s) for (b, s), v in by.items() if b == budget and s != "scratch")
            print(f"budget {budget}: best transfer {best[1]} {best[0]:.4f} vs scratch {by[(budget, 'scratch')]:.4f} "
                  f"(difference {best[0] - by[(budget, 'scratch')]:+.4f})")


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
