"""The GPU fast path of the training loop (channels_last, torch.compile, precision) and its benchmark.

On CPU: the switches are accepted, off means the loop is unchanged, channels_last leaves the model in the
usual layout, and compile either holds or falls back with one warning without ending the run. Real
inductor compilation takes minutes on 2 CPU cores, so the Dynamo path is exercised with the "eager"
backend and the inductor test runs only with MEDTRANSFER_SLOW=1. The CUDA tests run where a GPU is.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from medtransfer.data.base import Split
from medtransfer.errors import MedTransferError
from medtransfer.models.backbones import create_model, default_spec, describe
from medtransfer.training.augment import augment_batch
from medtransfer.training.loop import TrainConfig, fit

ROOT = Path(__file__).resolve().parents[1]
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _images(n: int, seed: int, channels: int = 1, size: int = 16) -> Split:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.rand(n, channels, size, size, generator=g) * 0.5
    x[y == 1, :, 4:12, 4:12] += 0.5  # a bright square means class 1
    return Split(x.clamp(0, 1), y)


def _resnet(seed: int = 1, channels: int = 1):
    torch.manual_seed(seed)
    return create_model(describe("test_resnet", "image2d", channels), default_spec("image2d", channels, image_size=16),
                        2)


def _config(**kw) -> TrainConfig:
    base = dict(epochs=1, batch_size=8, lr=1e-2, patience=100, augment=True, seed=0, accelerator="cpu",
                progress=False)
    return TrainConfig(**{**base, **kw})


def _fit(model, config: TrainConfig, train: Split | None = None, val: Split | None = None, **kw):
    train = _images(32, 0) if train is None else train
    val = _images(12, 1) if val is None else val
    return fit(model, [{"params": model.parameters()}], train, val, "binary", "image2d", config, **kw)


def _state(model: nn.Module) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- the switches, off and on


def test_the_switches_off_are_the_default_loop():
    runs = []
    for config in (_config(epochs=2), _config(epochs=2, channels_last=False, compile=False, precision="auto")):
        model = _resnet()
        result = _fit(model, config)
        runs.append((_state(model), result.history, result.compiled))
    (s0, h0, c0), (s1, h1, c1) = runs
    assert _same(s0, s1) and h0 == h1
    assert c0 is False and c1 is False


def test_channels_last_trains_like_the_default_and_hands_back_the_usual_layout(tmp_path):
    from safetensors.torch import save_file

    losses = {}
    for channels_last in (False, True):
        model = _resnet()
        result = _fit(model, _config(epochs=2, channels_last=channels_last))
        assert result.epochs_run == 2 and all(h["val_score"] is not None for h in result.history)
        losses[channels_last] = [h["train_loss"] for h in result.history[1:]]
        # checkpoints need contiguous tensors: the NHWC layout is for training only
        assert all(p.is_contiguous() for p in model.parameters())
        save_file(_state(model), str(tmp_path / f"model_{channels_last}.safetensors"))
    # the same computation in another memory layout: equal up to float rounding (AdamW turns rounding-sized
    # gradient differences into lr-sized weight differences, so the losses are compared, not the weights).
    # How far the rounding carries depends on the CPU's kernels: 0.16% after one epoch and 1.5% after two on
    # one 2-core machine (torch 2.14), under 0.1% on another; a wrong layout is off by far more.
    assert losses[True] == pytest.approx(losses[False], rel=3e-2)


def test_channels_last_model_computes_the_same_function():
    model, x = _resnet().eval(), _images(8, 3).x
    expected = model(x)
    model.to(memory_format=torch.channels_last)
    assert torch.allclose(model(x.contiguous(memory_format=torch.channels_last)), expected, atol=1e-5)


def test_channels_last_leaves_non_image_inputs_alone():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 5, generator=g)
    train, val = Split(x[:30], (x[:30, 0] > 0).long()), Split(x[30:], (x[30:, 0] > 0).long())
    states = []
    for channels_last in (False, True):
        torch.manual_seed(2)
        model = create_model(describe("mlp:16", "tabular", 0, 5), default_spec("tabular", 0, list("abcde")), 2)
        fit(model, [{"params": model.parameters()}], train, val, "binary", "tabular",
            _config(epochs=2, augment=False, channels_last=channels_last))
        states.append(_state(model))
    assert _same(*states)


def test_precision_is_checked_and_bf16_runs_on_cpu():
    with pytest.raises(MedTransferError, match="precision must be one of auto, bf16, fp32"):
        _fit(_resnet(), _config(precision="fp16"))
    model = _resnet()
    result = _fit(model, _config(precision="bf16"))
    assert result.epochs_run == 1 and all(p.dtype == torch.float32 for p in model.parameters())


# ----------------------------------------------------------------------------- compile and its fall-back


def _patch_compile(monkeypatch, make_fn):
    """nn.Module.compile installs make_fn(module) as the compiled call (what torch.compile would)."""
    def compile(self, *args, **kwargs):
        self._compiled_call_impl = make_fn(self)
    monkeypatch.setattr(nn.Module, "compile", compile)


def test_compile_unavailable_warns_once_and_trains_as_without_it(monkeypatch):
    reference = _resnet()
    _fit(reference, _config(epochs=2))

    def unavailable(self, *args, **kwargs):
        raise RuntimeError("Dynamo is not supported on this Python")
    monkeypatch.setattr(nn.Module, "compile", unavailable)
    model = _resnet()
    with pytest.warns(RuntimeWarning, match=r"torch.compile failed \(RuntimeError: Dynamo is not supported") as seen:
        result = _fit(model, _config(epochs=2, compile=True))
    assert len([w for w in seen if "torch.compile" in str(w.message)]) == 1
    assert result.compiled is False
    assert _same(_state(model), _state(reference))  # it fell back before the first step: the same run


def test_compile_failing_at_the_first_step_falls_back_and_finishes(monkeypatch):
    calls = []

    def failing(module):
        def call(*args, **kwargs):
            calls.append(1)
            raise RuntimeError("backend compiler failed:\nno C++ compiler found")
        return call
    _patch_compile(monkeypatch, failing)
    model, before = _resnet(), _state(_resnet())
    with pytest.warns(RuntimeWarning, match=r"backend compiler failed: no C\+\+ compiler found\); training continues"):
        result = _fit(model, _config(epochs=2, compile=True))
    assert calls == [1]  # tried once, then eager for the rest of the run
    assert result.compiled is False and result.epochs_run == 2
    assert all(torch.isfinite(torch.tensor(h["train_loss"])) for h in result.history[1:])
    assert not _same(_state(model), before)
    assert model._compiled_call_impl is None


def test_an_error_of_the_step_itself_is_raised_not_blamed_on_compile(monkeypatch):
    _patch_compile(monkeypatch, lambda module: module._call_impl)  # a "compile" that works

    def broken(model, xb, yb, generator):
        raise ValueError("the batch loss is broken")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(ValueError, match="the batch loss is broken"):
            _fit(_resnet(), _config(compile=True), batch_loss=broken)
    assert not [w for w in seen if "torch.compile" in str(w.message)]


def test_compile_is_on_for_training_steps_only(monkeypatch):
    """Validation runs eagerly (eval mode would recompile), and nothing stays compiled after fit."""
    modes = []

    def recording(module):
        def call(*args, **kwargs):
            modes.append(module.training)
            return module._call_impl(*args, **kwargs)
        return call
    _patch_compile(monkeypatch, recording)
    model = _resnet()
    result = _fit(model, _config(epochs=2, compile=True))
    assert result.compiled is True
    assert len(modes) == 2 * 4 and all(modes)  # 32 images / batch 8 = 4 steps per epoch, all in training mode
    assert model._compiled_call_impl is None


def test_dynamo_compiles_the_training_steps(monkeypatch):
    """The real Dynamo path (its "eager" backend: tracing without inductor's minutes of C++ compilation)."""
    real = nn.Module.compile
    monkeypatch.setattr(nn.Module, "compile", lambda self, *a, **kw: real(self, backend="eager"))
    torch._dynamo.reset()
    reference = _resnet()
    _fit(reference, _config(epochs=2))
    model = _resnet()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fall-back
        result = _fit(model, _config(epochs=2, compile=True))
    assert result.compiled is True and model._compiled_call_impl is None
    assert list(model.state_dict()) == list(reference.state_dict())  # no _orig_mod. prefix in checkpoints
    for key, value in _state(reference).items():
        assert torch.allclose(value.float(), model.state_dict()[key].float(), rtol=1e-4, atol=1e-5), key


@pytest.mark.skipif(os.environ.get("MEDTRANSFER_SLOW") != "1",
                    reason="inductor compiles a training step in ~150 s on 2 CPU cores; set MEDTRANSFER_SLOW=1")
def test_inductor_compile_holds_or_falls_back():
    model = _resnet()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        result = _fit(model, _config(epochs=1, compile=True))
    fell_back = [w for w in seen if "torch.compile failed" in str(w.message)]
    assert result.compiled != bool(fell_back) and result.epochs_run == 1


# ----------------------------------------------------------------------------- on a CUDA device


@CUDA
def test_cuda_augmentation_matches_the_cpu_for_a_seed():
    x = _images(16, 0, channels=3).x
    cpu = augment_batch(x, "image2d", torch.Generator().manual_seed(5))
    gpu = augment_batch(x.cuda(), "image2d", torch.Generator().manual_seed(5))
    assert torch.allclose(cpu, gpu.cpu(), atol=1e-4)


@CUDA
def test_cuda_steps_do_not_sync_with_the_host():
    """Host syncs per fit do not grow with the number of steps: the per-epoch loss read and the
    validation are the only ones (the sync debug mode warns on every synchronizing CUDA call)."""
    counts = []
    for n in (32, 96):  # 4 and 12 steps of 8 per epoch
        model = _resnet(channels=3)
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as seen:
                warnings.simplefilter("always")
                _fit(model, _config(epochs=2, accelerator="cuda", channels_last=True), train=_images(n, 0, channels=3),
                     val=_images(12, 1, channels=3))
        finally:
            torch.cuda.set_sync_debug_mode("default")
        counts.append(sum("synchronizing" in str(w.message) for w in seen))
    assert counts[0] == counts[1], counts


@CUDA
def test_cuda_bf16_channels_last_fit_trains_and_restores_the_layout():
    model = _resnet(channels=3)
    result = _fit(model, _config(epochs=2, accelerator="cuda", channels_last=True), train=_images(32, 0, channels=3),
                  val=_images(12, 1, channels=3))
    assert result.epochs_run == 2
    assert all(p.is_contiguous() and p.dtype == torch.float32 for p in model.parameters())


# ----------------------------------------------------------------------------- the benchmark


def test_gpu_throughput_quick_runs_on_cpu():
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, "gpu_throughput.py", "--device", "cpu", "--quick", "--threads", "1"],
                          cwd=ROOT / "benchmarks", env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    table = [line for line in done.stdout.splitlines() if line.startswith("| test_resnet | 32 | 8 |")]
    assert len(table) == 3, done.stdout
    assert all(line.split("|")[7].strip() not in ("", "-") for line in table)  # images/s measured in every row
