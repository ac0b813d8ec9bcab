"""Experiment folders keep their state: another experiment's folder is refused, one process writes a folder
at a time (and a killed one never blocks), impossible cells are refused before any training, failing cells
are recorded and the grid goes on, and a broken MLflow store is rebuilt instead of failing for good."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medtransfer.api import experiment
from medtransfer.errors import MedTransferError
from medtransfer.experiment import CellsFailed, load_config
from medtransfer.experiment.grid import grid
from medtransfer.experiment.store import forget_engine
from medtransfer.pipeline import TransferRequest
from medtransfer.pipeline.preflight import preflight
from medtransfer.strategies import STRATEGIES, Strategy, register
from test_experiment import TINY, write  # the tiny heart grid the experiment tests share

ONE = """\
name: one
targets: [heart:hungary]
strategies: [target-only]
budgets: [20]
seeds: 1
n_boot: 50
"""

def checksums(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def cli(config: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "medtransfer.cli", "experiment", str(config), "--out", str(out), "-q", *extra]


def mlflow_runs(out: Path, name: str) -> list:
    import mlflow
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    return client.search_runs([client.get_experiment_by_name(name).experiment_id], max_results=1000)


def assert_one_finished_run_per_cell(out: Path, name: str) -> None:
    table = pd.read_csv(out / "results.csv")
    assert table.cell_id.is_unique
    runs = mlflow_runs(out, name)
    assert all(r.info.status == "FINISHED" for r in runs)
    assert sorted(r.data.tags["cell_id"] for r in runs) == sorted(table.cell_id)  # no duplicates, none missing


# ----------------------------------------------------------------------------- 1. another experiment's folder


@pytest.mark.parametrize("name", ["/tmp/elsewhere", "../up", "a/b", "..", "a\\b"])
def test_the_yaml_name_must_be_a_plain_name(tmp_path, name):
    with pytest.raises(MedTransferError) as info:
        load_config(write(tmp_path, ONE.replace("name: one", f"name: '{name}'")))
    assert "name: must be a plain name" in str(info.value) and "\n" not in str(info.value)


def test_out_holding_another_experiment_is_refused_unless_overwrite(tmp_path):
    out = tmp_path / "exp"
    experiment(write(tmp_path, ONE), out=out, progress=False)
    before = checksums(out)
    other = write(tmp_path, ONE.replace("name: one", "name: other"), "other.yaml")
    with pytest.raises(MedTransferError) as info:
        experiment(other, out=out, progress=False)
    message = str(info.value)
    assert "\n" not in message and str(out) in message
    assert "another experiment, 'one' (1 rows in results.csv)" in message
    assert "--overwrite" in message
    assert checksums(out) == before  # nothing of the first experiment changed

    changed = write(tmp_path, ONE.replace("n_boot: 50", "n_boot: 50\ntrain: {epochs: 2}"), "changed.yaml")
    with pytest.raises(MedTransferError, match="1 cells this config does not have"):
        experiment(changed, out=out, progress=False)  # same name, other settings: another experiment too

    grown = write(tmp_path, ONE.replace("budgets: [20]", "budgets: [20, 30]"), "grown.yaml")
    experiment(grown, out=out, progress=False)  # the same experiment with more cells resumes
    assert len(pd.read_csv(out / "results.csv")) == 2

    experiment(other, out=out, progress=False, overwrite=True)
    assert (out / "config.yaml").read_text().startswith("name: other")
    table = pd.read_csv(out / "results.csv")
    assert len(table) == 1 and len(list((out / "cells").iterdir())) == 1  # the old experiment's files are gone
    assert [r.data.tags["cell_id"] for r in mlflow_runs(out, "other")] == list(table.cell_id)


def test_a_grid_begun_under_other_defaults_is_refused_naming_the_change(tmp_path, monkeypatch):
    """Resuming after an upgrade changed a default would mix cells trained under two recipes: refused in one
    line that names the change, nothing written; --overwrite starts over under the new defaults."""
    from medtransfer.defaults import TRAINING
    out = tmp_path / "exp"
    config = write(tmp_path, ONE)
    experiment(config, out=out, progress=False)
    before, epochs = checksums(out), TRAINING["tabular"]["epochs"]
    assert json.loads((out / "defaults.json").read_text())["TRAINING"]["tabular"]["epochs"] == epochs
    monkeypatch.setitem(TRAINING, "tabular", TRAINING["tabular"] | {"epochs": 7})
    with pytest.raises(MedTransferError) as info:
        experiment(config, out=out, progress=False)
    message = str(info.value)
    assert "\n" not in message and "trained under other medtransfer defaults" in message
    assert f"(TRAINING.tabular.epochs {epochs} -> 7)" in message
    assert "--overwrite" in message and checksums(out) == before
    experiment(config, out=out, progress=False, overwrite=True)
    assert json.loads((out / "defaults.json").read_text())["TRAINING"]["tabular"]["epochs"] == 7


def test_a_worker_refuses_a_cell_when_the_code_changed_since_the_grid_started(tmp_path):
    """Workers import the code on disk: after an upgrade or an edit mid-grid they would run other code (and
    cache keys) than the cells before them. The main process's code digest travels with each cell."""
    from medtransfer.experiment.runner import _worker
    from medtransfer.runs import code_digest
    config = load_config(write(tmp_path, ONE))[0]
    cell = grid(config)[0]
    assert code_digest() == code_digest()
    with pytest.raises(MedTransferError, match="code changed on disk since this experiment started") as info:
        _worker(cell, tmp_path / "cell", 1, config=config, data_root=None, code="0" * 16)
    assert "\n" not in str(info.value) and not (tmp_path / "cell").exists()


