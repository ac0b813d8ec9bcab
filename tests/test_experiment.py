"""Experiment grids: config validation, the grid, resume after kill -9, the results table and MLflow."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from medtransfer.errors import MedTransferError
from medtransfer.evaluation import auc_paired_difference
from medtransfer.api import run_experiment
from medtransfer.experiment import ExperimentConfig, grid, load_config, settings_of

TINY = """\
name: tiny
targets: [heart:hungary]
sources: [heart:cleveland]
strategies: [target-only, full]
budgets: [10, 20]
seeds: 2
train: {epochs: 3}
n_boot: 50
"""


def write(tmp_path: Path, text: str, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize("text, message", [
    ("name: x\ntargets: [heart:va]\nstrategies: [scratch]\nbudget: [10]\n", "unknown key 'budget'; allowed: name, targets"),
    ("name: x\ntargets: [heart:va]\nstrategies: [fulll]\nsources: [heart:cleveland]\n",
     "strategies: unknown strategy 'fulll'; choose from"),
    ("name: x\ntargets: [heart:va]\nstrategies: [scratch]\nbudgets: [ten]\n", "budgets: "),
    ("name: x\ntargets: [heart:va]\nstrategies: [scratch]\nseeds: 0\n", "seeds"),
    ("name: x\ntargets: [heart:va]\nstrategies: [full]\n", "strategy 'full' needs a source"),
    ("name: x\nstrategies: [scratch]\n", "missing key 'targets'"),
    ("name: x\ntargets: [heart:va]\nstrategies: [scratch]\ntrain: {epochs: 0}\n", "train.epochs"),
    ("name: x\ntargets: [heart:va]\nstrategies: [scratch]\ntrain: {image_size: nativ}\n", "train.image_size"),
    ("name: x\ntargets: [heart:va]\nstrategies: [scratch]\ntrain: {image_size: 4}\n", "train.image_size"),
    ("name: x\ntargets: [heart:va]\nstrategies: [scratch]\ntrain: {epoch: 3}\n", "unknown key 'train.epoch'; allowed: epochs"),
    ("- just\n- a list\n", "must be a YAML mapping"),
    ("name: [unclosed\n", "not valid YAML"),
])
def test_bad_configs_are_named_with_what_is_allowed(tmp_path, text, message):
    with pytest.raises(MedTransferError, match=None) as info:
        load_config(write(tmp_path, text))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


SKIP_GRID = ("name: x\ntargets: [heart:va]\nsources: [heart:cleveland, heart:hungary]\n"
             "strategies: [scratch, linear-probe, full]\nbudgets: [10, 20]\nseeds: 2\n")


def test_skip_leaves_out_the_cells_it_names_and_keeps_the_others(tmp_path):
    whole, _ = load_config(write(tmp_path, SKIP_GRID))
    config, _ = load_config(write(tmp_path, SKIP_GRID + "skip:\n- {source: heart:hungary, strategy: full}\n"
                                                 "- {strategy: [linear-probe], budget: 20}\n"))
    left = set(grid(whole)) - set(grid(config))
    assert {(c.source, c.strategy, c.budget) for c in left} == {
        ("heart:hungary", "full", "10"), ("heart:hungary", "full", "20"),
        ("heart:cleveland", "linear-probe", "20"), ("heart:hungary", "linear-probe", "20")}
    assert len(left) == 8 and len(grid(config)) == len(grid(whole)) - 8  # 2 seeds each
    kept = {cell.id(settings_of(config)) for cell in grid(config)}
    assert kept <= {cell.id(settings_of(whole)) for cell in grid(whole)}  # same ids: a grid with skips resumes


@pytest.mark.parametrize("entry, message", [
    ("{sourse: heart:hungary}", "skip: unknown key 'sourse'; allowed: target, source"),
    ("{source: heart:hungry}", "skip: source 'heart:hungry' is not in the grid's sources"),
    ("{budget: [10, 30]}", "skip: budget 30 is not in the grid's budgets"),
    ("{}", "skip: an empty entry would skip every cell"),
])
def test_skip_refuses_what_the_grid_does_not_have(tmp_path, entry, message):
    with pytest.raises(MedTransferError) as info:
        load_config(write(tmp_path, SKIP_GRID + f"skip: [{entry}]\n"))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_native_image_size_is_a_valid_setting(tmp_path):
    config, _ = load_config(write(tmp_path, "name: x\ntargets: [heart:va]\nstrategies: [scratch]\n"
                                             "train: {image_size: native}\n"))
    assert config.train.image_size == "native"


def test_missing_config_file(tmp_path):
    with pytest.raises(MedTransferError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_grid_runs_sourceless_strategies_once_and_ids_follow_settings():
    config = ExperimentConfig(name="g", targets=["heart:va", "heart:hungary"], sources=["heart:cleveland", "x.pt"],
                              strategies=["scratch", "target-only", "full"], budgets=[10, "5%"], seeds=3)
    cells = grid(config)
    # per target: scratch and target-only once, full once per source; x 2 budgets x 3 seeds
    assert len(cells) == 2 * (1 + 1 + 2) * 2 * 3
    assert {c.source for c in cells if c.strategy in ("scratch", "target-only")} == {"none"}
    assert {c.budget for c in cells} == {"10", "5%"}
    ids = [c.id(settings_of(config)) for c in cells]
    assert len(set(ids)) == len(ids)
    changed = config.model_copy(update={"train": config.train.model_copy(update={"epochs": 2})})
    assert cells[0].id(settings_of(changed)) != ids[0]
    assert cells[0].id(settings_of(config)) == ids[0]
    # every setting that changes a cell's numbers changes its id (a resumed grid never keeps stale results);
    # at its default a setting leaves the id as it was before it was part of it
    for update in ({"threshold": "youden"}, {"calibrate": "platt"}, {"positive": "1"}, {"drop_columns": ["age"]},
                   {"id_column": "pid"}, {"n_boot": 200}, {"text_column": "note"}, {"resplit": True}):
        assert cells[0].id(settings_of(config.model_copy(update=update))) != ids[0], update
    defaults = {"threshold": None, "calibrate": "none", "drop_columns": [], "n_boot": 1000, "keep_weights": True}
    assert cells[0].id(settings_of(config.model_copy(update=defaults))) == ids[0]
    assert "5pct" in next(i for i, c in zip(ids, cells) if c.budget == "5%")


def test_grid_runs_baselines_once_and_skips_what_a_backbone_cannot_do():
    config = ExperimentConfig(name="g", targets=["heart:va"], sources=["heart:cleveland"], backbones=["mlp", "linear"],
                              strategies=["target-only", "source-only", "pooled", "head", "partial"], budgets=[10],
                              seeds=2)
    cells = grid(config)
    assert {(c.strategy, c.backbone) for c in cells} == {("target-only", "mlp"), ("source-only", "mlp"),
                                                         ("pooled", "mlp"), ("head", "mlp"), ("head", "linear"),
                                                         ("partial", "mlp")}  # a linear model has no stages
    assert len(cells) == 6 * 2


def test_parallel_cells_alternate_sources_so_workers_do_not_wait_on_one_feature_cache():
    """In grid order two workers would ask for one source's features at once (seeds side by side) and one
    would wait on that model's cache lock; interleaved, neighbours use different sources. Same cells."""
    from medtransfer.experiment.runner import interleaved
    config = ExperimentConfig(name="g", targets=["heart:va"], sources=["a.pt", "b.pt"],
                              strategies=["linear-probe"], budgets=[10, 20], seeds=2)
    todo = [(cell, None) for cell in grid(config)]
    assert [c.source for c, _ in todo] == ["a.pt"] * 4 + ["b.pt"] * 4
    mixed = [cell for cell, _ in interleaved(todo)]
    assert [c.source for c in mixed] == ["a.pt", "b.pt"] * 4
    assert sorted(mixed, key=repr) == sorted((c for c, _ in todo), key=repr)
    assert [c for c in mixed if c.source == "a.pt"] == [c for c, _ in todo if c.source == "a.pt"]


