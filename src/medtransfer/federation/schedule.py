"""The whole federated experiment as one Flower run, so that the simulation engine starts Ray once and
each client process connects once.

`Schedule` is a Flower `Strategy` whose rounds are steps: one statistics round (the shared encoding,
`sites.merge_statistics`), then for every (strategy, seed) its federation's rounds and one personalisation
round. A federation's rounds are delegated to Flower's own strategy object (`FedAvg`, `FedProx`,
`FedAdam` from `flwr.server.strategy`: their client sampling, configuration, weighted averaging and server
optimiser), one fresh object per federation. After each round Flower's federated evaluation averages the
sites' validation losses; the round with the lowest is the federation's model, and the personalisation
round sends it to every site. Results are sorted by site before they are aggregated, so the sum runs in
the same order whichever client answered first.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from flwr.common import FitIns, Parameters, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.strategy import FedAdam, FedAvg, FedProx, Strategy

from ..data.tabular import TabularEncoder
from ..errors import MedTransferError
from ..progress import Task
from ..training.privacy import NONE, parse_dp
from .sites import merge_statistics


PERSONALISED = "+personalised"  # a federated method's name after each site's fine-tuning


@dataclass
class Federation:
    """One (strategy, dp level, seed) federation and what it produced."""
    strategy: str
    seed: int
    dp: str = NONE  # the config's dp level (a --dp value) every site trains under, or none
    flower: Strategy | None = None  # Flower's strategy object, built once the encoding is known
    parameters: Parameters | None = None
    best_round: int = 0
    best_loss: float = float("inf")
    best_parameters: Parameters | None = None
    history: list[dict] = field(default_factory=list)  # per round: train loss, validation loss (site-weighted)
    predictions: dict[str, list[np.ndarray]] = field(default_factory=dict)  # site -> [val, test(, val, test)]
    personalised_epoch: dict[str, int] = field(default_factory=dict)
    privacy: dict[str, dict] = field(default_factory=dict)  # site -> its DP-SGD record after the last round
    personalised_privacy: dict[str, dict] = field(default_factory=dict)  # site -> after its personalisation

    def method(self, personalised: bool = False) -> str:
        """The name in results.csv and the report: fedavg, fedavg+personalised, fedavg · DP ε=1, ..."""
        dp = parse_dp(self.dp, flag="dp")
        return self.strategy + (PERSONALISED if personalised else "") + (f" · DP {dp.label()}" if dp else "")

    @property
    def name(self) -> str:
        return f"{self.method()}/seed{self.seed}"

    @property
    def folder(self) -> str:
        """Its checkpoint folder's name: fedavg-seed0, fedavg-dp-epsilon-1-seed0."""
        level = "" if self.dp == NONE else "-dp-" + re.sub(r"[^A-Za-z0-9.]+", "-", self.dp).strip("-")
        return f"{self.strategy}{level}-seed{self.seed}"

    def weights(self) -> list[np.ndarray]:
        return parameters_to_ndarrays(self.best_parameters)


def weighted(key: str) -> Callable:
    """Flower's metrics aggregation: the examples-weighted mean of `key` over the sites that sent it."""
    def aggregate(metrics: list[tuple[int, dict]]) -> dict:
        pairs = [(n, m[key]) for n, m in metrics if key in m]
        total = sum(n for n, _ in pairs)
        return {key: sum(n * v for n, v in pairs) / total} if total else {}
    return aggregate


def flower_strategy(name: str, n_sites: int, initial: Parameters, fit_config: Callable, evaluate_config: Callable,
                    settings: dict) -> Strategy:
    """Flower's strategy `name`, waiting for every site and sampling all of them in every round."""
    common = dict(fraction_fit=1.0, fraction_evaluate=1.0, min_fit_clients=n_sites, min_evaluate_clients=n_sites,
                  min_available_clients=n_sites, on_fit_config_fn=fit_config, on_evaluate_config_fn=evaluate_config,
                  accept_failures=False, initial_parameters=initial,
                  fit_metrics_aggregation_fn=weighted("train_loss"))
    if name not in FLOWER_STRATEGIES:
        raise MedTransferError(f"unknown federated strategy {name!r}; choose {', '.join(FLOWER_STRATEGIES)}")
    return FLOWER_STRATEGIES[name](common, settings)


