"""Data-parallel scaling: training steps/s and images/s of the toolkit's `fit` on 1 vs N devices (DDP).

The same PneumoniaMNIST subset, architecture, seed and global batch on every row; no augmentation; a
4-image validation split, so an epoch is nearly all training steps. Each device count runs in its own
data-parallel launch (`training.distributed.launch`, the processes `--devices N` starts), so one device
is measured the same way: fit(epochs=1) warms up (DDP buckets, allocator), then fit(--epochs) is timed
--reps times; the median is reported. Rows: devices, processes x torch threads each, steps/s (global
batches), images/s, speedup over one device.

On CPU a "device" is a process: Fabric gives each cpu_count // N torch threads, so 1 device uses every
core through intra-op threads and N devices split the cores between processes. A layout "NxT" pins T
threads per process instead (OMP_NUM_THREADS), e.g. 1x1 for one process on one core: the fair baseline
when other jobs share the cores, where intra-op threads wait for each other. On two cores expect little
speed-up from data parallelism itself (the all-reduce over gloo costs what the second core gives); the
benchmark is for a many-core host or GPUs (--device cuda: one GPU per device, NCCL).

    PYTHONPATH=src .venv/bin/python benchmarks/ddp_scaling.py --layouts 1x1,1,2 --n 512 --image-size 32 --reps 2

Runtime on 2 shared CPU cores with those settings: a few minutes (each launch starts N interpreters
that import Lightning and medtransfer, 10-30 s, not counted in the rates).
"""

from __future__ import annotations

import math
import os
import statistics
import time

import torch

from bench_common import base_parser, setup
from medtransfer.data import load_dataset
from medtransfer.models.backbones import create_model, default_spec, describe
from medtransfer.training import distributed
from medtransfer.training.loop import TrainConfig, fit


def measure(args, accelerator: str, devices: int) -> dict:
    """In every rank of the launch: warm-up fit, then --reps timed fits; rank 0's medians are returned."""
    data = load_dataset("medmnist:pneumoniamnist", data_root=args.data_root)
    train = data.train.subset(torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0))[:args.n]) \
        if args.n else data.train
    val = data.val.subset(torch.cat([torch.nonzero(data.val.y == c).flatten()[:2] for c in range(data.num_classes)]))
    config = TrainConfig(epochs=1, batch_size=args.batch_size, lr=1e-3, patience=10**6, augment=False, seed=0,
                         accelerator=accelerator, progress=False, devices=devices)
    spec = default_spec("image2d", data.in_channels, image_size=args.image_size)

    def timed(epochs: int) -> float:
        torch.manual_seed(0)
        model = create_model(describe(args.backbone, "image2d", data.in_channels), spec, data.num_outputs)
        start = time.perf_counter()
        fit(model, [{"params": list(model.parameters())}], train, val, "binary", "image2d",
            TrainConfig(**{**config.__dict__, "epochs": epochs}))
        return time.perf_counter() - start

    timed(1)
    seconds = statistics.median(timed(args.epochs) for _ in range(args.reps))
    steps = math.ceil(len(train) / min(args.batch_size, len(train))) * args.epochs
    return {"devices": devices, "threads": torch.get_num_threads(), "seconds": seconds, "steps": steps,
            "images": len(train) * args.epochs}


def launch_layout(args, accelerator: str, layout: str) -> dict:
    """One launch of `measure`: "N" devices with Fabric's thread split, or "NxT" with T threads each."""
    devices, _, threads = layout.partition("x")
    saved = os.environ.get("OMP_NUM_THREADS")
    if threads:
        os.environ["OMP_NUM_THREADS"] = threads  # read by the new interpreters; Fabric then leaves it alone
    try:
        return distributed.launch(measure, args, accelerator, int(devices), devices=int(devices),
                                  accelerator=accelerator)
    finally:
        if saved is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = saved


def main() -> None:
    parser = base_parser(__doc__, n=512, batch_size=64)
    parser.add_argument("--layouts", default="1x1,1,2", help="device counts to compare, each N (Fabric's threads: "
                        "cores // N) or NxT (T torch threads per process), e.g. 1x1,1,2 or 1,2,4 on GPUs")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per timed fit")
    parser.set_defaults(image_size=32, reps=2)
    args = parser.parse_args()
    accelerator, _ = setup(args)
    rows = [launch_layout(args, accelerator, layout) for layout in args.layouts.split(",")]

    print(f"{args.backbone} @ {args.image_size}px, n={args.n}, global batch {args.batch_size}, "
          f"{args.epochs} epoch(s) per fit, median of {args.reps}, device {accelerator}")
    print(f"{'devices':>7}  {'procs x threads':>15}  {'steps/s':>8}  {'images/s':>9}  {'speed-up':>8}")
    base = rows[0]["images"] / rows[0]["seconds"]
    for row in rows:
        rate = row["images"] / row["seconds"]
        print(f"{row['devices']:>7}  {row['devices']:>9} x {row['threads']:<3}  {row['steps'] / row['seconds']:>8.2f}  "
              f"{rate:>9.1f}  {rate / base:>7.2f}x")


if __name__ == "__main__":
    main()