def test_a_code_change_mid_grid_fails_later_cells_here_too_and_a_resume_names_the_old_cells(tmp_path, monkeypatch):
    """Cells run in this process (--jobs 1, each source's first cell) import code lazily as well: after an edit
    they are refused like a worker's. A resume keeps the finished cells and says they ran other code."""
    import io

    from rich.console import Console

    from medtransfer.experiment import runner
    config, out = write(tmp_path, ONE.replace("seeds: 1", "seeds: 2")), tmp_path / "exp"
    real = runner.code_digest()
    digests = iter([real, real])  # the grid's start, the first cell; then medtransfer is "edited"
    monkeypatch.setattr(runner, "code_digest", lambda: next(digests, "e" * 16))
    with pytest.raises(CellsFailed) as info:
        experiment(config, out=out, progress=False, report=False)
    assert len(info.value.failed) == 1 and "code changed on disk" in next(iter(info.value.failed.values()))
    finished = [f for f in (out / "cells").iterdir() if (f / "metrics.json").is_file()]
    assert len(finished) == 1
    assert json.loads((finished[0] / "config.json").read_text())["versions"]["medtransfer_code"] == real
    text = io.StringIO()
    experiment(config, out=out, progress=False, report=False, console=Console(file=text, width=80))
    assert "note: 1 finished cell of this folder ran other medtransfer code" in " ".join(text.getvalue().split())
    assert len(pd.read_csv(out / "results.csv")) == 2


def test_out_holding_unrelated_files_is_refused(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "results.csv").write_text("my own table\n")
    with pytest.raises(MedTransferError, match="is not empty and holds no experiment \\(results.csv\\)"):
        experiment(write(tmp_path, ONE), out=out, progress=False)
    assert (out / "results.csv").read_text() == "my own table\n"


# ----------------------------------------------------------------------------- 2. one writer per folder


