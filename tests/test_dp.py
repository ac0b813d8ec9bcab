"""Differential privacy (`--dp`, DP-SGD with Opacus): the accountant's epsilon is recorded and within the
target, per-example gradients are clipped, BatchNorm becomes GroupNorm and the checkpoint rebuilds it,
bad `--dp` values and strategies that cannot train privately are one line with exit code 2, non-DP runs
are unchanged, and a grid with a dp axis reports the privacy-utility curve."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import medtransfer as mt
from medtransfer.api import experiment as run_grid
from medtransfer.errors import MedTransferError
from medtransfer.experiment.grid import Cell
from medtransfer.models.checkpoint import load_checkpoint
from medtransfer.models.inference import predict_proba
from medtransfer.training.privacy import DPConfig, PrivateTraining, parse_dp

ECG = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "signals" / "ecg"
TOLERANCE = 0.02  # the PRV accountant's epsilon is an estimate within Opacus's eps_error (0.01 by default)
SOURCE_EPOCHS = 20  # one short Cleveland pretraining, cached and shared by every test here


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "medtransfer.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, "COLUMNS": "200"})


def test_dp_run_records_the_accountants_epsilon_and_a_test_auc(tmp_path):
    run = tmp_path / "dp"
    result = mt.transfer("heart:hungary", "full", source="heart:cleveland", budget=40, epochs=8, out=run,
                         source_epochs=SOURCE_EPOCHS, progress=False, n_boot=10, dp="epsilon=1")
    dp = json.loads((run / "metrics.json").read_text())["dp"]
    assert dp == result.metrics["dp"]
    assert 0 < dp["epsilon_spent"] <= 1 + TOLERANCE and dp["epsilon_target"] == 1
    assert dp["noise_multiplier"] > 0 and dp["delta"] == 1e-5 and dp["clip"] == 1.0
    assert dp["steps"] == dp["planned_steps"] == 8 * 2  # 40 examples, batches of 32: 2 steps an epoch
    assert dp["sample_rate"] == pytest.approx(32 / 40) and dp["accountant"] == "prv"
    assert 0 <= result.metrics["test"]["auc"]["value"] <= 1
    assert json.loads((run / "config.json").read_text())["dp"] == {"epsilon": 1.0, "delta": None, "clip": 1.0}
    card = (run / "model_card.md").read_text()
    assert "Differential privacy: DP-SGD (Opacus)" in card and "spent of target epsilon 1" in card
    model, _ = load_checkpoint(run)
    x = result.dataset.test.x
    assert np.allclose(predict_proba(model, x, "binary"), predict_proba(result.model, x, "binary"))
    assert not any(hasattr(p, "grad_sample") for p in result.model.parameters())  # Opacus's hooks are gone


def test_per_example_gradients_are_clipped_before_averaging():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    private = PrivateTraining(DPConfig(epsilon=1, clip=0.5), n=64, batch_size=16, steps_per_epoch=4, epochs=1)
    groups = private.prepare(model, [{"params": list(model.parameters())}])
    assert private.replaced == {"1": "BatchNorm1d -> GroupNorm"} and isinstance(model[1], nn.GroupNorm)
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in model.parameters()}
    optimizer = private.optimizer(torch.optim.SGD(groups, lr=1.0))
    wrapped = private.wrap(model)
    x, y = torch.randn(16, 5) * 100, torch.randint(0, 2, (16,))  # large inputs: large per-example gradients
    optimizer.zero_grad()
    F.cross_entropy(wrapped(x), y).backward()
    params = list(model.parameters())
    per_example = torch.cat([p.grad_sample.reshape(16, -1) for p in params], dim=1)
    norms = per_example.norm(dim=1)
    assert (norms > 0.5).any()  # there is something to clip
    expected = (per_example * (0.5 / (norms + 1e-6)).clamp(max=1.0)[:, None]).sum(0) / 16
    optimizer.noise_multiplier = 0.0  # the clipping alone, without the noise
    optimizer.pre_step()
    clipped = torch.cat([p.grad.reshape(-1) for p in params])
    assert torch.allclose(clipped, expected, atol=1e-5)
    assert clipped.norm() <= 0.5 + 1e-5  # a mean of vectors of norm <= C
    assert private.steps == 1  # the accountant heard of the step
    private.close()
    assert not any(hasattr(p, "grad_sample") for p in params)


def test_an_empty_poisson_batch_is_a_noise_only_step():
    model = nn.Linear(3, 2)
    private = PrivateTraining(DPConfig(epsilon=1), n=1000, batch_size=1, steps_per_epoch=1, epochs=1)
    optimizer = private.optimizer(torch.optim.SGD(private.prepare(model, [{"params": list(model.parameters())}]),
                                                  lr=1.0))
    private.wrap(model)
    before = model.weight.detach().clone()
    private.empty_batch()
    optimizer.step()
    assert private.steps == 1 and not torch.equal(before, model.weight.detach())  # noise moved it


def test_fits_sharing_a_schedule_spend_the_budget_of_one_fit_together():
    """A federated site's rounds: each fit is charged the epochs before it, all share one noise multiplier
    (calibrated for every planned epoch), and after the last the spent epsilon is the single fit's."""
    from medtransfer.training.privacy import DPSchedule

    dp = DPConfig(epsilon=2)
    whole = PrivateTraining(dp, n=200, batch_size=32, steps_per_epoch=7, epochs=6)
    whole.steps = 42
    rounds = [PrivateTraining(dp, n=200, batch_size=32, steps_per_epoch=7, epochs=2,
                              schedule=DPSchedule(planned_epochs=6, epochs_before=2 * r)) for r in range(3)]
    assert {p.noise_multiplier for p in rounds} == {whole.noise_multiplier}
    alone = PrivateTraining(dp, n=200, batch_size=32, steps_per_epoch=7, epochs=2)
    assert alone.noise_multiplier < whole.noise_multiplier  # 14 steps need less noise than 42
    spent = []
    for private in rounds:
        private.steps = 14  # every step of the round taken
        spent.append(private.record())
    assert [r["steps"] for r in spent] == [14, 28, 42] and spent[1]["steps_before"] == 14
    epsilons = [r["epsilon_spent"] for r in spent]
    assert epsilons[0] < epsilons[1] < epsilons[2]
    assert epsilons[2] == pytest.approx(whole.record()["epsilon_spent"]) == pytest.approx(2, abs=TOLERANCE)


