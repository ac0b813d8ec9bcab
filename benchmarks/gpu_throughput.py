"""Training throughput of the toolkit's loop on an accelerator: images/s and the fraction of the bf16 peak.

What is timed is `fit` itself, the loop every strategy runs (batched on-device augmentation, cross-entropy,
AdamW, warm-up + cosine schedule, Fabric precision), on synthetic 28 px grayscale images kept on the device
(MedMNIST's shape), resized by the model's preprocess to the size under test. Each case is one
fit(epochs=3) of --steps full batches per epoch with a 4-image validation split; a Progress callback stamps
the end of every epoch (after the epoch's one loss sync and the tiny validation, so the device has finished),
and images/s = 2 x steps x batch / (end of epoch 3 - end of epoch 1). Epoch 1 holds torch.compile and cuDNN
warm-up; its time is the "1st epoch s" column. On CUDA one untimed case runs first (context and library set-up).

Models: resnet18 (1 input channel, as trained from scratch) and tf_efficientnet_lite0 (3 channels, grayscale
repeated by the preprocess, as the ImageNet source runs), random init. FLOPs per image: FlopCounterMode over
one training forward + backward (convolutions and matmuls, 2 FLOPs per multiply-add), divided by the batch;
fvcore / thop are not used since they count forward multiply-adds only. "% peak" = images/s x FLOPs per image /
the device's dense bf16 peak (PEAK_TFLOPS by device name; --peak-tflops overrides), for fp32 rows too.
"fp32" is Fabric's 32-true (cuDNN may still use TF32 for convolutions: torch's default).

Plans: "ladder" (default) adds one switch at a time per model, size and batch: fp32; bf16; bf16 + channels_last;
bf16 + channels_last + compile. "full" runs all 8 combinations. Eager cases run first, compiled ones last
(compilation takes tens of seconds per case); --time-budget skips what would start after it, and every row is
printed as it finishes, so a run cut short still reports. --json writes the rows.

    PYTHONPATH=src .venv/bin/python benchmarks/gpu_throughput.py --device cpu --quick   # smoke test, < 1 min
    PYTHONPATH=src python benchmarks/gpu_throughput.py --time-budget 330 --json $OUT/gpu_throughput.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
import warnings
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench_common import setup
from medtransfer.data.base import Split
from medtransfer.models.backbones import create_model, default_spec, describe
from medtransfer.progress import Progress, Task
from medtransfer.training.loop import TrainConfig, fit

# dense bf16 tensor-core peak, TFLOP/s, by a substring of torch.cuda.get_device_name(); first match wins
PEAK_TFLOPS = [("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("GH200", 989.0), ("H200", 989.0), ("H100", 989.0),
               ("B200", 2250.0), ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0), ("A10", 125.0)]
MODELS = {"resnet18": 1, "tf_efficientnet_lite0": 3, "test_resnet": 1}  # input channels the model is built with
PLANS = {  # (precision, channels_last, compile)
    "ladder": [("fp32", False, False), ("bf16", False, False), ("bf16", True, False), ("bf16", True, True)],
    "full": list(itertools.product(("fp32", "bf16"), (False, True), (False, True))),
}
STORED_SIZE = 28  # the images kept on the device, as MedMNIST ships them


@dataclass
class Case:
    backbone: str
    size: int
    batch: int
    precision: str
    channels_last: bool
    compile: bool


class EpochClock(Progress, Task):
    """Stamps the time at fit's start and at the end of every epoch."""

    def start(self, description: str, total: int, completed: int = 0) -> Task:
        self.stamps = [time.perf_counter()]
        return self

    def update(self, description: str | None = None, advance: int = 0) -> None:
        self.stamps.append(time.perf_counter())


def new_model(backbone: str, size: int):
    channels = MODELS.get(backbone, 1)
    return create_model(describe(backbone, "image2d", channels), default_spec("image2d", channels, image_size=size), 2)


def train_flops_per_image(backbone: str, size: int) -> float:
    """FLOPs of one training forward + backward per image (on the CPU: counts do not depend on the device)."""
    model = new_model(backbone, size).train()
    x = torch.rand(2, 1, STORED_SIZE, STORED_SIZE)
    with FlopCounterMode(display=False) as counter:
        torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1])).backward()
    return counter.get_total_flops() / len(x)


def peak_tflops(device: torch.device, override: float) -> tuple[float | None, str]:
    if override:
        return override, "--peak-tflops"
    if device.type != "cuda":
        return None, "no table entry for CPUs"
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_TFLOPS:
        if key in name:
            return value, f"table entry {key!r}"
    return None, f"{name!r} is not in the table: give --peak-tflops"


def run_case(case: Case, steps: int, accelerator: str, device: torch.device) -> dict:
    """One fit(epochs=3) of the case; throughput from epochs 2-3."""
    n = steps * case.batch
    g = torch.Generator(device=device).manual_seed(0)
    train = Split(torch.rand(n, 1, STORED_SIZE, STORED_SIZE, device=device, generator=g),
                  torch.randint(0, 2, (n,), generator=torch.Generator().manual_seed(0)))
    val = Split(torch.rand(4, 1, STORED_SIZE, STORED_SIZE), torch.tensor([0, 1, 0, 1]))
    if case.compile:
        torch._dynamo.reset()  # a fresh static-shape compile per case, not one grown dynamic by earlier cases
    torch.manual_seed(0)
    model = new_model(case.backbone, case.size)
    config = TrainConfig(epochs=3, batch_size=case.batch, lr=1e-3, patience=10**6, augment=True, seed=0,
                         accelerator=accelerator, progress=False, precision=case.precision,
                         channels_last=case.channels_last, compile=case.compile)
    clock = EpochClock()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fit(model, [{"params": list(model.parameters())}], train, val, "binary", "image2d", config,
                     progress=clock)
    t = clock.stamps
    notes = [str(w.message)[:120] for w in caught if "torch.compile" in str(w.message)]
    if case.compile and not result.compiled and not notes:
        notes.append("compile did not hold")
    return {"images_per_s": 2 * n / (t[3] - t[1]), "first_epoch_s": t[1] - t[0], "note": "; ".join(notes)}


