"""Accuracy benchmark: self-supervised sources (SimCLR, MoCo v2) on unlabelled images -> a labelled target
with few labels, against training from scratch.

1. Pretrain each --methods source on the *training images* of --source (one dataset or a comma list,
   pooled; labels ignored) with `medtransfer.pretrain(..., method=...)`. Runs are written to
   --out/<method> and reused when they exist (delete them or pass --fresh to retrain).
2. For each label budget x seed: `linear-probe` (and any other --strategies) from every SSL source, and
   `scratch` with the same architecture, on --target; every cell is scored on the same test split.
3. Print per (source, strategy, budget): mean test AUC over seeds [95% CI, paired bootstrap over test
   samples], and the paired difference against scratch at the same budget and seeds [95% CI, p].
   results.csv in --out holds every cell.

    python benchmarks/ssl_pretrain.py --data-root ../shared/data/medmnist \
        --source medmnist:pneumoniamnist,medmnist:organamnist --target medmnist:pneumoniamnist \
        --epochs 100 --budgets 1%,10% --seeds 3
    python benchmarks/ssl_pretrain.py --target medmnist:breastmnist --source medmnist:breastmnist,medmnist:organamnist

Smoke test (about a minute on 2 CPU cores):

    python benchmarks/ssl_pretrain.py --limit 512 --epochs 1 --seeds 1 --image-size 32 --transfer-epochs 1 \
        --out /tmp/ssl-smoke --fresh

Runtime with the defaults (resnet18 at 64 px, 39k pooled images, 100 epochs per method): hours on
CPU; on one H100 roughly 15-30 s per epoch per method. The CPU-sized version that was measured
(32 px, 12,000 pooled images, 15 and 30 epochs, as an experiment grid with a report) is
examples/ssl.yaml; its header has the commands, times and results.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import time
from pathlib import Path

import numpy as np

import medtransfer as mt
from medtransfer.evaluation import auc_paired_difference, auc_paired_mean_ci


def pretrain_sources(args) -> dict[str, Path]:
    sources = {}
    for method in args.methods.split(","):
        folder = Path(args.out) / method
        if args.fresh and folder.exists():
            shutil.rmtree(folder)
        if (folder / "model.json").is_file():
            print(f"[{method}] reusing {folder}", flush=True)
        else:
            started = time.perf_counter()
            run = mt.pretrain(args.source, method=method, backbone=args.backbone, out=folder, seed=0,
                              overwrite=True, data_root=args.data_root, image_size=args.image_size,
                              epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, limit=args.limit or None,
                              accelerator=args.device, progress=not args.quiet)
            monitor = run.metrics["monitor"]
            shown = f"k-NN AUC {monitor['best']:.4f} at epoch {monitor['best_epoch']}" if monitor else "no monitor"
            print(f"[{method}] pretrained on {run.config['n_images']} images in "
                  f"{time.perf_counter() - started:.0f} s; {shown}", flush=True)
        sources[method] = folder
    return sources


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default="../shared/data/medmnist")
    parser.add_argument("--source", default="medmnist:pneumoniamnist,medmnist:organamnist",
                        help="dataset(s) whose training images are pretrained on (comma list, pooled)")
    parser.add_argument("--target", default="medmnist:pneumoniamnist")
    parser.add_argument("--methods", default="simclr,moco")
    parser.add_argument("--strategies", default="linear-probe", help="transfer strategies from each SSL source")
    parser.add_argument("--budgets", default="1%,10%")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=100, help="pretraining epochs")
    parser.add_argument("--batch-size", type=int, default=256, help="pretraining batch size")
    parser.add_argument("--lr", type=float, default=None, help="pretraining learning rate (default 1e-3)")
    parser.add_argument("--limit", type=int, default=0, help="pretrain on this many (seeded) images; 0 = all")
    parser.add_argument("--transfer-epochs", type=int, default=None, help="epochs of scratch / fine-tuning "
                        "strategies (default: the toolkit's)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="runs/ssl_pretrain")
    parser.add_argument("--fresh", action="store_true", help="retrain the sources even if --out has them")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--n-boot", type=int, default=1000)
    args = parser.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    sources = pretrain_sources(args)
    arms = [("none", "scratch", None)] + [(m, s, str(p)) for m, p in sources.items() for s in args.strategies.split(",")]
    cells, probs, y_test = [], {}, None
    for budget in args.budgets.split(","):
        for seed in range(args.seeds):
            for method, strategy, source in arms:
                t0 = time.perf_counter()
                result = mt.transfer(args.target, strategy, source=source, budget=budget, seed=seed,
                                     backbone=args.backbone, image_size=args.image_size, data_root=args.data_root,
                                     epochs=args.transfer_epochs, accelerator=args.device, save=False,
                                     progress=False, n_boot=200)
                test = result.predictions[result.predictions.split == "test"]
                prob = test[[c for c in test.columns if c.startswith("prob_")]].to_numpy()
                y_test = test["label"].to_numpy()
                probs.setdefault((method, strategy, budget), []).append(prob)
                auc = result.metrics["test"]["auc"]["value"]
                cells.append({"source": method, "strategy": strategy, "budget": budget, "seed": seed,
                              "n_labels": result.config["n_train_labels"], "test_auc": auc,
                              "seconds": round(time.perf_counter() - t0, 1)})
                print(f"  {method:7s} {strategy:13s} budget={budget:4s} seed={seed} "
                      f"labels={result.config['n_train_labels']:4d} test AUC {auc:.4f}", flush=True)
    with open(Path(args.out) / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(cells[0]))
        writer.writeheader()
        writer.writerows(cells)

    print(f"\ntarget {args.target}; sources pretrained on {args.source} ({args.backbone} @ {args.image_size}px, "
          f"{args.epochs} epochs); {args.seeds} seed(s); test n={len(y_test)}")
    print(f"{'source':8s} {'strategy':13s} {'budget':6s} {'test AUC [95% CI]':27s} {'vs scratch [95% CI]':28s} p")
    summary = []
    for budget in args.budgets.split(","):
        scratch = probs[("none", "scratch", budget)]
        for method, strategy, _ in arms:
            runs = probs[(method, strategy, budget)]
            auc = auc_paired_mean_ci(y_test, runs, n_boot=args.n_boot, seed=0)
            line = f"{method:8s} {strategy:13s} {budget:6s} {auc['value']:.4f} [{auc['ci'][0]:.4f}, {auc['ci'][1]:.4f}]   "
            row = {"source": method, "strategy": strategy, "budget": budget, "auc": auc}
            if strategy != "scratch":
                diff = auc_paired_difference(y_test, runs, scratch, n_boot=args.n_boot, seed=0)
                line += f"{diff['value']:+.4f} [{diff['ci'][0]:+.4f}, {diff['ci'][1]:+.4f}]   {diff['p']:.3f}"
                row["vs_scratch"] = diff
            print(line)
            summary.append(row)
    (Path(args.out) / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    print(f"\nwrote {Path(args.out) / 'results.csv'} and summary.json; total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
