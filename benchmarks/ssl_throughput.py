"""Throughput benchmark: one SimCLR pretraining epoch through the toolkit (`training.fit` with the SimCLR
method's batch loss) against a bare PyTorch SimCLR loop, in images per second.

Both sides train the same model (the toolkit's Classifier encoder + lightly's SimCLRProjectionHead,
from the same initial weights), on the same PneumoniaMNIST training images already on the device,
with the same batch size and number of steps, the same two views per image (the toolkit's batched
`two_views`, seeded alike), the same loss (lightly's NTXentLoss, float32), AdamW with the same lr /
weight decay, and the same device (CUDA with bf16 autocast, as Fabric's "bf16-mixed", when available;
else CPU in float32). The toolkit side runs without a monitor (`score_fn` returns None), as
`--no-monitor` does; its per-epoch extras (scheduler, best-weights copy) stay in the timing.

`fit` is run with epochs=1 and with epochs=0; the compared "epoch" is fit(1) - fit(0), which removes
the fixed per-call cost (Fabric setup). Warm-up once each, then --reps repetitions interleaved;
medians are reported; ratio = toolkit time / bare time (1.0 = no overhead). PASS when <= --max-ratio.

    PYTHONPATH=src .venv/bin/python benchmarks/ssl_throughput.py --n 256 --reps 2 --image-size 32

Runtime on 2 CPU cores with --n 512 --image-size 64: a few minutes (each SimCLR epoch is two resnet18
passes per image plus their backward); seconds on a GPU.
"""

from __future__ import annotations

import math
import statistics
import time

import torch

from bench_common import base_parser, setup, sync
from medtransfer.data import Split, load_dataset
from medtransfer.models.backbones import create_model, default_spec, describe
from medtransfer.ssl.simclr import SimCLR
from medtransfer.training.augment import ViewConfig, two_views
from medtransfer.training.loop import TrainConfig, fit


def bare_epoch(method: SimCLR, x: torch.Tensor, config: TrainConfig, views: ViewConfig,
               device: torch.device) -> float:
    """The reference loop (uses only the method's modules and loss); returns seconds."""
    encoder, head, criterion = method.encoder, method.projection_head, method.criterion
    params = list(encoder.backbone.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    generator = torch.Generator().manual_seed(config.seed)
    bs = min(config.batch_size, len(x))
    sync(device)
    start = time.perf_counter()
    perm = torch.randperm(len(x), generator=generator).to(device)
    encoder.train()
    head.train()
    for i in range(0, len(x), bs):
        xb = x[perm[i:i + bs]]
        if len(xb) < 2:
            continue
        v1, v2 = two_views(xb, generator, views)
        with autocast:
            z = head(encoder.backbone(encoder.preprocess(torch.cat([v1, v2]))))
        z1, z2 = z.float().chunk(2)
        loss = criterion(z1, z2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync(device)
    return time.perf_counter() - start


def timed_fit(method: SimCLR, train: Split, config: TrainConfig, epochs: int) -> float:
    config = TrainConfig(**{**config.__dict__, "epochs": epochs})
    start = time.perf_counter()
    fit(method, method.parameter_groups(), train, Split(train.x[:0], train.y[:0]), "binary", "image2d", config,
        batch_loss=method.batch_loss, score_fn=lambda model: None, after_step=method.after_step, keep_initial=False)
    sync(torch.device(config.accelerator))
    return time.perf_counter() - start


def main() -> None:
    parser = base_parser(__doc__, n=512, batch_size=128)
    args = parser.parse_args()
    accelerator, device = setup(args)

    data = load_dataset("medmnist:pneumoniamnist", data_root=args.data_root)
    x = data.train.x[torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0))[:args.n or None]]
    train = Split(x, torch.zeros(len(x), dtype=torch.long))
    config = TrainConfig(epochs=1, batch_size=args.batch_size, lr=1e-3, weight_decay=1e-4, patience=10**9,
                         seed=0, accelerator=accelerator, progress=False)
    views = ViewConfig(size=args.image_size)

    def new_method() -> SimCLR:
        torch.manual_seed(0)
        encoder = create_model(describe(args.backbone, "image2d", data.in_channels),
                               default_spec("image2d", data.in_channels, image_size=args.image_size), 1)
        return SimCLR(encoder, views)

    toolkit, bare = new_method(), new_method()
    init = {k: v.clone() for k, v in toolkit.state_dict().items()}
    x_dev = train.x.to(device)

    def run(side: str) -> float:
        method = toolkit if side.startswith("fit") else bare
        method.load_state_dict(init)
        method.to(device)
        if side == "bare":
            return bare_epoch(method, x_dev, config, views, device)
        return timed_fit(method, train, config, epochs=int(side[-1]))

    sides = ["fit0", "fit1", "bare"]
    for side in sides:  # warm-up
        run(side)
    times = {side: [] for side in sides}
    for _ in range(args.reps):
        for side in sides:
            times[side].append(run(side))
    med = {side: statistics.median(ts) for side, ts in times.items()}
    epoch = med["fit1"] - med["fit0"]
    ratio = epoch / med["bare"]

    steps = math.ceil(len(train) / min(args.batch_size, len(train)))
    print(f"SimCLR {args.backbone} @ {args.image_size}px, n={len(train)} images (2 views each), batch "
          f"{args.batch_size}, {steps} steps, device {accelerator}, threads {torch.get_num_threads()}, reps {args.reps}")
    print(f"{'measurement':<34}{'median s':>10}{'images/s':>10}  runs")
    rows = [("bare PyTorch SimCLR, 1 epoch", med["bare"], times["bare"]),
            ("fit(epochs=1), whole call", med["fit1"], times["fit1"]),
            ("fit(epochs=0), fixed cost", med["fit0"], times["fit0"]),
            ("toolkit epoch = fit(1) - fit(0)", epoch, [])]
    for name, value, runs in rows:
        rate = f"{len(train) / value:10.1f}" if "fixed" not in name else f"{'':10s}"
        print(f"{name:<34}{value:>10.3f}{rate}  " + " ".join(f"{t:.3f}" for t in runs))
    print(f"ratio epoch  toolkit/bare = {ratio:.3f}   (images/s toolkit {len(train) / epoch:.1f}, "
          f"bare {len(train) / med['bare']:.1f})")
    print("PASS" if ratio <= args.max_ratio else "FAIL", f"(threshold {args.max_ratio})")


if __name__ == "__main__":
    main()
