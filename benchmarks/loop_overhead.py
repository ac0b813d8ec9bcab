"""Overhead benchmark: one epoch of the toolkit's `fit()` against a bare PyTorch loop.

Both sides train the same architecture from the same initial weights (state_dict copy) on the same
PneumoniaMNIST tensors, with AdamW (same lr / weight decay), cross-entropy, the same batch size and
number of steps, no augmentation, and the same device (CUDA with bf16 autocast, as Fabric's
"bf16-mixed", when available; else CPU in float32). The model's preprocess resize runs on both sides
(it is the same nn.Module).

`fit` is run with epochs=1 and a 4-image validation split; its fixed per-call cost (Fabric setup,
the validation before the first step, the best-weights deepcopy, the final load_state_dict) is
measured with epochs=0 and subtracted, so the compared "epoch" is fit(1) - fit(0). The full fit(1)
time and one bare validation pass are printed too. Warm-up once each, then --reps repetitions
interleaved (fit0, fit1, bare, ...); medians are reported. PASS when epoch ratio <= --max-ratio.

    PYTHONPATH=src .venv/bin/python benchmarks/loop_overhead.py --n 512 --reps 3

Runtime on 2 CPU cores with --n 512: about 1 minute with --threads 1 (one resnet18 epoch at 64 px
is ~5 s), 2-3 minutes when the cores are shared with other jobs; the default --n 1024 takes twice
that; seconds on a GPU.
"""

from __future__ import annotations

import math
import statistics
import time

import torch
import torch.nn.functional as F

from bench_common import base_parser, setup, sync
from medtransfer.data import Split, load_dataset
from medtransfer.models.backbones import create_model, default_spec, describe
from medtransfer.training.loop import TrainConfig, fit, predict_proba, selection_score


def bare_epoch(model, x, y, config: TrainConfig, device: torch.device) -> float:
    """The reference loop; returns seconds (data already on `device`)."""
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    bs = min(config.batch_size, len(x))
    sync(device)
    start = time.perf_counter()
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(config.seed)).to(device)
    model.train()
    for i in range(0, len(x), bs):
        idx = perm[i:i + bs]
        with autocast:
            logits = model(x[idx])
        loss = F.cross_entropy(logits.float(), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync(device)
    return time.perf_counter() - start


def timed_fit(model, train: Split, val: Split, config: TrainConfig, epochs: int) -> float:
    config = TrainConfig(**{**config.__dict__, "epochs": epochs})
    start = time.perf_counter()
    fit(model, [{"params": list(model.parameters())}], train, val, "binary", "image2d", config)
    return time.perf_counter() - start


def main() -> None:
    parser = base_parser(__doc__, n=1024, batch_size=64)
    args = parser.parse_args()
    accelerator, device = setup(args)

    data = load_dataset("medmnist:pneumoniamnist", data_root=args.data_root)
    train = data.train.subset(torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0))[:args.n]) \
        if args.n else data.train
    val_index = torch.cat([torch.nonzero(data.val.y == c).flatten()[:2] for c in range(data.num_classes)])
    val = data.val.subset(val_index)
    config = TrainConfig(epochs=1, batch_size=args.batch_size, lr=1e-3, weight_decay=1e-4, patience=10**6,
                         augment=False, seed=0, accelerator=accelerator, progress=False)

    def new_model():
        return create_model(describe(args.backbone, "image2d", data.in_channels),
                            default_spec("image2d", data.in_channels, image_size=args.image_size), data.num_outputs)

    toolkit_model, bare_model = new_model(), new_model()
    init = {k: v.clone() for k, v in toolkit_model.state_dict().items()}
    x_dev, y_dev = train.x.to(device), train.y.to(device)

    def run(side: str) -> float:
        model = toolkit_model if side.startswith("fit") else bare_model
        model.load_state_dict(init)
        model.to(device)
        if side == "bare":
            return bare_epoch(model, x_dev, y_dev, config, device)
        return timed_fit(model, train, val, config, epochs=int(side[-1]))

    def val_pass() -> float:
        toolkit_model.to(device)
        start = time.perf_counter()
        selection_score(val.y.numpy(), predict_proba(toolkit_model, val.x, "binary", 512, device), "binary")
        return time.perf_counter() - start

    sides = ["fit0", "fit1", "bare"]
    for side in sides:  # warm-up
        run(side)
    times = {side: [] for side in sides + ["val"]}
    for _ in range(args.reps):
        for side in sides:
            times[side].append(run(side))
        times["val"].append(val_pass())
    med = {side: statistics.median(ts) for side, ts in times.items()}
    epoch = med["fit1"] - med["fit0"]
    ratio, full_ratio = epoch / med["bare"], med["fit1"] / med["bare"]

    steps = math.ceil(len(train) / min(args.batch_size, len(train)))
    print(f"{args.backbone} @ {args.image_size}px, n={len(train)}, batch {args.batch_size}, {steps} steps, "
          f"device {accelerator}, threads {torch.get_num_threads()}, reps {args.reps}, val n={len(val)}")
    print(f"{'measurement':<36}{'median s':>10}  runs")
    rows = [("bare loop, 1 epoch", med["bare"], times["bare"]),
            ("fit(epochs=1), whole call", med["fit1"], times["fit1"]),
            ("fit(epochs=0), fixed cost", med["fit0"], times["fit0"]),
            ("  of which one validation pass", med["val"], times["val"]),
            ("fit epoch = fit(1) - fit(0)", epoch, [])]
    for name, value, runs in rows:
        print(f"{name:<36}{value:>10.3f}  " + " ".join(f"{t:.3f}" for t in runs))
    print(f"ratio epoch  toolkit/bare = {ratio:.3f}   (whole fit(1) call / bare = {full_ratio:.3f})")
    print("PASS" if ratio <= args.max_ratio else "FAIL", f"(threshold {args.max_ratio})")


if __name__ == "__main__":
    main()
