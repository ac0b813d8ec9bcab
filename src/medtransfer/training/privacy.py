"""Differential privacy for the one training loop: DP-SGD with Opacus (`--dp epsilon=E,delta=D,clip=C`).

How it is done, and why this way: the loop batches on-device tensor slices, not a DataLoader, so
instead of `PrivacyEngine.make_private_with_epsilon` (which wants one) it uses the same Opacus parts
that engine assembles: a `GradSampleModule` (per-example gradients), a `DPOptimizer` around the loop's
own optimizer (each example's gradient clipped to norm C, Gaussian noise of std sigma x C added to
the sum, divided by the expected batch size: DP-SGD; over AdamW, DP-Adam, the same guarantee since
the optimizer only post-processes the noisy gradient), and a privacy accountant (PRV, Opacus's
default). Batches are Poisson samples, as Opacus's `UniformWithReplacementSampler` draws them: each
training example joins each step's batch independently with probability q = batch size / n, so the
subsampled-Gaussian accounting holds; an empty draw still takes a noise-only step. The noise multiplier
is Opacus's `get_noise_multiplier` for the target epsilon at the planned steps (epochs x steps per
epoch); early stopping can only stop sooner, and what is recorded is the accountant's epsilon after
the steps actually taken.

Several fits of the same private data under one guarantee (a federated site's rounds, then its
personalisation) share one `DPSchedule`: the noise is calibrated for the epochs of all of them together,
and each fit's accountant starts from the steps the earlier ones took, so every fit records the epsilon
spent so far. The fits then share the noise multiplier and sample rate, so the accountant's history is
one entry (sigma, q, steps) and the epsilon is a function of the step count alone.

The threat model: the private data are the target's labelled training examples (after the label
budget). The validation split chooses the epoch (early stopping), the calibration and the threshold;
it is treated as public, held by the model's developer, and is not covered; nor is the source model
(trained without DP), nor a tabular encoding fitted on the target's own rows (with no source dataset).
"""

from __future__ import annotations

import contextlib
import functools
import math
import re
import warnings
from dataclasses import dataclass
from numbers import Real

import torch
from torch import nn

from ..errors import MedTransferError

ACCOUNTANT = "prv"  # Opacus's default accountant (PrivacyEngine); "rdp" is the older, looser bound
DEFAULT_CLIP = 1.0
MAX_DELTA = 1e-5  # the default delta: this, or 1 / (10 n) for training splits larger than 10,000 examples
FLAG = "--dp"
SYNTAX = "epsilon=E[,delta=D][,clip=C], e.g. epsilon=1 or epsilon=3,delta=1e-5,clip=1.0"
NONE = "none"


@dataclass(frozen=True)
class DPConfig:
    """What `--dp` asks for: the target epsilon, delta (None: MAX_DELTA or 1/(10 n), see `delta_for`) and the
    per-example gradient clipping norm."""
    epsilon: float
    delta: float | None = None
    clip: float = DEFAULT_CLIP

    def delta_for(self, n: int) -> float:
        """The delta the guarantee is stated at for n private examples: the one given, else min(1e-5, 1/(10 n)),
        well below 1/n (a delta near 1/n allows publishing an example outright)."""
        return self.delta if self.delta is not None else min(MAX_DELTA, 1.0 / (10 * max(n, 1)))

    def label(self) -> str:
        """Short text for tables and cell names: "ε=1", with delta and clip only when not the defaults."""
        extra = ([f"δ={self.delta:g}"] if self.delta is not None else []) + \
            ([f"C={self.clip:g}"] if self.clip != DEFAULT_CLIP else [])
        return ", ".join([f"ε={self.epsilon:g}", *extra])


@dataclass(frozen=True)
class DPSchedule:
    """One fit's place in a longer private training of the same examples: the noise is calibrated for
    `planned_epochs` in all (this fit's and the others'), and `epochs_before` were already taken (their
    steps are charged to this fit's accountant: an upper bound when an earlier fit stopped early)."""
    planned_epochs: int
    epochs_before: int = 0


def dp_levels(levels, flag: str = "dp", error: type[Exception] = MedTransferError) -> list[str]:
    """A config's dp entry (one --dp value, none, or a list of them) -> the list of levels as written
    ("none" for no DP), each checked; a repeated level is refused. `error`: the exception raised (a
    config validator's ValueError)."""
    levels = levels if isinstance(levels, list) else [levels]
    if not levels:
        raise error(f"{flag} needs at least one entry, e.g. [{NONE}, \"epsilon=1\"]")
    out, seen = [], {}
    for level in levels:
        text = NONE if level is None else str(level).strip()
        try:
            parsed = parse_dp(text, flag=flag)
        except MedTransferError as exc:
            raise error(str(exc)) from None
        if parsed in seen:  # by value: "epsilon=1" and "epsilon=1.0" would share one name in every table
            raise error(f"{flag} lists the same setting twice ({seen[parsed]!r} and {text!r})")
        seen[parsed] = text
        out.append(NONE if parsed is None else text)
    return out


