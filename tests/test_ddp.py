"""Data-parallel training (`--devices N`, Lightning Fabric DDP, gloo on CPU): two processes train what
one does, write one run folder, and refuse (one line, exit 2) what they cannot train the same way.

Each launch starts two fresh interpreters (importing Lightning and medtransfer: most of a test's time),
so the file holds two launches: the heart transfer and a rank that fails."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import pytest

import medtransfer as mt
from medtransfer.errors import MedTransferError
from medtransfer.training import distributed

HEART = dict(data="heart:hungary", strategy="full", source="heart:cleveland", seed=0, n_boot=0, progress=False)


def scratch_folders() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("medtransfer-ddp-*"))


def test_two_processes_train_as_one_and_write_one_run_folder(tmp_path):
    cache = Path(os.environ["MEDTRANSFER_CACHE"]) / "sources"
    before_cache = set(cache.glob("*")) if cache.is_dir() else set()
    before_scratch = scratch_folders()
    one = mt.transfer(**HEART, out=tmp_path / "one" / "run")
    two = mt.transfer(**HEART, out=tmp_path / "two" / "run", devices=2)

    # rank 0's result comes back; rank 1 wrote nothing: one run folder, no stray staging, no scratch left
    assert two.out == tmp_path / "two" / "run"
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["run"]
    assert scratch_folders() == before_scratch
    new_cache = set(cache.glob("*")) - before_cache  # sources (the key covers the devices) and their locks only
    assert new_cache and all((p / "model.json").is_file() or p.suffix == ".lock" for p in new_cache), new_cache
    assert two.config["source_description"] != one.config["source_description"]  # 2-device source, cached apart
    # the same training, split over two processes: the test AUC agrees with the one-process run
    auc1, auc2 = one.metrics["test"]["auc"]["value"], two.metrics["test"]["auc"]["value"]
    assert abs(auc1 - auc2) <= 0.02, (auc1, auc2)
    saved = json.loads((two.out / "metrics.json").read_text())
    assert saved["test"]["auc"]["value"] == pytest.approx(auc2)
    config = json.loads((two.out / "config.json").read_text())
    assert config["train"]["devices"] == 2 and config["train"]["num_nodes"] == 1
    assert config["data_parallel"]["strategy"] == "ddp" and config["data_parallel"]["world_size"] == 2
    assert config["data_parallel"]["backend"] == "gloo"
    assert json.loads((two.out / "model.json").read_text())["provenance"]["data_parallel"]["world_size"] == 2
    assert "data_parallel" not in one.config and one.config["train"]["devices"] == 1
    assert two.metrics["fit"]["epochs_run"] >= 1 and len(two.predictions) == len(one.predictions)


def rank_one_fails():
    """Rank 1 raises while rank 0 waits for it in a collective: the launch must end, not hang."""
    if distributed.rank() == 1:
        raise MedTransferError("rank one cannot go on")
    distributed.agree("rank 0 waits here for rank 1")
    return "rank 0 should have been stopped"


def test_a_failing_rank_ends_the_launch_with_its_one_line_error():
    with pytest.raises(MedTransferError, match="^rank one cannot go on$"):
        distributed.launch(rank_one_fails, devices=2, accelerator="cpu")


def test_cli_refuses_a_strategy_that_cannot_train_data_parallel(tmp_path, monkeypatch, capsys):
    """One line, exit 2, before any process starts or anything is written."""
    from medtransfer import cli

    out = tmp_path / "run"
    monkeypatch.setattr(sys, "argv", ["medtransfer", "transfer", "--data", "heart:hungary", "--source",
                                      "heart:cleveland", "--strategy", "linear-probe", "--devices", "2",
                                      "--out", str(out), "--quiet"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "--devices 2: strategy 'linear-probe' cannot train data-parallel" in err and "full" in err
    assert not out.exists()


@pytest.mark.parametrize("options, message", [
    (dict(strategy="coral", budget=0), "strategy 'coral' cannot train data-parallel"),
    (dict(strategy="full", dp="epsilon=1"), "--dp (DP-SGD) runs on one device"),
    (dict(strategy="full", compile=True), "--compile runs on one device"),
    (dict(strategy="full", batch_size=3), "--batch-size 3 is the global batch"),
    (dict(strategy="full", devices=0), "devices must be an integer >= 1"),
    (dict(strategy="full", num_nodes=2), "--num-nodes 2: set MASTER_ADDR"),
])
def test_what_cannot_train_data_parallel_is_refused_before_launch(tmp_path, monkeypatch, options, message):
    for name in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK"):
        monkeypatch.delenv(name, raising=False)
    options = {"devices": 2, **options}
    with pytest.raises(MedTransferError, match=message.replace("(", r"\(").replace(")", r"\)")):
        mt.transfer("heart:hungary", source="heart:cleveland", out=tmp_path / "run", progress=False, **options)
    assert not (tmp_path / "run").exists()


def test_more_gpus_than_the_machine_has_is_refused(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(MedTransferError, match="has 1 CUDA GPU"):
        distributed.check_devices(2, 1, "cuda")
    distributed.check_devices(1, 1, "cuda")  # one device: nothing to check
    with pytest.raises(MedTransferError, match="MPS has no data-parallel"):
        distributed.check_devices(2, 1, "mps")


def test_ssl_methods_declare_data_parallel_and_the_tags_decide():
    from medtransfer.pipeline.parallel import check_data_parallel_method
    from medtransfer.pipeline.request import TrainOptions
    from medtransfer.ssl import METHODS
    from medtransfer.strategies import STRATEGIES

    assert {n for n, cls in STRATEGIES.items() if cls.data_parallel} >= {"full", "head", "partial", "scratch",
                                                                           "l2-sp", "lp-ft", "auto"}
    assert not any(STRATEGIES.lookup(n).data_parallel for n in ("linear-probe", "target-only", "coral", "mmd", "dann"))
    assert all(cls.data_parallel for cls in METHODS.values())  # SimCLR, MoCo: negatives gathered across ranks

    class Unsharded:
        name, data_parallel = "unsharded", False
    with pytest.raises(MedTransferError, match="--method unsharded cannot pretrain data-parallel"):
        check_data_parallel_method(Unsharded, TrainOptions(devices=2))
    check_data_parallel_method(Unsharded, TrainOptions())
