"""The one training loop, shared by pretraining and every transfer strategy.

Strategies decide *what* trains (parameter groups, frozen modules, extra loss terms); this loop
decides *how*: Lightning Fabric for the device and precision (CPU, one GPU, or DDP unchanged),
seeded tensor-slice batches, warm-up + cosine learning rate, early stopping on validation AUC with
the best weights restored. The validation score is also taken before the first step, so a transfer
that only makes the source model worse ends where it started.

On a GPU the steps run without a host sync (data and class weights live on the device, the loss is
read once per epoch), in bf16 autocast, and optionally in the channels_last layout and under
torch.compile (TrainConfig.channels_last / .compile; `benchmarks/gpu_throughput.py` measures them).

Self-supervised pretraining (medtransfer.ssl) runs through the same loop: a method supplies its own
`batch_loss` (two augmented views -> contrastive loss), `score_fn` (a k-NN monitor, or None for
"no labels: keep the last epoch") and `after_step` (the MoCo momentum update).
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from numbers import Real
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..data.base import Split
from ..errors import MedTransferError
from ..evaluation import selection_score  # noqa: F401 (re-exported: strategies and ssl import it from here)
from ..evaluation.selection import selection_key
from ..models.inference import predict_proba
from ..progress import Progress, as_progress
from . import distributed
from .augment import augment_batch
from .privacy import DPConfig, DPSchedule, PrivateTraining, check_private_training


FLAT = "flat"  # what --layer-decay / train.layer_decay call the flat rule (TrainConfig.layer_decay None)


def layer_decay_value(decay) -> float | None:
    """The one check of a layer-wise learning-rate decay, whichever door it came through (API, CLI, grid,
    a TrainConfig built by hand): None or "flat" -> None (the flat rule), a number in (0, 1] -> itself."""
    if decay is None or decay == FLAT:
        return None
    if isinstance(decay, bool) or not isinstance(decay, Real) or not 0 < decay <= 1:
        raise MedTransferError(f"layer_decay must be a number in (0, 1] (1: every stage at the head's rate) or "
                               f"{FLAT}, got {decay!r} (--layer-decay)")
    return float(decay)


@dataclass
class TrainConfig:
    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 0.0
    patience: int = 5
    augment: bool = True
    min_steps_per_epoch: int = 1  # tiny labelled sets still get enough steps between validations
    seed: int = 0
    accelerator: str = "auto"  # auto | cpu | cuda | mps
    progress: bool = True
    eval_batch_size: int = 512
    class_weight: str = "none"  # none | balanced: the loss weighs each class by n / (classes x its count)
    sampler: str = "none"  # none | balanced: batches drawn with each class equally likely
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 elsewhere) | bf16 | fp32
    channels_last: bool = False  # 2D images and conv weights in NHWC (tensor-core friendly on CUDA)
    compile: bool = False  # torch.compile the model for the training steps (falls back with a warning)
    layer_decay: float | None = None  # full / lp-ft / l2-sp: stage lr = lr x decay^depth (None: the flat rule)
    devices: int = 1  # data-parallel processes per node (DDP, `training/distributed.py`); batch_size stays global
    num_nodes: int = 1


@dataclass
class FitResult:
    best_epoch: int
    best_score: float
    epochs_run: int
    seconds: float
    history: list[dict] = field(default_factory=list)
    diverged_epoch: int | None = None  # training stopped here: the loss was not finite (best earlier epoch kept)
    compiled: bool = False  # every training step ran under torch.compile (False: off, or it fell back)
    dp: dict | None = None  # a DP-SGD run's guarantee and settings (`PrivateTraining.record`); None without --dp


def pretraining_settings(config: TrainConfig, accelerator: str) -> dict:
    """The settings a pretrained source depends on (part of its cache key): every field, with the device
    kind resolved, but the progress display. The layer decay, which only fine-tuning reads, is keyed as
    the flat rule whatever the modality's default, so sources cached before that default stay valid."""
    settings = asdict(config)
    del settings["progress"]
    return settings | {"accelerator": resolve_accelerator(accelerator), "layer_decay": None}


ACCELERATORS = ("cpu", "cuda", "mps")  # besides "auto"


def resolve_accelerator(accelerator: str = "auto") -> str:
    """The device "auto" means on this machine (what a result depends on: bf16 on CUDA, fp32 elsewhere)."""
    if accelerator == "auto":
        return "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    return accelerator


PRECISIONS = ("auto", "bf16", "fp32")  # the values of TrainConfig.precision