# config.STRATEGIES -> Flower's strategy, from the arguments every strategy shares and the run's settings
FLOWER_STRATEGIES: dict[str, Callable[[dict, dict], Strategy]] = {
    "fedavg": lambda common, settings: FedAvg(**common),
    "fedprox": lambda common, settings: FedProx(**common, proximal_mu=settings["proximal_mu"]),
    # Adam on the server (beta_1 0.9, beta_2 0.99); eta_l is informational in Flower
    "fedadam": lambda common, settings: FedAdam(**common, eta=settings["server_lr"], eta_l=settings["lr"],
                                                tau=settings["server_tau"]),
}


class Schedule(Strategy):
    """See the module docstring. `initial(seed, encoder) -> (architecture, arrays)` gives each federation's
    starting model; `encoder` given (a source's) skips the statistics round; `settings` are the training
    settings sent to the clients (epochs, lr, batch_size, weight_decay, personalise_epochs, personalise_lr,
    patience, rounds) and the strategies' own (proximal_mu, server_lr, server_tau)."""

    def __init__(self, sites: list[str], federations: list[Federation], rounds: int, settings: dict,
                 initial: Callable, encoder: TabularEncoder | None = None, progress: Task | None = None):
        super().__init__()
        self.sites, self.federations, self.settings, self.initial = list(sites), federations, settings, initial
        self.progress = progress or Task()
        self.encoder = encoder
        self.architecture: dict | None = None
        self.steps = [] if encoder is not None else [("statistics", None, 0)]
        for federation in federations:
            self.steps += [("train", federation, r) for r in range(1, rounds + 1)] + [("personalise", federation, 0)]
        self.received: list[dict] = []  # what every client sent: step, site, array shapes, metric keys
        self.statistics: list[dict] = []
        if encoder is not None:
            self.build()

    @property
    def rounds(self) -> int:
        return len(self.steps)

    # ------------------------------------------------------------------ Flower's Strategy interface

    def initialize_parameters(self, client_manager):
        return ndarrays_to_parameters([])  # each federation starts from its own weights (see `build`)

    def configure_fit(self, server_round, parameters, client_manager):
        kind, federation, r = self.steps[server_round - 1]
        self.progress.update(self.describe(server_round))
        if kind == "train":
            return federation.flower.configure_fit(r, federation.parameters, client_manager)
        clients = client_manager.sample(num_clients=len(self.sites), min_num_clients=len(self.sites))
        if kind == "statistics":
            return [(c, FitIns(ndarrays_to_parameters([]), {"phase": "statistics"})) for c in clients]
        config = self.config("personalise", federation, 0)
        return [(c, FitIns(federation.best_parameters, config)) for c in clients]

    def aggregate_fit(self, server_round, results, failures):
        kind, federation, r = self.steps[server_round - 1]
        results = self.check(kind, results, failures)
        arrays = {self.site(res): parameters_to_ndarrays(res.parameters) for _, res in results}
        self.record(kind, results, arrays)
        if kind == "statistics":
            self.statistics = [json.loads(res.metrics["statistics"]) for _, res in results]
            self.encoder = merge_statistics(self.statistics)
            self.build()
            self.progress.update(advance=1)
            return None, {}
        if kind == "personalise":
            federation.predictions = arrays
            federation.personalised_epoch = {self.site(res): res.metrics["personalised_epoch"] for _, res in results
                                             if "personalised_epoch" in res.metrics}
            federation.personalised_privacy = privacy_records(results, self.site)
            self.progress.update(advance=1)
            return None, {}
        federation.privacy.update(privacy_records(results, self.site))  # the last round's: all rounds spent
        federation.parameters, metrics = federation.flower.aggregate_fit(r, results, [])
        federation.history.append({"round": r, "train_loss": metrics.get("train_loss")})
        return federation.parameters, metrics

    def configure_evaluate(self, server_round, parameters, client_manager):
        kind, federation, r = self.steps[server_round - 1]
        if kind != "train":
            return []
        return federation.flower.configure_evaluate(r, federation.parameters, client_manager)

    def aggregate_evaluate(self, server_round, results, failures):
        kind, federation, r = self.steps[server_round - 1]
        results = self.check("validate", results, failures)
        self.record("validate", results, {})
        loss, metrics = federation.flower.aggregate_evaluate(r, results, [])
        federation.history[-1]["val_loss"] = loss
        if loss < federation.best_loss:
            federation.best_round, federation.best_loss, federation.best_parameters = r, loss, federation.parameters
        self.progress.update(advance=1)
        return loss, metrics

    def evaluate(self, server_round, parameters):
        return None  # no central data: every evaluation is at the sites

    # ------------------------------------------------------------------ the schedule's own bookkeeping

    def build(self) -> None:
        """Each federation's Flower strategy, starting from its initial weights, once the encoding is known."""
        for federation in self.federations:
            self.architecture, arrays = self.initial(federation.seed, self.encoder)
            federation.parameters = federation.best_parameters = ndarrays_to_parameters(arrays)
            federation.flower = flower_strategy(
                federation.strategy, len(self.sites), federation.parameters,
                lambda r, f=federation: self.config("train", f, r),
                lambda r, f=federation: self.config("validate", f, r), self.settings)

    def config(self, phase: str, federation: Federation, round_: int) -> dict:
        """The instruction's config: the phase, the shared encoding and architecture, the training settings."""
        keys = ("epochs", "lr", "batch_size", "weight_decay", "personalise_epochs", "personalise_lr", "patience",
                "rounds")
        return {"phase": phase, "round": round_, "seed": federation.seed, "dp": federation.dp,
                "encoder": json.dumps(self.encoder.to_dict()),
                "architecture": json.dumps(self.architecture), **{k: self.settings[k] for k in keys}}

    def site(self, res) -> str:
        return str(res.metrics.get("site"))

    def check(self, kind: str, results, failures) -> list:
        """Every site answered, once, and none failed; results in site order."""
        if failures:
            failure = failures[0]
            reason = failure if isinstance(failure, BaseException) else failure[1].status.message
            raise MedTransferError(f"federated {kind} step: a site's Flower client failed ({reason}); run the site "
                                   "alone (medtransfer transfer --data SITE) to see its error")
        answered = sorted(self.site(res) for _, res in results)
        if answered != sorted(self.sites):
            raise MedTransferError(f"federated {kind} step: the sites that answered ({', '.join(answered)}) are not "
                                   f"the configured ones ({', '.join(self.sites)})")
        return sorted(results, key=lambda pair: self.sites.index(self.site(pair[1])))

    def record(self, kind: str, results, arrays: dict) -> None:
        for _, res in results:
            site = self.site(res)
            self.received.append({"step": kind, "site": site, "arrays": [list(a.shape) for a in arrays.get(site, [])],
                                  "metrics": sorted(res.metrics)})

    def describe(self, server_round: int) -> str:
        kind, federation, r = self.steps[server_round - 1]
        if kind == "statistics":
            return "federated statistics (shared encoding)"
        if kind == "personalise":
            return f"{federation.name}: personalisation at each site"
        return f"{federation.name}: round {r}"


def privacy_records(results, site) -> dict[str, dict]:
    """site -> the DP-SGD record its client sent (`PrivateTraining.record`), for the sites that trained with DP."""
    return {site(res): json.loads(res.metrics["dp"]) for _, res in results if "dp" in res.metrics}