HOLD = """\
import sys, time
from pathlib import Path
from medtransfer.experiment.folder import folder_lock
with folder_lock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_second_process_is_told_who_holds_the_folder(tmp_path):
    out = tmp_path / "exp"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(MedTransferError) as info:
            experiment(write(tmp_path, ONE), out=out, progress=False)
        message = str(info.value)
        assert "\n" not in message and f"pid {holder.pid} on " in message and "since" in message
        assert not (out / "config.yaml").exists()  # nothing written while another process holds it
    finally:
        holder.kill()
        holder.wait()
    experiment(write(tmp_path, ONE), out=out, progress=False)  # a dead holder's lock never blocks
    assert len(pd.read_csv(out / "results.csv")) == 1


def test_two_processes_on_one_folder_one_runs_and_the_store_stays_usable(tmp_path):
    config = write(tmp_path, TINY.replace("seeds: 2", "seeds: 3").replace("epochs: 3", "epochs: 20")
                   .replace("budgets: [10, 20]", "budgets: [10, 20, 40]"))
    out = tmp_path / "exp"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # The second process starts once the first holds the folder (its lock file names it): started at the
    # same instant, a first run with a warm source cache could finish before the second reached the lock.
    first = subprocess.Popen(cli(config, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while not (out / "experiment.lock.json").exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    second = subprocess.Popen(cli(config, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    outputs = [p.communicate(timeout=600) for p in (first, second)]
    results = [(p.returncode, stdout, stderr) for p, (stdout, stderr) in zip((first, second), outputs)]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, _, err in results if code == 2)
    assert refused.strip().count("\n") == 0 and "in use by another medtransfer experiment (pid " in refused
    assert "Traceback" not in refused
    table = pd.read_csv(out / "results.csv")
    assert len(table) == 18
    assert_one_finished_run_per_cell(out, "tiny")

    third = subprocess.run(cli(config, out), capture_output=True, text=True, timeout=600, env=env)
    assert third.returncode == 0, third.stderr  # the store opens, nothing is run twice
    assert "0 to run" in third.stdout
    assert_one_finished_run_per_cell(out, "tiny")


def committed(out: Path) -> set[str]:
    """The cells swapped in complete (not the <id>.partial folder a cell is written in)."""
    return {p.parent.name for p in out.glob("cells/*/metrics.json") if not p.parent.name.endswith(".partial")}


def test_a_run_killed_while_holding_the_lock_resumes(tmp_path):
    config = write(tmp_path, TINY.replace("epochs: 3", "epochs: 20"))
    out = tmp_path / "exp"
    process = subprocess.Popen(cli(config, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None and not committed(out):
        time.sleep(0.1)
    assert process.poll() is None, "the experiment finished before it could be killed"
    holder = json.loads((out / "experiment.lock.json").read_text())
    assert holder["pid"] == process.pid
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    finished = committed(out)
    assert 1 <= len(finished) < 8
    again = subprocess.run(cli(config, out), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr  # the dead process's lock (and its JSON) do not block
    assert f"{len(finished)} already done, {8 - len(finished)} to run" in again.stdout
    table = pd.read_csv(out / "results.csv")
    assert len(table) == 8 and set(finished) <= set(table.cell_id)
    assert_one_finished_run_per_cell(out, "tiny")
    assert not (out / "experiment.lock.json").exists()


def test_an_unreadable_mlflow_store_is_set_aside_and_rebuilt(tmp_path):
    out = tmp_path / "exp"
    config = write(tmp_path, ONE)
    experiment(config, out=out, progress=False, report=False)
    (out / "mlflow.db").write_bytes(b"not a database, e.g. half-created by two processes")
    again = subprocess.run(cli(config, out), capture_output=True, text=True, timeout=600)  # a later process
    assert again.returncode == 0, again.stderr
    assert "could not be opened" in again.stdout and "rebuilding the store from the cell folders" in again.stdout
    forget_engine(f"sqlite:///{(out / 'mlflow.db').resolve()}")  # this process still has the old file open
    assert_one_finished_run_per_cell(out, "one")
    assert [p.read_bytes() for p in out.glob("mlflow.db.unreadable-*")] == [
        b"not a database, e.g. half-created by two processes"]  # kept, not deleted


# ----------------------------------------------------------------------------- 3a. refused before any training


def images(folder: Path, rgb: bool, n: int = 12) -> str:
    from PIL import Image
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (folder / label).mkdir(parents=True)
        for i in range(n):
            pixels = rng.integers(0, 255, (16, 16, 3) if rgb else (16, 16), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / label / f"{i}.png")
    return f"folder:{folder}"


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if anything trains or pretrains."""
    def refuse(*args, **kwargs):
        raise AssertionError("the preflight check trained a model")
    monkeypatch.setattr("medtransfer.strategies.base.fit", refuse)
    monkeypatch.setattr("medtransfer.pipeline.source.run_transfer", refuse)