def cases_for(args) -> list[Case]:
    combos = PLANS[args.plan]
    cases = [Case(backbone, size, batch, *combo)
             for backbone, size in args.models for batch in args.batch_sizes for combo in combos]
    # eager first (cheap, the bulk of the table); compiled last, the largest inputs first
    return sorted(cases, key=lambda c: (c.compile, -c.size * c.batch if c.compile else 0))


def parse_models(text: str) -> list[tuple[str, int]]:
    """"resnet18@64,tf_efficientnet_lite0@224" -> [(name, size), ...]."""
    out = []
    for item in text.split(","):
        name, _, size = item.strip().partition("@")
        out.append((name, int(size)))
    return out


def markdown(rows: list[dict], peak: float | None) -> str:
    head = ("| model | px | batch | precision | channels_last | compile | images/s | 1st epoch s | GFLOP/img (train) "
            "| TFLOP/s | % bf16 peak | note |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        if "images_per_s" not in r:
            lines.append(f"| {r['backbone']} | {r['size']} | {r['batch']} | {r['precision']} | {r['channels_last']} | "
                         f"{r['compile']} | - | - | {r['gflop_per_image']:.3g} | - | - | {r['note']} |")
            continue
        tflops = r["images_per_s"] * r["gflop_per_image"] / 1e3
        share = f"{100 * tflops / peak:.1f}%" if peak else "-"
        lines.append(f"| {r['backbone']} | {r['size']} | {r['batch']} | {r['precision']} | {r['channels_last']} | "
                     f"{r['compile']} | {r['images_per_s']:.0f} | {r['first_epoch_s']:.1f} | "
                     f"{r['gflop_per_image']:.3g} | {tflops:.3g} | {share} | {r['note']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="resnet18@64,resnet18@128,resnet18@224,tf_efficientnet_lite0@224",
                        help="comma-separated backbone@pixels")
    parser.add_argument("--batch-sizes", default="128,256")
    parser.add_argument("--plan", default="ladder", choices=sorted(PLANS))
    parser.add_argument("--steps", type=int, default=20, help="training steps per epoch (3 epochs, 2 timed)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0 = leave default)")
    parser.add_argument("--peak-tflops", type=float, default=0.0, help="dense bf16 peak (0 = from the table)")
    parser.add_argument("--time-budget", type=float, default=0.0, help="seconds; no case starts after it (0 = none)")
    parser.add_argument("--json", default=None, help="also write the rows here")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: test_resnet@32, batch 8, 2 steps, ladder without compile")
    args = parser.parse_args()
    if args.quick:
        args.models, args.batch_sizes, args.steps, args.plan = "test_resnet@32", "8", 2, "ladder"
    args.models, args.batch_sizes = parse_models(args.models), [int(b) for b in args.batch_sizes.split(",")]
    accelerator, device = setup(args)
    cases = cases_for(args)
    if args.quick:  # inductor on 2 CPU cores takes minutes; tests/test_fast_path.py covers compile on CPU
        cases = [c for c in cases if not c.compile]
    peak, peak_source = peak_tflops(device, args.peak_tflops)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device {name}; torch {torch.__version__}; bf16 dense peak "
          f"{f'{peak:.0f} TFLOP/s ({peak_source})' if peak else f'unknown ({peak_source})'}; "
          f"{args.steps} steps x 2 timed epochs per case; {len(cases)} cases, plan {args.plan}", flush=True)

    flops = {(b, s): train_flops_per_image(b, s) for b, s in args.models}
    start, rows = time.perf_counter(), []
    if device.type == "cuda" and cases:  # CUDA context, cuBLAS / cuDNN handles: not the first row's cost
        run_case(cases[0], 2, accelerator, device)
    for case in cases:
        row = {**case.__dict__, "gflop_per_image": flops[(case.backbone, case.size)] / 1e9}
        if args.time_budget and time.perf_counter() - start > args.time_budget:
            row["note"] = "skipped (time budget)"
        else:
            try:
                row.update(run_case(case, args.steps, accelerator, device))
            except Exception as exc:  # one case failing (out of memory, a backend error) leaves the rest
                row["note"] = f"failed: {type(exc).__name__}: {' '.join(str(exc).split())[:100]}"
            if device.type == "cuda":
                torch.cuda.empty_cache()
        rows.append(row)
        shown = f"{row['images_per_s']:.0f} images/s, 1st epoch {row['first_epoch_s']:.1f} s" \
            if "images_per_s" in row else row["note"]
        print(f"  {case.backbone}@{case.size} batch {case.batch} {case.precision} channels_last={case.channels_last} "
              f"compile={case.compile}: {shown}  [{time.perf_counter() - start:.0f} s]", flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"device": name, "peak_tflops": peak, "steps": args.steps, "rows": rows}, f, indent=1)
    rows.sort(key=lambda r: (r["backbone"], r["size"], r["batch"], r["compile"], r["channels_last"],
                             r["precision"] == "bf16"))
    print()
    print(markdown(rows, peak))


if __name__ == "__main__":
    main()