# ----------------------------------------------------------------------------- running and resuming


def test_experiment_writes_cells_table_and_mlflow_and_resumes(tmp_path):
    config = write(tmp_path, TINY)
    out = tmp_path / "exp"
    run_experiment(config, out=out, progress=False, report=False)
    table = pd.read_csv(out / "results.csv")
    assert len(table) == 8 and table.cell_id.is_unique
    assert set(table.strategy) == {"target-only", "full"} and set(table.n_labels) == {10, 20}
    assert table.test_auc.between(0.6, 1.0).all()  # Cleveland -> Hungary is learnable
    assert (table.test_auc_lo <= table.test_auc).all() and (table.test_auc <= table.test_auc_hi).all()
    assert not list((out / "cells").glob("*/model.safetensors"))  # weights only with keep_weights
    assert (out / "config.yaml").read_text() == TINY

    import mlflow
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert sorted(r.data.tags["cell_id"] for r in runs) == sorted(table.cell_id)
    one = next(r for r in runs if r.data.tags["cell_id"] == table.cell_id[0])
    assert one.data.metrics["test_auc"] == pytest.approx(table.test_auc[0])
    assert one.data.params["strategy"] == table.strategy[0]
    assert {a.path for a in client.list_artifacts(one.info.run_id)} >= {"metrics.json", "predictions.csv"}

    # a kill -9 mid-cell leaves a .partial folder and a cell missing: the re-run redoes only that one
    victim = out / table.run_dir[3]
    stamps = {d.name: d.stat().st_mtime_ns for d in (out / "cells").iterdir()}
    victim.rename(victim.with_name(victim.name + ".partial"))
    run_experiment(config, out=out, progress=False, report=False)
    again = pd.read_csv(out / "results.csv")
    assert sorted(again.cell_id) == sorted(table.cell_id)
    assert not list((out / "cells").glob("*.partial"))
    untouched = {d.name: d.stat().st_mtime_ns for d in (out / "cells").iterdir() if d.name != victim.name}
    assert untouched == {k: v for k, v in stamps.items() if k != victim.name}
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert sorted(r.data.tags["cell_id"] for r in runs) == sorted(table.cell_id)  # replaced, not added