@pytest.mark.skipif(not (ECG / "ECG200_TRAIN.tsv").is_file(), reason=f"ECG200 not found in {ECG}")
def test_batchnorm_becomes_groupnorm_and_the_checkpoint_rebuilds_it(tmp_path):
    run = tmp_path / "ecg"
    result = mt.transfer(f"ucr:{ECG}/ECG200", "scratch", backbone="cnn1d:width=4", budget=40, epochs=1, out=run,
                         progress=False, n_boot=10, dp="epsilon=8")
    replaced = result.metrics["dp"]["replaced_modules"]
    assert replaced and set(replaced.values()) == {"BatchNorm1d -> GroupNorm"}
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in result.model.modules())
    model, meta = load_checkpoint(run)  # strict: the GroupNorm weights fit the rebuilt model
    assert meta["architecture"]["opacus_fixed"] == [n.removeprefix("backbone.") for n in replaced]
    x = result.dataset.test.x[:16]
    assert np.allclose(predict_proba(model, x, "binary"), predict_proba(result.model, x, "binary"))


@pytest.mark.parametrize("value, message", [
    ("epsilon=0", "epsilon must be a number > 0"),
    ("epsilon=abc", "epsilon must be a number"),
    ("eps=1", "unknown key 'eps'"),
    ("epsilon=1,delta=2", "delta must be a number in (0, 1)"),
    ("delta=1e-5", "epsilon is required"),
    ("epsilon=1,clip=-1", "clip (the per-example gradient norm bound) must be a number > 0"),
    ("1", "expected epsilon=E"),
])
def test_bad_dp_values_are_one_line(value, message):
    with pytest.raises(MedTransferError, match=None) as error:
        parse_dp(value)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_bad_dp_on_the_cli_exits_2_with_one_line(tmp_path):
    result = cli("transfer", "--data", "heart:hungary", "--budget", "20", "--strategy", "head", "--source",
                 "heart:cleveland", "--dp", "epsilon=-1", cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0] == "error: --dp: epsilon must be a number > 0, got '-1'"
    assert not any(tmp_path.iterdir())  # refused before anything was written


