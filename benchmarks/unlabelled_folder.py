"""The user's path to the probe scaling: a hospital folder holding only its labelled images, and
`--unlabelled folder:PATH` with the rest, against the same run without it.

Per seed it writes BreastMNIST as a user would have it: the 10% draw's labelled training images as `train/`,
its validation images as `val/`, the test split as `test/` (PNG class folders), and the other training images,
without labels, as one flat folder; then runs Lite0's linear probe at 224 px on `folder:` with and without
`--unlabelled`. The rows are those `benchmarks/probe_scaling.py` draws through the label budget, so the two
paths should agree (up to the images `--unlabelled` leaves out for being identical to validation or test ones).

    PYTHONPATH=src .venv/bin/python benchmarks/unlabelled_folder.py --out /tmp/unlabelled-check

Runtime on 2 CPU cores: 14 s with Lite0's BreastMNIST features cached (they are the same rows), about 4 min cold.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

import medtransfer as mt
from medtransfer.data import load_dataset
from medtransfer.data.budget import apply_budget


def write_pngs(x, y, folder: Path, classes: list[str] | None) -> None:
    """Images in [0, 1] as 8-bit PNGs (MedMNIST's own bytes), in class folders when `classes` is given."""
    for i, (image, label) in enumerate(zip(x, y)):
        path = folder / (classes[int(label)] if classes else "") / f"{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((image[0].numpy() * 255).round().astype(np.uint8), "L").save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="a new folder for the written images")
    parser.add_argument("--data-root", default="../shared/data/medmnist")
    parser.add_argument("--budget", default="10%")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    data = load_dataset("medmnist:breastmnist", data_root=args.data_root)
    print("| seed | test AUC without --unlabelled | with | config.json unlabelled |\n| --- | --- | --- | --- |")
    for seed in range(args.seeds):
        drawn, folder = apply_budget(data, args.budget, seed), Path(args.out) / f"seed{seed}"
        for split, x, y in (("train", drawn.train.x, drawn.train.y), ("val", drawn.val.x, drawn.val.y),
                            ("test", data.test.x, data.test.y)):
            write_pngs(x, y, folder / "hospital" / split, data.classes)
        labelled = {row.numpy().tobytes() for row in drawn.train.x}
        rest = [i for i, row in enumerate(data.train.x) if row.numpy().tobytes() not in labelled]
        write_pngs(data.train.x[rest], data.train.y[rest], folder / "unlabelled", None)
        runs = [mt.transfer(f"folder:{folder / 'hospital'}", "linear-probe", "imagenet:efficientnet_lite0",
                            image_size="native", seed=seed, save=False, progress=False, **extra)
                for extra in ({}, {"unlabelled": f"folder:{folder / 'unlabelled'}"})]
        used = runs[1].config["unlabelled"]
        without, with_ = (run.metrics["test"]["auc"]["value"] for run in runs)
        print(f"| {seed} | {without:.3f} | {with_:.3f} | {used['images']} used; left out: "
              f"{used['held_out_duplicates']} identical to validation or test, {used['training_duplicates']} to "
              "training images |", flush=True)


if __name__ == "__main__":
    main()