def test_resplit_draws_a_test_split_per_seed_and_the_report_pairs_within_it(tmp_path):
    config = write(tmp_path, TINY.replace("strategies: [target-only, full]", "strategies: [source-only, full]")
                   .replace("budgets: [10, 20]", "budgets: [10]") + "resplit: true\n")
    out = tmp_path / "exp"
    run_experiment(config, out=out, progress=False, report=True)
    table = pd.read_csv(out / "results.csv")
    assert (table.split_seed == table.seed).all() and len(table) == 4
    preds = {}  # run folder -> (test labels, test probabilities)
    for d in table.run_dir:
        test = pd.read_csv(out / d / "predictions.csv").query("split == 'test'").sort_values("index")
        preds[d] = (test["label"].to_numpy(), test[["prob_no disease", "prob_disease"]].to_numpy())
    full = table[table.strategy == "full"].sort_values("seed").run_dir.tolist()
    base = table[table.strategy == "source-only"].sort_values("seed").run_dir.tolist()
    assert preds[full[0]][0].tolist() != preds[full[1]][0].tolist()  # each seed holds out other patients
    md = (out / "report.md").read_text()
    assert "Repeated hold-out" in md and "not paired" not in md
    # the report (1000 resamples) pairs each seed's full model with the source-only model of its own split
    d = auc_paired_difference({0: preds[full[0]][0], 1: preds[full[1]][0]}, [preds[r][1] for r in full],
                              [preds[r][1] for r in base], n_boot=1000, split_of_a=[0, 1], split_of_b=[0, 1])
    assert d["value"] != 0
    assert f"Against source-only ← cleveland: ΔAUC {d['value']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]" in md


def test_kill_9_mid_run_loses_nothing_written(tmp_path):
    config = write(tmp_path, TINY.replace("seeds: 2", "seeds: 8").replace("epochs: 3", "epochs: 30"))
    out = tmp_path / "exp"
    command = [sys.executable, "-m", "medtransfer.cli", "experiment", str(config), "--out", str(out), "--quiet"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=dict(os.environ, PYTHONUNBUFFERED="1"))
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if len(list(out.glob("cells/*/metrics.json"))) >= 3:
            break
        time.sleep(0.2)
    assert process.poll() is None, "the experiment finished before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    finished = len(list(out.glob("cells/*/metrics.json")))
    before = pd.read_csv(out / "results.csv")  # written every few seconds: at most the finished cells
    assert 1 <= len(before) <= finished < 32 and before.cell_id.is_unique
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    after = pd.read_csv(out / "results.csv")
    assert len(after) == 32 and after.cell_id.is_unique
    assert set(before.cell_id) <= set(after.cell_id)
    common = after.set_index("cell_id").loc[before.cell_id, "test_auc"]
    assert list(common) == list(before.test_auc)  # finished cells were not re-run

    import mlflow
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert sorted(r.data.tags["cell_id"] for r in runs) == sorted(after.cell_id)
    assert all(r.info.status == "FINISHED" for r in runs)


def test_cli_experiment_bad_config_is_one_line(tmp_path):
    config = write(tmp_path, "name: x\ntargets: [heart:va]\nstrategies: [scratch]\nbudgets: [10]\nsed: 3\n")
    result = subprocess.run([sys.executable, "-m", "medtransfer.cli", "experiment", str(config)],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "unknown key 'sed'" in result.stderr


# the experiment grids among the examples (a federated config names sites, not targets: test_federated.py)
EXAMPLES = [p for p in sorted((Path(__file__).parent.parent / "examples").glob("*.yaml"))
            if "sites" not in yaml.safe_load(p.read_text())]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_grid_loads_and_image_grids_state_their_measured_time(path):
    config, _ = load_config(path)
    assert grid(config)
    if all(t.startswith("heart:") for t in config.targets):
        return  # the tables' grids take minutes; the image grids' time decides whether a user can run them
    header = "".join(line for line in path.read_text().splitlines(keepends=True) if line.startswith("#"))
    assert "Measured on 2 CPU cores" in header, f"{path.name}: state the grid's measured time in its header"