def make_fabric(accelerator: str = "auto", precision: str = "auto", devices: int = 1, num_nodes: int = 1):
    """Fabric on one device, or (devices x num_nodes > 1) this process's rank of a data-parallel run that
    `training.distributed.launch` started (DDP; the process group exists, so launch() starts nothing).
    "auto" precision is bf16 autocast on CUDA (tensor cores, no loss scaling needed) and fp32 elsewhere,
    where bf16 autocast is slower than fp32 on most CPUs."""
    from lightning_fabric import Fabric

    if precision not in PRECISIONS:
        raise MedTransferError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r} (--precision)")
    accelerator = resolve_accelerator(accelerator)
    bf16 = precision == "bf16" or (precision == "auto" and accelerator == "cuda")
    precision = "bf16-mixed" if bf16 else "32-true"
    if devices * num_nodes == 1:
        return Fabric(accelerator=accelerator, devices=1, precision=precision)
    if distributed.world_size() != devices * num_nodes:
        raise MedTransferError(f"training on {devices} device(s) x {num_nodes} node(s) runs inside a data-parallel "
                               "launch (medtransfer transfer / pretrain --devices, or training.distributed.launch)")
    fabric = Fabric(accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy="ddp", precision=precision)
    fabric.launch()
    return fabric


class StepCompiler:
    """torch.compile for the training steps only, undone when `fit` returns.

    Why this shape: the model's own call is compiled in place (`nn.Module.compile`), inside Fabric's
    autocast, so every batch loss that calls `model(...)` (supervised, SSL pairs, adaptation) runs
    compiled and state_dict keys stay as they are (no `_orig_mod.` prefix in checkpoints). Validation
    runs eagerly: eval mode, no_grad and its last short batch would each cost a recompile. Compilation
    happens at the first step (Dynamo is lazy), so a failure there or at any later recompile switches
    compile off with one warning and the step is redone eagerly: a run never dies of compile. The switch
    is nn.Module's `_compiled_call_impl`, what `nn.Module.compile` sets (torch >= 2.2, as pinned).
    """

    def __init__(self, module: nn.Module, enabled: bool):
        self.module, self.fn = module, None
        self.previous = module._compiled_call_impl  # a caller's own compile, restored on removal
        if enabled:
            try:
                module.compile()
                self.fn = module._compiled_call_impl
            except Exception as exc:  # no Dynamo for this Python / platform
                self.fall_back(exc)
            finally:
                self.remove()  # on only inside the steps (`with compiler:`)

    @property
    def active(self) -> bool:
        return self.fn is not None

    def __enter__(self) -> "StepCompiler":
        if self.fn is not None:
            self.module._compiled_call_impl = self.fn
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def remove(self) -> None:
        """The model's call as it was before `fit` (eager, or the caller's own compile)."""
        self.module._compiled_call_impl = self.previous

    def off(self) -> None:
        """Compile off for the rest of the run."""
        self.fn = None
        self.remove()

    def fall_back(self, exc: BaseException) -> None:
        """Compile off, said in one line."""
        self.off()
        detail = " ".join(str(exc).split())[:200] or "no message"
        warnings.warn(f"torch.compile failed ({type(exc).__name__}: {detail}); training continues without it",
                      RuntimeWarning, stacklevel=2)


IMBALANCE = ("none", "balanced")  # the values of --class-weight and --sampler


def loss_fn(task: str, weights: torch.Tensor | None = None) -> Callable:
    """The task's criterion; `weights` (from `class_weights`): per class (single-label) or the positive
    weight per label (multilabel)."""
    if weights is None:
        if task == "multilabel":
            return lambda logits, y: F.binary_cross_entropy_with_logits(logits, y)
        return F.cross_entropy
    if task == "multilabel":
        return lambda logits, y: F.binary_cross_entropy_with_logits(
            logits, y, pos_weight=weights.to(logits.device, logits.dtype))
    return lambda logits, y: F.cross_entropy(logits, y, weight=weights.to(logits.device, logits.dtype))


def class_weights(y: torch.Tensor, task: str, mode: str, n_classes: int | None = None) -> torch.Tensor | None:
    """Loss weights for `--class-weight balanced` (scikit-learn's rule, n / (classes x count)), so a rare
    class counts as much as a common one; multilabel: negatives / positives per label. None for "none"."""
    if mode == "none" or len(y) == 0:
        return None
    if task == "multilabel":
        positives = y.float().sum(0).clamp(min=1)
        return (len(y) - y.float().sum(0)).clamp(min=1) / positives
    counts = torch.bincount(y, minlength=n_classes or int(y.max()) + 1).float()
    present = counts > 0
    weights = torch.zeros_like(counts)
    weights[present] = len(y) / (present.sum() * counts[present])
    return weights


