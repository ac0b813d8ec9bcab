"""Federated transfer with Flower on the four built-in heart hospitals.

One tiny FedAdam run, without DP and with DP-SGD at every site, in Flower's simulation engine (Ray) and the same run with one client process per site
over gRPC on 127.0.0.1 (module fixture: Ray and the client processes start once each; FedAdam, since its
server optimiser carries state from round to round): the simulation writes its report, the real processes
give the same weights and predictions, and what the clients sent holds weights, aggregate statistics and
probabilities, never a row. FedProx's client-side term, the shared encoding, a source model's start and
the config are checked without Flower.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from medtransfer.errors import MedTransferError
from medtransfer.federation import load_federated_config
from medtransfer.federation.sites import STATISTICS_KEYS, SiteData, merge_statistics, raw_rows, site_statistics

SITES = ["heart:cleveland", "heart:hungary", "heart:switzerland", "heart:va"]
TINY = f"""name: tiny
sites: [{', '.join(SITES)}]
strategies: [fedadam]
backbone: mlp
rounds: 2
local_epochs: 1
epochs: 2
personalise_epochs: 2
seeds: [3]
n_boot: 20
dp: [none, "epsilon=3"]
"""
EPSILON = 3
TOLERANCE = 0.02  # the PRV accountant's estimate, within Opacus's eps_error


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(simulation result, gRPC result) of the same config and seed."""
    import medtransfer as mt

    folder = tmp_path_factory.mktemp("federated")
    config = folder / "tiny.yaml"
    config.write_text(TINY)
    simulation = mt.federated(config, out=folder / "simulation", engine="simulation", progress=False)
    grpc = mt.federated(config, out=folder / "grpc", engine="grpc", progress=False, report=False)
    return simulation, grpc


def test_simulation_writes_results_and_report(runs):
    simulation, _ = runs
    out = simulation.out
    results = pd.read_csv(out / "results.csv")
    methods = {"local", "pooled", "fedadam", "fedadam+personalised", "fedadam · DP ε=3",
               "fedadam+personalised · DP ε=3"}
    assert set(results["method"]) == methods
    assert len(results) == len(methods) * len(SITES)  # one row per site x method x seed
    assert results[["auc", "acc_at_0.5", "acc"]].apply(lambda c: c.between(0, 1)).all().all()
    report = (out / "report.md").read_text()
    assert "FLamby" in report and "0.685" in report and all(f"### {site}" in report for site in SITES)
    assert "Δ AUC vs local" in report and "Δ AUC vs pooled" in report
    assert "Privacy-utility curve" in report and "| fedadam | ε=3 |" in report
    assert '<img class="plot"' in (out / "report.html").read_text()  # the validation-loss plot, embedded
    summary = json.loads((out / "federation.json").read_text())
    assert summary["engine"] == "simulation" and summary["encoding"] == "federated statistics"
    assert all(1 <= f["selected_round"] <= 2 for f in summary["federations"])
    import medtransfer as mt
    predicted = mt.predict(out / "models" / "fedadam-seed3", "heart:va")  # a federated model is an ordinary run
    assert len(predicted) > 0
    assert len(mt.predict(out / "models" / "fedadam-dp-epsilon-3-seed3", "heart:va")) == len(predicted)