@pytest.mark.parametrize("options, message", [
    (dict(strategy="target-only"), "strategy 'target-only' does not learn"),
    (dict(strategy="linear-probe", source="heart:cleveland"), "use one of: full, head, partial, scratch"),
    (dict(strategy="lp-ft", source="heart:cleveland"), "use one of: full, head, partial, scratch"),
    (dict(strategy="l2-sp", source="heart:cleveland"), "use one of: full, head, partial, scratch"),
    (dict(strategy="scratch", sampler="balanced"), "Poisson sampling"),
    (dict(strategy="scratch", class_weight="balanced"), "weighted mean"),
    (dict(strategy="scratch", compile=True), "torch.compile"),
    (dict(strategy="scratch", precision="bf16"), "fp32"),
])
def test_dp_is_refused_where_it_would_be_ignored_or_void(options, message, tmp_path):
    with pytest.raises(MedTransferError) as error:
        mt.transfer("heart:hungary", budget=20, out=tmp_path / "run", progress=False, dp="epsilon=1", **options)
    assert message in str(error.value) and not (tmp_path / "run").exists()


def test_runs_without_dp_take_the_plain_path(tmp_path):
    """Without --dp nothing of Opacus is attached and the run records no privacy block; the same seed gives
    the same numbers twice. (Numbers pinned across machines would test the CPU kernels, not this code.)"""
    runs = [mt.transfer("heart:hungary", "full", source="heart:cleveland", budget=20, seed=1, epochs=15,
                        source_epochs=SOURCE_EPOCHS, save=False, progress=False, n_boot=10) for _ in range(2)]
    for result in runs:
        assert "dp" not in result.metrics and "dp" not in result.config
        assert not any(hasattr(p, "grad_sample") for p in result.model.parameters())
        assert "GroupNorm" not in repr(result.model)
    assert runs[0].metrics["test"]["auc"]["value"] == runs[1].metrics["test"]["auc"]["value"]
    assert runs[0].predictions["prob_disease"].tolist() == runs[1].predictions["prob_disease"].tolist()


def test_a_cell_without_dp_keeps_its_id():
    from medtransfer.experiment.grid import defaults_table
    cell = Cell("heart:va", "heart:cleveland", "mlp", "head", "20", 0)  # the coordinates without the dp axis
    old = hashlib.sha256(json.dumps([{k: v for k, v in asdict(cell).items() if k != "dp"},
                                     {"defaults": defaults_table()}], sort_keys=True).encode()).hexdigest()[:8]
    assert cell.id({}) == f"va_cleveland_mlp_head_20_s0_{old}"
    private = Cell("heart:va", "heart:cleveland", "mlp", "head", "20", 0, "epsilon=1")
    assert private.id({}).startswith("va_cleveland_mlp_head_20_s0_dp-epsilon-1_") and private.id({}) != cell.id({})


def test_a_grid_with_a_dp_axis_reports_the_privacy_utility_curve(tmp_path):
    config = tmp_path / "dp.yaml"
    config.write_text("name: dp\ntargets: [heart:hungary]\nsources: [heart:cleveland]\nbackbones: [mlp]\n"
                      "strategies: [head, target-only]\nbudgets: [40]\ndp: [none, \"epsilon=2\"]\nseeds: 1\n"
                      f"train: {{epochs: 3, source_epochs: {SOURCE_EPOCHS}}}\nn_boot: 20\n")
    run_grid(config, out=tmp_path / "exp", progress=False)
    import pandas as pd
    rows = pd.read_csv(tmp_path / "exp" / "results.csv")
    assert len(rows) == 3  # head with and without DP; target-only (no DP-SGD) once, without DP
    private = rows[rows["dp"] == "epsilon=2"]
    assert list(private["strategy"]) == ["head"] and 0 < private["dp_epsilon"].iloc[0] <= 2 + TOLERANCE
    assert rows.loc[rows["strategy"] == "target-only", "dp"].isna().all()
    report = (tmp_path / "exp" / "report.md").read_text()
    assert "Privacy-utility curve" in report and "| head ← cleveland | 40 (40 labels) | ε=2 |" in report
    assert "head ← cleveland · DP ε=2" in report  # a DP run is its own method everywhere in the report


def test_a_bad_dp_axis_names_the_key(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("name: bad\ntargets: [heart:hungary]\nstrategies: [scratch]\ndp: [none, \"epsilon=zero\"]\n")
    with pytest.raises(MedTransferError) as error:
        run_grid(config, out=tmp_path / "exp", progress=False)
    assert "dp" in str(error.value) and "epsilon must be a number" in str(error.value)