def test_preflight_names_what_makes_a_cell_impossible_without_training(tmp_path, no_training):
    grey, rgb = images(tmp_path / "grey", rgb=False), images(tmp_path / "rgb", rgb=True)
    cases = [
        (TransferRequest("heart:switzerland", "target-only", budget=100), "budget 100 exceeds the 42 training"),
        (TransferRequest("heart:hungary", "pooled", "imagenet:efficientnet_lite0"),
         "so --source must be a dataset such as heart:cleveland, not 'imagenet:efficientnet_lite0'"),
        (TransferRequest("heart:hungary", "full", "heart:nowhere"), "nowhere"),
        (TransferRequest("heart:hungary", "full", grey), "source model takes image2d inputs but the target is tabular"),
        (TransferRequest("heart:hungary", "full"), "needs --source"),
        (TransferRequest(rgb, "target-only"), "target-only is a tabular baseline"),
        (TransferRequest("heart:hungary", "scratch", budget=0), "--budget 0 is refused"),
    ]
    for request, reason in cases:
        found = preflight(request)
        assert found is not None and reason in found and "\n" not in found, (request, found)
    assert preflight(TransferRequest("heart:hungary", "full", "heart:cleveland", budget=20)) is None
    assert preflight(TransferRequest(rgb, "full", rgb, budget=4)) is None
    assert preflight(TransferRequest(rgb, "full", grey, budget=4)) is None  # a grey source is adapted to RGB


def test_preflight_loads_each_dataset_once_per_cache(monkeypatch, no_training):
    import medtransfer.pipeline.request as request_module
    loaded = []
    real = request_module.load_dataset
    monkeypatch.setattr(request_module, "load_dataset", lambda spec, **kw: loaded.append(spec) or real(spec, **kw))
    cache = {}
    for strategy in ("full", "head", "pooled", "source-only"):
        for budget in (10, 20, 500):
            preflight(TransferRequest("heart:hungary", strategy, "heart:cleveland", budget=budget), cache)
    assert sorted(loaded) == ["heart:cleveland", "heart:hungary"]


# ----------------------------------------------------------------------------- 3b. failed cells, the grid goes on


class Flaky(Strategy):
    """Fails while it runs (after the preflight check passed) as long as `failing` is set."""
    name = "test-flaky"
    needs_source_model = False
    failing: BaseException | None = RuntimeError("boom\nsecond line")

    def run(self, ctx):
        if Flaky.failing is not None:
            raise Flaky.failing
        return STRATEGIES["target-only"]().run(ctx)


@pytest.fixture
def flaky():
    register(Flaky)
    Flaky.failing = RuntimeError("boom\nsecond line")
    yield Flaky
    STRATEGIES.pop(Flaky.name)


GRID = """\
name: grid
targets: [heart:hungary, heart:switzerland]
strategies: [target-only, test-flaky]
budgets: [20, 100]
seeds: 1
n_boot: 50
"""