def epoch_order(y: torch.Tensor, n: int, sampler: str, generator: torch.Generator) -> torch.Tensor:
    """The `n` training indices of one epoch: shuffled passes over the data, or (`--sampler balanced`)
    drawn with replacement, each class equally likely, so every batch sees the rare class."""
    if sampler == "balanced":
        counts = torch.bincount(y)
        weights = 1.0 / counts[y].double()
        return torch.multinomial(weights, n, replacement=True, generator=generator)
    passes = math.ceil(n / len(y))
    return torch.cat([torch.randperm(len(y), generator=generator) for _ in range(passes)])


def warmup_cosine(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return factor


def supervised_loss(task: str, modality: str, augment: bool, weights: torch.Tensor | None = None) -> Callable:
    """The default batch loss: batched on-device augmentation, then the task's (weighted) criterion."""
    criterion = loss_fn(task, weights)

    def batch_loss(model: nn.Module, xb: torch.Tensor, yb: torch.Tensor, generator: torch.Generator):
        if augment:
            xb = augment_batch(xb, modality, generator)
        return criterion(model(xb), yb)
    return batch_loss


def fit(model: nn.Module, param_groups: list[dict], train: Split, val: Split, task: str, modality: str,
        config: TrainConfig, frozen: list[nn.Module] = (), extra_loss: Callable | None = None,
        batch_loss: Callable | None = None, score_fn: Callable | None = None,
        after_step: Callable | None = None, keep_initial: bool = True, score_name: str = "val AUC",
        progress: Progress | None = None, dp: DPConfig | None = None,
        dp_schedule: DPSchedule | None = None) -> FitResult:
    """Train `model` in place; on return it holds the weights with the best validation score.

    batch_loss(model, xb, yb, generator) -> loss replaces the supervised loss (default: augmentation +
    cross-entropy); score_fn(model) -> float | None replaces the validation AUC (None means no monitor:
    the last epoch is kept); after_step(model) runs after every optimizer step (e.g. a momentum update).
    keep_initial=False logs the score before the first step but never returns the untrained weights.
    progress: where the epochs are reported (default: a bar when config.progress, else nothing).
    dp: train with differential privacy, DP-SGD by Opacus (`training/privacy.py`); FitResult.dp records it.
    dp_schedule: this fit's place in a longer private training of the same examples (a federated site's
    rounds): the noise is calibrated for all of it, and FitResult.dp records the epsilon spent so far.

    Data parallel (config.devices x config.num_nodes = W > 1, inside `training.distributed.launch`):
    config.batch_size is the *global* batch, as on one device. Every rank draws the same epoch order and
    trains on an equal share of each batch (index[rank::W]; the at most W - 1 examples a batch does not
    divide into sit that step out), DDP averages the gradients, so each step follows the global batch's
    mean loss; each rank draws its own augmentations and dropout masks. BatchNorm normalises each share
    on its own (plain DDP). Rank 0 scores validation on the unwrapped model and broadcasts the score, so
    the best epoch and early stopping are decided once for all; every rank returns with rank 0's selected
    weights.
    """
    if len(train) == 0:
        raise MedTransferError("no labelled training examples to train on: raise the label budget")
    if config.batch_size < 1:  # the pipeline refuses it up front (TrainOptions); this guards direct callers
        raise MedTransferError(f"batch size must be at least 1, got {config.batch_size} (--batch-size)")
    world = config.devices * config.num_nodes
    if world > 1 and (dp is not None or config.compile):
        raise MedTransferError(f"{'--dp' if dp is not None else '--compile'} runs on one device; drop --devices "
                               f"{config.devices} / --num-nodes {config.num_nodes} or drop the option")
    torch.manual_seed(config.seed)
    private = None  # DP-SGD (--dp): Opacus's per-example clipping, noise, Poisson batches and accountant
    if dp is not None:
        check_private_training(config, extra_loss, batch_loss, after_step)
        size = min(config.batch_size, len(train))
        steps = max(math.ceil(len(train) / size), config.min_steps_per_epoch)  # as below, for the accountant
        private = PrivateTraining(dp, len(train), size, steps, config.epochs, dp_schedule)
        param_groups = private.prepare(model, param_groups)  # BatchNorm -> GroupNorm where it trains
    fabric = make_fabric(config.accelerator, config.precision if private is None else "fp32", config.devices,
                         config.num_nodes)
    channels_last = config.channels_last and train.x.ndim == 4  # NHWC is a 2D-image layout
    if channels_last:  # before the optimizer: parameters keep their identity, only their layout changes
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(param_groups, lr=config.lr, weight_decay=config.weight_decay)
    module = model  # the unwrapped model: compile and the layout are undone on it at the end
    idle = idle_parameters(module, optimizer) if world > 1 else []  # DDP must not wait for their gradients
    for param in idle:
        param.requires_grad_(False)
    model, optimizer = fabric.setup(model if private is None else private.wrap(model), optimizer)
    if private is not None:
        optimizer = private.optimizer(optimizer)
    device = fabric.device
    x_train, y_train = train.x.to(device), train.y.to(device)
    if channels_last:
        x_train = x_train.contiguous(memory_format=torch.channels_last)
    check_imbalance(config, task)
    if batch_loss is None:
        weights = class_weights(train.y, task, config.class_weight)  # moved once: a copy per step would sync
        batch_loss = supervised_loss(task, modality, config.augment, None if weights is None else weights.to(device))
    batch_size = min(config.batch_size, len(train))
    if world > 1 and batch_size // world < 2:
        raise MedTransferError(f"a batch of {batch_size} examples over {world} devices leaves fewer than 2 per "
                               "device; raise --batch-size (the global batch) or the label budget, or use fewer --devices")
    steps_per_epoch = max(math.ceil(len(train) / batch_size), config.min_steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(
        steps_per_epoch * config.epochs, round(config.warmup_epochs * steps_per_epoch)))
    generator = torch.Generator().manual_seed(config.seed)  # the epoch order: the same on every rank
    draws = generator  # augmentations
    if world > 1:  # a rank's own augmentations and dropout (the weights DDP broadcast from rank 0 at setup)
        draws = torch.Generator().manual_seed(rank_seed(config.seed, fabric.global_rank))
        torch.manual_seed(rank_seed(config.seed, fabric.global_rank))

    def scored(net: nn.Module) -> tuple[float | None, tuple | None]:
        """(the score shown and logged, the key epochs are compared by). The default key breaks
        validation-AUC ties by balanced accuracy, then log-loss (`selection_key`), so an epoch that
        predicts one class for every validation example does not win a tie."""
        if score_fn is not None:
            value = score_fn(net)
            return value, None if value is None else (value,)
        key = selection_key(val.y.numpy(), predict_proba(net, val.x, task, config.eval_batch_size, device), task)
        return key[0], key

    def validate() -> tuple[float | None, tuple | None]:
        """`scored` of the model; data parallel: rank 0 scores the unwrapped model (no collective inside,
        the other ranks wait at the broadcast) and every rank gets its numbers."""
        if world == 1:
            return scored(model)
        return fabric.broadcast(scored(module) if fabric.global_rank == 0 else None, src=0)

    def train_step(index: torch.Tensor) -> torch.Tensor:
        loss = batch_loss(model, x_train[index], y_train[index], draws)
        if extra_loss is not None:
            loss = loss + extra_loss()
        optimizer.zero_grad(set_to_none=True)
        fabric.backward(loss)
        return loss

    start = time.perf_counter()
    diverged = None  # the epoch whose loss was not finite, when training diverged
    (best_score, best_key), best_epoch = validate(), 0
    history = [{"epoch": 0, "val_score": best_score}]
    best_state = copy.deepcopy(model.state_dict()) if keep_initial else None
    if progress is None:
        progress = as_progress(config.progress)
    compiler = StepCompiler(module, config.compile)  # before the bar: a fall-back warning is not drawn over
    bar = progress.start(epoch_text(0, config.epochs, float("nan"), best_score, score_name), total=config.epochs)
    try:
        for epoch in range(1, config.epochs + 1):
            model.train()
            for part in frozen:  # frozen parts keep their BatchNorm statistics
                part.eval()
            if private is not None:
                private.freeze_batchnorm(module)
            order = None if private is not None else \
                epoch_order(train.y, steps_per_epoch * batch_size, config.sampler, generator).to(device)
            total_loss = torch.zeros((), device=device)
            # no host sync inside the steps: the loss is summed on the device and read once per epoch
            with compiler:
                for step in range(steps_per_epoch):
                    if private is not None:  # a Poisson batch; an empty one is a noise-only step
                        index = private.sample(generator).to(device)
                        if len(index) == 0:
                            private.empty_batch()
                            optimizer.step()
                            scheduler.step()
                            continue
                    else:
                        index = order[step * batch_size:(step + 1) * batch_size]
                        if world > 1:  # this rank's equal share of the global batch
                            index = index[:len(index) // world * world][fabric.global_rank::world]
                        if len(index) < 2 and len(train) > 1:
                            continue  # a batch of one breaks BatchNorm and adds nothing
                    try:
                        loss = train_step(index)
                    except Exception as exc:
                        if not compiler.active:
                            raise
                        compiler.off()  # the step again, eagerly (the optimizer has not stepped yet); an
                        loss = train_step(index)  # error here is the step's own and is raised as itself
                        compiler.fall_back(exc)
                    optimizer.step()
                    scheduler.step()
                    if after_step is not None:
                        after_step(model)
                    total_loss += loss.detach()
            if world > 1:  # every rank reads the same loss, so all stop together if it is not finite
                total_loss = fabric.all_reduce(total_loss, reduce_op="mean")
            mean_loss = float(total_loss) / steps_per_epoch
            if not math.isfinite(mean_loss):  # diverged: these weights are never selected
                history.append({"epoch": epoch, "train_loss": mean_loss, "val_score": None})
                diverged = epoch
                break
            score, key = validate()
            history.append({"epoch": epoch, "train_loss": mean_loss, "val_score": score})
            if key is None or best_key is None or best_state is None or key > best_key:
                best_score, best_key, best_epoch = score, key, epoch
                best_state = copy.deepcopy(model.state_dict())
            bar.update(epoch_text(epoch, config.epochs, mean_loss, score, score_name), advance=1)
            if epoch - best_epoch >= config.patience:
                break
    finally:
        bar.close()
        compiler.remove()
        if private is not None:
            private.close()
        if channels_last:  # checkpoints (safetensors) and later callers expect the usual layout
            module.to(memory_format=torch.contiguous_format)
        for param in idle:
            param.requires_grad_(True)
    if diverged and best_state is None:
        raise MedTransferError(f"training diverged at epoch {diverged} (the loss is not finite) before any usable "
                               "epoch; lower the learning rate (--lr)")
    if world > 1 and best_state is not None:  # rank 0's selection, bit for bit (BatchNorm statistics differ per rank)
        best_state = fabric.broadcast({k: v.cpu() for k, v in best_state.items()} if fabric.global_rank == 0 else None)
    if best_state is not None:  # None only when no epoch ran and the initial weights were not eligible
        model.load_state_dict(best_state)
    best_score = float("nan") if best_score is None else best_score
    return FitResult(best_epoch, best_score, history[-1]["epoch"], time.perf_counter() - start, history, diverged,
                     compiled=compiler.active and history[-1]["epoch"] > 0,
                     dp=None if private is None else private.record())


def idle_parameters(module: nn.Module, optimizer: torch.optim.Optimizer) -> list[nn.Parameter]:
    """Trainable parameters no optimizer group holds (an SSL encoder's placeholder head): they never
    change, and DDP would wait for their gradient at every step, so a data-parallel fit freezes them."""
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    return [p for p in module.parameters() if p.requires_grad and id(p) not in held]


def rank_seed(seed: int, rank: int) -> int:
    """A data-parallel rank's own seed for its random draws, from (seed, rank): ranks do not repeat each other."""
    import numpy as np

    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


def check_imbalance(config: TrainConfig, task: str) -> None:
    """The two imbalance options hold one of IMBALANCE; a balanced sampler needs one class per example."""
    for name, value in (("class_weight", config.class_weight), ("sampler", config.sampler)):
        if value not in IMBALANCE:
            raise MedTransferError(f"{name} must be one of {', '.join(IMBALANCE)}, got {value!r} "
                                   f"(--{name.replace('_', '-')})")
    if config.sampler == "balanced" and task == "multilabel":
        raise MedTransferError("--sampler balanced draws examples by class, and a multilabel example has several "
                               "labels; use --class-weight balanced (a positive weight per label) instead")


def epoch_text(epoch: int, epochs: int, loss: float, score: float | None, score_name: str = "val AUC") -> str:
    shown = "-" if score is None else f"{score:.4f}"
    return f"epoch {epoch}/{epochs}  loss {loss:.4f}  {score_name} {shown}"