def parse_dp(value, flag: str = FLAG) -> DPConfig | None:
    """`--dp` as given (None, "none", "epsilon=1,delta=1e-5,clip=1", a dict of those keys, or a DPConfig)
    -> a DPConfig, or None for no DP. A bad value is one line naming it and the syntax."""
    if value is None or isinstance(value, DPConfig):
        return value
    given = value
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in ("", NONE):
            return None
        pairs = {}
        for part in text.split(","):
            key, sep, number = (s.strip() for s in part.partition("="))
            if not sep or not key or key in pairs:
                raise MedTransferError(f"{flag} {value!r}: expected {SYNTAX}")
            pairs[key.lower()] = number
        value = pairs
    if not isinstance(value, dict):
        raise MedTransferError(f"{flag} must be {SYNTAX}, got {value!r}")
    unknown = sorted(set(value) - {"epsilon", "delta", "clip"})
    if unknown:
        raise MedTransferError(f"{flag}: unknown key {unknown[0]!r}; allowed: epsilon, delta, clip ({SYNTAX})")
    if "epsilon" not in value:
        raise MedTransferError(f"{flag} {given!r}: epsilon is required ({SYNTAX})")
    numbers = {key: as_number(key, v, flag) for key, v in value.items()}
    if not numbers["epsilon"] > 0:
        raise MedTransferError(f"{flag}: epsilon must be a number > 0, got {value['epsilon']!r}")
    if "delta" in numbers and not 0 < numbers["delta"] < 1:
        raise MedTransferError(f"{flag}: delta must be a number in (0, 1), e.g. 1e-5, got {value['delta']!r}")
    if "clip" in numbers and not numbers["clip"] > 0:
        raise MedTransferError(f"{flag}: clip (the per-example gradient norm bound) must be a number > 0, "
                               f"got {value['clip']!r}")
    return DPConfig(numbers["epsilon"], numbers.get("delta"), numbers.get("clip", DEFAULT_CLIP))


def as_number(key: str, value, flag: str) -> float:
    if isinstance(value, Real) and not isinstance(value, bool):
        result = float(value)
    elif isinstance(value, str) and re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", value.strip()):
        result = float(value)
    else:
        raise MedTransferError(f"{flag}: {key} must be a number, got {value!r} ({SYNTAX})")
    if not math.isfinite(result):
        raise MedTransferError(f"{flag}: {key} must be finite, got {value!r}")
    return result


def check_private_training(config, extra_loss, batch_loss, after_step) -> None:
    """The loop settings DP-SGD cannot honour, refused in one line each: a loss that is not a mean over
    independent examples, batches not drawn by Poisson sampling, and steps Opacus's hooks cannot run in."""
    if extra_loss is not None or batch_loss is not None or after_step is not None:
        raise MedTransferError(f"{FLAG}: this strategy adds loss terms or steps that couple examples or bypass "
                               "per-example clipping, so DP-SGD cannot account for them; use full, head, "
                               "partial or scratch")
    if config.sampler != "none":
        raise MedTransferError(f"{FLAG} draws each batch by Poisson sampling (what its privacy accounting "
                               "assumes), so --sampler balanced cannot be used with it")
    if config.class_weight != "none":
        raise MedTransferError(f"{FLAG}: --class-weight balanced makes the batch loss a weighted mean over the "
                               "batch, which per-example clipping cannot bound; train without it")
    if config.compile:
        raise MedTransferError(f"{FLAG}: Opacus's per-example gradient hooks do not run under torch.compile; "
                               "train without --compile")
    if config.precision == "bf16":
        raise MedTransferError(f"{FLAG} trains in fp32 (per-example gradients in bf16 would be clipped "
                               "imprecisely); use --precision fp32 or auto")