def test_dp_sites_spend_at_most_the_target_epsilon_over_all_their_training(runs):
    """Every DP site's accountant: the rounds the server saw spend part of the budget, the personalisation
    the rest; the plain federation records none; results.csv, federation.json and model.json say so."""
    simulation, grpc = runs
    plain, private = simulation.federations
    assert plain.privacy == {} and private.dp == "epsilon=3" and set(private.privacy) == set(SITES)
    for site in SITES:
        rounds, personalised = private.privacy[site], private.personalised_privacy[site]
        n = len(SiteData(site).load().train)
        steps_per_epoch = -(-n // 32)  # ceil: the default batch of 32
        assert rounds["steps"] == 2 * steps_per_epoch and rounds["planned_steps"] == 4 * steps_per_epoch
        assert rounds["n_private"] == n and rounds["noise_multiplier"] == personalised["noise_multiplier"]
        assert 0 < rounds["epsilon_spent"] < personalised["epsilon_spent"] <= EPSILON + TOLERANCE
        assert personalised["steps_before"] == 2 * steps_per_epoch
    results = simulation.results
    dp_rows = results[results["dp"] == "epsilon=3"]
    assert len(dp_rows) == 2 * len(SITES) and dp_rows["epsilon"].between(0, EPSILON + TOLERANCE).all()
    assert results.loc[results["dp"] == "none", "epsilon"].isna().all()
    meta = json.loads((simulation.out / "models" / "fedadam-dp-epsilon-3-seed3" / "model.json").read_text())
    assert meta["provenance"]["dp"]["heart:va"]["epsilon_spent"] == private.privacy["heart:va"]["epsilon_spent"]
    assert grpc.federations[1].privacy == private.privacy  # the client processes count the same steps


def test_client_processes_over_grpc_match_the_simulation(runs):
    simulation, grpc = runs
    assert [f.name for f in grpc.federations] == [f.name for f in simulation.federations]
    for fed_sim, fed_grpc in zip(simulation.federations, grpc.federations):
        assert fed_sim.best_round == fed_grpc.best_round
        for a, b in zip(fed_sim.weights(), fed_grpc.weights()):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    prob = [c for c in simulation.predictions.columns if c.startswith("prob_")]
    np.testing.assert_allclose(simulation.predictions[prob].to_numpy(), grpc.predictions[prob].to_numpy(), atol=1e-6)
    assert json.loads((grpc.out / "federation.json").read_text())["engine"] == "grpc"


def test_clients_send_weights_statistics_and_probabilities_never_rows(runs):
    simulation, grpc = runs
    sites = {s: SiteData(s).load() for s in SITES}
    for result in (simulation, grpc):
        shapes = [list(a.shape) for a in result.federations[0].weights()]
        steps = {entry["step"] for entry in result.received}
        assert steps == {"statistics", "train", "validate", "personalise"}
        for entry in result.received:
            data = sites[entry["site"]]
            if entry["step"] == "train":  # with DP: the accountant's record too
                assert entry["arrays"] == shapes and entry["metrics"] in (["site", "train_loss"],
                                                                          ["dp", "site", "train_loss"])
            elif entry["step"] == "statistics":
                assert entry["arrays"] == [] and entry["metrics"] == ["site", "statistics"]
            elif entry["step"] == "validate":
                assert entry["arrays"] == [] and entry["metrics"] == ["site"]
            else:  # class probabilities of the global and the personalised model, one row per patient
                split = [[len(data.val), 2], [len(data.test), 2]]
                assert entry["arrays"] == split * 2 and entry["metrics"] in (["personalised_epoch", "site"],
                                                                             ["dp", "personalised_epoch", "site"])
        for stats in result.summary["statistics"]:  # what the statistics messages held, as sent
            assert set(stats) == set(STATISTICS_KEYS) and stats["n"] == len(sites[stats["site"]].train)
            assert all(len(v) == 3 for v in stats["numeric"].values())  # count, mean, squared deviations
            assert all(isinstance(level, str) for levels in stats["categorical"].values() for level in levels)


def test_fedprox_term_pulls_a_site_towards_the_global_weights():
    """The client adds mu/2 ||w - w_global||^2 when the server's config carries FedProx's proximal_mu."""
    from medtransfer.federation.client import SiteClient
    from medtransfer.federation.model import architecture_for, build_model, to_arrays

    site = SiteData("heart:va")
    encoder = merge_statistics([site_statistics(site), site_statistics(SiteData("heart:hungary"))])
    architecture = architecture_for("linear", encoder)
    start = to_arrays(build_model(architecture, encoder, 2, seed=0))
    config = {"phase": "train", "round": 1, "seed": 0, "encoder": json.dumps(encoder.to_dict()),
              "architecture": json.dumps(architecture), "epochs": 3, "lr": 0.05, "batch_size": 16,
              "weight_decay": 0.0}

    def moved(**extra) -> float:
        arrays, n, metrics = SiteClient(site).fit(start, {**config, **extra})
        assert n == len(site.load().train) and metrics["site"] == "heart:va"
        return float(sum(np.square(a - b).sum() for a, b in zip(arrays, start)))

    plain, proximal = moved(), moved(proximal_mu=50.0)
    assert plain == pytest.approx(moved(proximal_mu=0.0))  # no term without mu
    assert proximal < 0.5 * plain


def test_merged_encoding_is_the_pooled_training_rows_statistics():
    """What the server builds from the sites' aggregates equals statistics of their training rows pooled."""
    sites = [SiteData(s) for s in SITES]
    encoder = merge_statistics([site_statistics(s) for s in sites])
    rows = []
    for site in sites:
        frame, ids = raw_rows(site)
        train = set(site.load().train.ids)
        rows.append(frame[[i in train for i in ids]])
    pooled = pd.concat(rows)
    for col, (impute, mean, std) in encoder.numeric.items():
        values = pooled[col].astype(float)
        filled = values.fillna(values.mean())
        assert impute == pytest.approx(values.mean()) and mean == pytest.approx(filled.mean())
        assert std == pytest.approx(filled.std(ddof=0))
    assert encoder.categorical["cp"][:-1] == sorted(pooled["cp"].dropna().astype(str).unique())
    assert encoder.numeric["chol"][0] != 0  # Switzerland measured no cholesterol: the others' mean, not 0
    data = sites[2].load(encoder)  # every site encodes to the same columns
    assert data.train.x.shape[1] == len(encoder.feature_names) == sites[0].load(encoder).train.x.shape[1]


@pytest.mark.parametrize("text, fragment", [
    ("name: x\nsites: [heart:va]\n", "at least 2"),
    ("name: x\nsites: [heart:va, medmnist:breastmnist]\n", "not a table"),
    ("name: x\nsites: [heart:va, heart:hungary]\nstrategies: [fedsgd]\n", "fedsgd"),
    ("name: x\nsites: [heart:va, csv:a.csv]\n", "target_column"),
    ("name: x\nsites: [heart:va, heart:hungary]\nbackbone: resnet18\n", "resnet18"),
    ("name: x\nsites: [heart:va, heart:hungary]\nround: 3\n", "unknown key 'round'"),
    ("name: x\nsites: [heart:va, heart:hungary]\ndp: [none, epsilon=1]\n", "fedprox cannot train with dp"),
    ("name: x\nsites: [heart:va, heart:hungary]\nstrategies: [fedavg]\ndp: epsilon=-1\n", "epsilon must be"),
    ("name: x\nsites: [heart:va, heart:hungary]\nstrategies: [fedavg]\ndp: [epsilon=1, epsilon=1.0]\n",
     "the same setting twice"),
])
def test_bad_config_is_one_clear_error(tmp_path, text, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(MedTransferError, match=fragment.replace("(", r"\(")):
        load_federated_config(path)


def test_bad_config_on_the_command_line_exits_2(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nsites: [heart:va, heart:mars]\nrounds: 1\nseeds: 1\n")
    done = subprocess.run([sys.executable, "-m", "medtransfer.cli", "federated", str(path), "--out",
                           str(tmp_path / "out"), "--quiet"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "mars" in lines[0]
    assert not (tmp_path / "out").exists()


def test_a_source_model_fixes_the_encoding_and_starts_every_model():
    """With a source the sites use its encoding (no statistics round) and every federation, every local and
    pooled reference starts from its weights; the source itself is scored at each site as it is."""
    from medtransfer.federation import FederatedConfig
    from medtransfer.federation.references import source_only
    from medtransfer.federation.run import resolve_start

    config = FederatedConfig(name="s", sites=["heart:hungary", "heart:va"], source="heart:cleveland",
                             source_epochs=3, backbone="linear")
    site = SiteData("heart:hungary")
    start, encoder, note = resolve_start(config, site, site.load())
    assert "heart:cleveland" in note
    assert encoder.to_dict() == SiteData("heart:cleveland").load().encoder.to_dict()
    (arch_a, a), (arch_b, b) = start(0, encoder), start(1, encoder)
    assert arch_a == arch_b == start.source.architecture and arch_a["name"] == "linear"
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    datasets = {s: SiteData(s).load(encoder) for s in config.sites}
    predictions = source_only(datasets, start, encoder)
    assert predictions["heart:va"][1].shape == (len(datasets["heart:va"].test), 2)


def test_the_example_configs_load():
    from pathlib import Path
    examples = Path(__file__).parent.parent / "examples"
    config, _ = load_federated_config(examples / "heart-federated.yaml")
    assert len(config.sites) == 4 and config.strategies == ["fedavg", "fedprox", "fedadam"]
    config, _ = load_federated_config(examples / "heart-federated-dp.yaml")
    assert config.dp == ["none", "epsilon=0.5", "epsilon=1", "epsilon=3", "epsilon=8"]


def test_every_config_strategy_is_a_flower_strategy():
    from medtransfer.federation.config import STRATEGIES
    from medtransfer.federation.schedule import FLOWER_STRATEGIES
    assert tuple(FLOWER_STRATEGIES) == STRATEGIES
