"""Fine-tuning recipes chosen on validation: epochs / patience, learning rate, layer-wise decay and
augmentation for `full` (or another strategy).

Runs each recipe on the same target, source, budget and seeds, and prints per recipe the seed-mean
validation AUC (what the choice uses), the epoch kept and the epochs run (a recipe that keeps its last
epoch is under-trained), the seconds per run, and the test AUC. The recipe with the best validation AUC is
marked; its test AUC is the number to report, the others' only show what the choice cost or saved.

    python benchmarks/recipes.py --data medmnist:pneumoniamnist --source medmnist:organamnist \
        --budget 1% --seeds 2 --source-epochs 3
    python benchmarks/recipes.py --data ucr:ECG200@140 --source ucr:ECG5000@pooled --budget 100% \
        --source-epochs 30 --data-root ../shared/data/signals/ecg --recipes "default,lr 3e-4,lr 3e-3,..."
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import medtransfer as mt

# name -> transfer() options on top of the modality's defaults (defaults.TRAINING: 2D images 15 epochs,
# patience 5, lr 1e-3, augmentation on; signals 100 epochs, patience 20, lr 1e-3, augmentation on; both
# layer decay 0.7 since these runs chose it, "flat" being the rule they were compared with)
RECIPES = {
    "default": {},
    "flat": {"layer_decay": "flat"},
    "layer-decay 0.7": {"layer_decay": 0.7},
    "30 epochs patience 10": {"epochs": 30, "patience": 10},
    "lr 3e-4": {"lr": 3e-4},
    "lr 3e-3": {"lr": 3e-3},
    "no augmentation": {"augment": False},
    "patience 10": {"patience": 10},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="medmnist:pneumoniamnist")
    parser.add_argument("--source", default="medmnist:organamnist")
    parser.add_argument("--strategy", default="full")
    parser.add_argument("--budget", default="1%")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--source-epochs", type=int, default=3)
    parser.add_argument("--image-size", default=None, help="pixels or 'native' (default: the source's default)")
    parser.add_argument("--backbone", default=None, help="default: the modality's")
    parser.add_argument("--data-root", default="../shared/data/medmnist")
    parser.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated names from RECIPES")
    args = parser.parse_args()
    size = int(args.image_size) if args.image_size and args.image_size.isdigit() else args.image_size
    rows = []
    for name in args.recipes.split(","):
        val, test, kept, secs = [], [], [], []
        for seed in range(args.seeds):
            started = time.perf_counter()
            run = mt.transfer(args.data, args.strategy, source=args.source, budget=args.budget, seed=seed,
                              image_size=size, source_epochs=args.source_epochs, data_root=args.data_root,
                              backbone=args.backbone,
                              save=False, progress=False, n_boot=0, **RECIPES[name])
            secs.append(time.perf_counter() - started)
            val.append(run.metrics["val"]["auc"]["value"])
            test.append(run.metrics["test"]["auc"]["value"])
            fit = run.metrics["fit"]
            kept.append(f"{fit.get('best_epoch', '-')}/{fit.get('epochs_run', '-')}")
            print(f"  {name:24s} seed {seed}: val AUC {val[-1]:.4f}  test AUC {test[-1]:.4f}  "
                  f"epoch kept {kept[-1]}  {secs[-1]:.0f} s", flush=True)
        rows.append((name, float(np.mean(val)), float(np.mean(test)), " ".join(kept), float(np.mean(secs))))
    best = max(rows, key=lambda r: r[1])[0]
    print(f"\n{args.data} <- {args.source}, {args.strategy}, budget {args.budget}, {args.seeds} seeds")
    print(f"{'recipe':26s} {'val AUC':>8s} {'test AUC':>9s}  epoch kept/run   s/run")
    for name, v, t, kept, s in rows:
        print(f"{('* ' if name == best else '  ') + name:26s} {v:8.4f} {t:9.4f}  {kept:15s} {s:6.0f}")
    print("* chosen on validation")


if __name__ == "__main__":
    main()