class PrivateTraining:
    """One DP-SGD run inside `fit`: the per-example gradient module, the DP optimizer, the Poisson
    sampler and the accountant. `wrap` before Fabric, `optimizer` after it; `close` when done."""

    def __init__(self, dp: DPConfig, n: int, batch_size: int, steps_per_epoch: int, epochs: int,
                 schedule: DPSchedule | None = None):
        self.dp, self.n, self.batch_size = dp, n, batch_size
        self.delta = dp.delta_for(n)
        self.sample_rate = batch_size / n
        schedule = schedule or DPSchedule(epochs)
        self.planned_steps = steps_per_epoch * schedule.planned_epochs
        self.steps_before = steps_per_epoch * schedule.epochs_before
        self.noise_multiplier = noise_multiplier(dp.epsilon, self.delta, self.sample_rate, self.planned_steps)
        self.steps = 0
        self.replaced: dict[str, str] = {}
        self.module = self.dp_optimizer = None

    def prepare(self, model: nn.Module, param_groups: list[dict]) -> list[dict]:
        """Opacus-compatible model (in place; see `models.dp_compat`) and the parameter groups following it."""
        from ..models.dp_compat import make_private_compatible

        self.replaced, swap = make_private_compatible(model)
        groups = []
        for group in param_groups:
            params = [swap.get(id(p), p) for p in group["params"]]
            groups.append({**group, "params": [p for p in params if p is not None]})
        return groups

    def wrap(self, model: nn.Module) -> nn.Module:
        from opacus import GradSampleModule

        # Opacus's hooks see inputs that need no gradient (the data); torch says so once per run: not news.
        warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed with "
                                "respect to module outputs", category=UserWarning)
        self.module = GradSampleModule(model, batch_first=True, loss_reduction="mean", strict=True)
        return self.module

    def optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """The loop's optimizer (already set up by Fabric) inside a DPOptimizer that clips, adds noise and
        counts every step for the accountant."""
        from opacus.optimizers import DPOptimizer

        self.dp_optimizer = DPOptimizer(optimizer, noise_multiplier=self.noise_multiplier, max_grad_norm=self.dp.clip,
                                        expected_batch_size=self.batch_size, loss_reduction="mean")
        self.dp_optimizer.attach_step_hook(self.count_step)
        return self.dp_optimizer

    def count_step(self, optimizer) -> None:
        self.steps += 1

    def sample(self, generator: torch.Generator) -> torch.Tensor:
        """A Poisson batch: the indices of the examples that joined it, each with probability q."""
        return torch.nonzero(torch.rand(self.n, generator=generator) < self.sample_rate).flatten()

    def empty_batch(self) -> None:
        """No example was drawn: the step still releases noise (zero per-example gradients), as the
        accounting assumes; skipping it would tell whether an example was drawn."""
        self.dp_optimizer.zero_grad(set_to_none=True)
        for p in self.dp_optimizer.params:
            p.grad_sample = p.new_zeros((0, *p.shape))

    @staticmethod
    def freeze_batchnorm(model: nn.Module) -> None:
        """BatchNorm left in the model is frozen (its trainable ones were replaced): eval mode, so it uses
        its stored statistics and never writes the private batch's into them."""
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training:
                module.eval()

    def close(self) -> None:
        if self.module is not None:
            self.module._close()  # hooks and per-example gradient attributes removed from the model

    def record(self) -> dict:
        """What metrics.json keeps: the guarantee reached (the accountant's epsilon after the steps taken)
        and everything it rests on."""
        total = self.steps_before + self.steps
        spent = spent_epsilon(self.noise_multiplier, self.sample_rate, total, self.delta) if total else 0.0
        return {"epsilon_target": self.dp.epsilon, "epsilon_spent": round(float(spent), 4), "delta": self.delta,
                "delta_rule": "given" if self.dp.delta is not None else "min(1e-5, 1/(10 n))",
                "clip": self.dp.clip, "noise_multiplier": round(float(self.noise_multiplier), 4),
                "sample_rate": round(self.sample_rate, 6), "expected_batch_size": self.batch_size,
                "n_private": self.n, "steps": total, "planned_steps": self.planned_steps,
                **({"steps_before": self.steps_before} if self.steps_before else {}),
                "accountant": ACCOUNTANT, "sampling": "poisson",
                "mechanism": "DP-SGD (Opacus GradSampleModule + DPOptimizer over the loop's AdamW)",
                "replaced_modules": self.replaced}  # name -> "BatchNorm1d -> GroupNorm" (Opacus's fixer)


@functools.lru_cache(maxsize=256)
def noise_multiplier(epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """Opacus's noise multiplier for (epsilon, delta) after `steps` steps at `sample_rate` (cached: a
    federated site asks again every round)."""
    from opacus.accountants.utils import get_noise_multiplier

    with quiet_accounting():
        return get_noise_multiplier(target_epsilon=epsilon, target_delta=delta, sample_rate=sample_rate,
                                    steps=steps, accountant=ACCOUNTANT)


@functools.lru_cache(maxsize=1024)
def spent_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """The accountant's epsilon after `steps` DP-SGD steps of one noise multiplier and sample rate."""
    from opacus.accountants import create_accountant

    accountant = create_accountant(ACCOUNTANT)
    accountant.history = [(noise_multiplier, sample_rate, steps)]  # what `steps` calls of `step` leave
    with quiet_accounting():
        return float(accountant.get_epsilon(delta=delta))


@contextlib.contextmanager
def quiet_accounting():
    """The PRV accountant bounds its domain by RDP, whose "optimal order is the largest alpha" warning only
    says that bound is loose (the PRV epsilon reported is not): not the user's concern."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha", category=UserWarning)
        yield
