"""Each extension point is one registration and nothing else: a throw-away dataset scheme, backbone
kind, strategy and metric, all registered here in the test module, run end to end through mt.transfer
(and back in through a run folder as a source)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import medtransfer as mt
from medtransfer.data import LOADERS, Split, TaskDataset, register_scheme
from medtransfer.evaluation import METRICS, register_metric
from medtransfer.models.backbones import create_model
from medtransfer.models.kinds import KINDS, BackboneKind, register_kind
from medtransfer.strategies import STRATEGIES, Strategy, TransferContext, register


def blobs(arg: str, options) -> TaskDataset:
    """`toy:<n>`: two Gaussian blobs in 6 dimensions, n rows per split, seeded by the split seed."""
    rng = np.random.default_rng(options.split_seed)
    n = int(arg)

    def split():
        y = rng.integers(0, 2, n)
        x = rng.normal(size=(n, 6)) + 1.5 * y[:, None]
        return Split(torch.tensor(x, dtype=torch.float32), torch.tensor(y))

    names = [f"f{j}" for j in range(6)]
    return TaskDataset(f"toy:{arg}", "tabular", "binary", ["no", "yes"], split(), split(), split(),
                       info={"features": names, "split_seed": options.split_seed})


class Gated(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.layer = nn.Linear(width, hidden)

    def forward(self, x):
        return torch.tanh(self.layer(x)) * torch.sigmoid(x.sum(1, keepdim=True))


class GatedKind(BackboneKind):
    name = "gated"
    modality = "tabular"

    def claims(self, name: str) -> bool:
        return name.startswith("gated:")

    def describe(self, name: str, channels: int, n_features: int) -> dict:
        return {"kind": "gated", "name": name, "in_features": n_features, "hidden": int(name.partition(":")[2])}

    def build(self, architecture: dict):
        return Gated(architecture["in_features"], architecture["hidden"]), architecture["hidden"]


class RetrainEverything(Strategy):
    name = "toy-retrain"
    summary = "a new model of the run's architecture, every parameter trained"
    needs_source_model = False

    def run(self, ctx: TransferContext):
        torch.manual_seed(ctx.config.seed)
        model = create_model(ctx.architecture, ctx.spec, ctx.target.num_outputs)
        return ctx.fit(model, [{"params": model.parameters()}])


def positive_share(c):
    """Share of resampled test examples predicted positive."""
    return (c.w @ c.pred.astype(float)) / c.n


@pytest.fixture
def registered():
    register_scheme("toy", help="two Gaussian blobs, toy:<rows per split>")(blobs)
    register_kind(GatedKind)
    register(RetrainEverything)
    register_metric("positive_share", tasks=("binary",))(positive_share)
    yield
    for registry, name in ((LOADERS, "toy"), (KINDS, "gated"), (STRATEGIES, "toy-retrain"),
                           (METRICS, "positive_share")):
        registry.pop(name, None)


def test_one_registration_each_runs_end_to_end(registered, tmp_path):
    run = mt.transfer("toy:300", "toy-retrain", backbone="gated:8", budget=100, out=tmp_path / "toy", epochs=30,
                      progress=False, n_boot=50)
    test = run.metrics["test"]
    assert run.config["architecture"]["kind"] == "gated"
    assert test["auc"]["value"] > 0.85  # two well separated blobs
    share = test["positive_share"]
    assert 0.2 < share["value"] < 0.8 and share["ci"][0] <= share["value"] <= share["ci"][1]

    # the run is a source like any other: its gated backbone is rebuilt from model.json by the registry
    head = mt.transfer("toy:300", "head", source=str(run.out), budget=50, split_seed=1, save=False, progress=False,
                       n_boot=0)
    assert head.metrics["test"]["auc"]["value"] > 0.85
    assert mt.evaluate(run.out, n_boot=0)["auc"]["value"] == pytest.approx(test["auc"]["value"], abs=1e-6)
