"""Two targets, one source, `--jobs 2`, an empty feature cache: the grid's wall time and test AUCs.

Both targets' images land in one feature-cache folder (the source's model, 28x28 grey rows), so with the
folder locked while features were computed, a worker needing PneumoniaMNIST rows waited for one computing
BreastMNIST rows. With claims (`models.feature_cache._cooperate`) each computes its own rows side by side.
Compare code versions by running this script with each on PYTHONPATH (e.g. a `git worktree` of the commit
before claims), one after the other and in both orders: the machine is noisy and the first run of a session
is slower (cold OS caches).

    PYTHONPATH=src .venv/bin/python benchmarks/shared_features.py new

Runtime on 2 CPU cores: 2.5-5 minutes (PneumoniaMNIST and BreastMNIST at 10%, Lite0 at 224 px, 2 seeds).
Measured (order old, new, new, old): 306 s, 158 s, 144 s, 181 s; every test AUC identical.
"""

import os
import sys
import tempfile
from pathlib import Path

import yaml
from bench_common import timed_grid

GRID = {"name": "shared-features", "targets": ["medmnist:pneumoniamnist", "medmnist:breastmnist"],
        "sources": ["imagenet:efficientnet_lite0"], "strategies": ["linear-probe"], "budgets": ["10%"], "seeds": 2,
        "train": {"image_size": "native"}, "n_boot": 100}


def main() -> None:
    label = sys.argv[1] if len(sys.argv) > 1 else "this code"
    data_root = os.environ.get("MEDTRANSFER_DATA", "../shared/data/medmnist")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "grid.yaml").write_text(yaml.safe_dump(GRID | {"data_root": str(Path(data_root).resolve())}))
        wall, table = timed_grid(tmp / "grid.yaml", tmp, jobs=2)
        table = table.sort_values("cell_id")
        print(f"{label}: wall {wall:.0f} s; test AUCs " + " ".join(f"{a:.4f}" for a in table.test_auc))


if __name__ == "__main__":  # the grid's workers are spawned: they import this file, they must not run it
    main()