def test_failed_cells_are_recorded_listed_and_retried_while_the_grid_goes_on(tmp_path, flaky):
    out = tmp_path / "exp"
    config = write(tmp_path, GRID)
    with pytest.raises(CellsFailed) as info:
        experiment(config, out=out, progress=False)
    failed = info.value.failed
    # switzerland has 42 training rows: budget 100 is refused before training for both strategies;
    # test-flaky fails at run time in its three other cells; target-only runs in its three possible cells
    assert len(failed) == 5 and str(info.value).startswith("5 of 8 cells failed")
    refused = {k: v for k, v in failed.items() if k.startswith("switzerland") and "_100_" in k}
    assert len(refused) == 2 and all("budget 100 exceeds the 42 training" in v for v in refused.values())
    assert all(v == "RuntimeError: boom" for k, v in failed.items() if k not in refused)
    table = pd.read_csv(out / "results.csv")
    assert len(table) == 8 and table.cell_id.is_unique
    assert dict(zip(table.cell_id[table.error.notna()], table.error.dropna())) == failed
    assert table.test_auc.notna().sum() == 3 and table.error.isna().sum() == 3
    record = json.loads(next((out / "cells").glob("hungary*test-flaky*.failed.json")).read_text())
    assert record["stage"] == "run" and "RuntimeError: boom" in record["traceback"]
    md = (out / "report.md").read_text()
    assert "Failed or missing cells" in md and "budget 100 exceeds the 42 training examples" in md
    assert "RuntimeError: boom" in md

    Flaky.failing = None  # the cause is fixed: a re-run retries the failed cells, the finished ones stay
    with pytest.raises(CellsFailed) as info:
        experiment(config, out=out, progress=False)
    assert set(info.value.failed) == set(refused)
    table = pd.read_csv(out / "results.csv")
    assert len(table) == 8 and table.test_auc.notna().sum() == 6
    assert len(list((out / "cells").glob("*.failed.json"))) == 2
    runs = mlflow_runs(out, "grid")
    assert sorted(r.data.tags["cell_id"] for r in runs) == sorted(table.cell_id[table.error.isna()])


def test_an_interrupt_stops_the_grid_and_is_no_failed_cell(tmp_path, flaky):
    out = tmp_path / "exp"
    config = write(tmp_path, GRID.replace("budgets: [20, 100]", "budgets: [20]"))
    Flaky.failing = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt):
        experiment(config, out=out, progress=False)
    assert not list((out / "cells").glob("*.failed.json"))
    assert len(pd.read_csv(out / "results.csv")) == 1  # what finished is written; the rest was not run
    assert not (out / "experiment.lock.json").exists()
    Flaky.failing = None
    experiment(config, out=out, progress=False)  # the lock was released: the grid resumes
    assert len(pd.read_csv(out / "results.csv")) == 4


def test_cli_exits_2_after_writing_everything_when_a_cell_failed(tmp_path):
    config = write(tmp_path, GRID.replace(", test-flaky", ""))
    out = tmp_path / "exp"
    result = subprocess.run(cli(config, out), capture_output=True, text=True, timeout=600)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "1 of 4 cells failed" in result.stderr
    assert "refused 1 cell before training: budget 100 exceeds the 42 training examples" in result.stdout
    assert (out / "report.html").is_file() and len(pd.read_csv(out / "results.csv")) == 4


def test_a_grid_whose_target_files_changed_is_refused_not_resumed_with_stale_cells(tmp_path):
    """Finished cells record their target's content fingerprint; a re-run after the folder's images changed
    would report their old numbers beside new ones, so it is refused before the folder is touched."""
    import yaml
    from PIL import Image

    from medtransfer.api import experiment
    from test_feature_cache import write_images

    write_images(tmp_path / "images")
    grid = {"name": "drift", "targets": [f"folder:{tmp_path / 'images'}"], "strategies": ["scratch"],
            "backbones": ["test_resnet"], "budgets": ["all"], "seeds": 1, "n_boot": 10,
            "train": {"epochs": 1, "image_size": 16}}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    out = experiment(path, out=tmp_path / "grid", progress=False, report=False)
    experiment(path, out=out, progress=False, report=False)  # unchanged data: resumed, nothing to run
    before = (out / "results.csv").read_bytes()
    Image.new("L", (16, 16), 7).save(tmp_path / "images" / "a" / "new.png")
    with pytest.raises(MedTransferError, match=r"content fingerprint\) changed since finished cells of this folder"):
        experiment(path, out=out, progress=False, report=False)
    assert (out / "results.csv").read_bytes() == before
    experiment(path, out=out, progress=False, report=False, overwrite=True)  # every cell again, on the new data
    assert (out / "results.csv").read_bytes() != before
