"""Grid order benchmark: one linear-probe grid, cold feature cache, cells in grid order against interleaved.

In grid order the parallel cells of one source sit side by side (seeds of one budget), so two workers ask
for the same model's new features at once and one waits on that model's feature-cache lock while the other
computes them on its core. `experiment.runner.interleaved` alternates sources instead. Both runs use the
same config and `--jobs`, one after the other (`--interleaved-first` swaps them), each with an empty cache (`MEDTRANSFER_CACHE` in a temporary folder, so the
workers inherit it); only the order of the parallel cells differs. Prints each wall time, their ratio,
and checks that every cell's test AUC is identical.

    PYTHONPATH=src .venv/bin/python benchmarks/grid_order.py --data-root ../shared/data/medmnist

Runtime on 2 CPU cores with the defaults (BreastMNIST, Lite0 and Lite1 at 224 / 240 px, budgets 10% and
100%, 2 seeds): about 10 minutes for both runs.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pandas as pd
import yaml

from bench_common import timed_grid
from medtransfer.experiment import runner

GRID = {"name": "grid-order", "strategies": ["linear-probe"], "budgets": ["10%", "100%"], "seeds": 2,
        "train": {"image_size": "native"}, "n_boot": 100}


def run(config: Path, out: Path, jobs: int, order) -> tuple[float, pd.DataFrame]:
    original, runner.interleaved = runner.interleaved, order
    try:
        return timed_grid(config, out, jobs)
    finally:
        runner.interleaved = original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default="../shared/data/medmnist")
    parser.add_argument("--target", default="medmnist:breastmnist")
    parser.add_argument("--sources", default="imagenet:efficientnet_lite0,imagenet:efficientnet_lite1")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--interleaved-first", action="store_true", help="run the interleaved grid first")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        config = tmp / "grid.yaml"
        config.write_text(yaml.safe_dump(GRID | {"targets": [args.target], "sources": args.sources.split(","),
                                                 "data_root": str(Path(args.data_root).resolve())}))
        orders = {"grid order": lambda todo: todo, "interleaved": runner.interleaved}
        names = ["interleaved", "grid order"] if args.interleaved_first else ["grid order", "interleaved"]
        measured = {name: run(config, tmp / name.replace(" ", "-"), args.jobs, orders[name]) for name in names}
    (grid_s, grid_table), (mixed_s, mixed_table) = measured["grid order"], measured["interleaved"]
    auc = ["cell_id", "test_auc"]
    same = (grid_table[auc].sort_values("cell_id").reset_index(drop=True)
            .equals(mixed_table[auc].sort_values("cell_id").reset_index(drop=True)))
    print(f"| order | cells | wall s |\n| --- | --- | --- |\n| grid order | {len(grid_table)} | {grid_s:.0f} |\n"
          f"| interleaved | {len(mixed_table)} | {mixed_s:.0f} |")
    print(f"interleaved / grid order: {mixed_s / grid_s:.2f}; every test AUC identical: {same}")


if __name__ == "__main__":
    main()
