"""A site's Flower client (a `NumPyClient`): the only code that reads the site's rows.

What it sends back, by the `phase` the server puts in each instruction:
- statistics: aggregates of its training split for the shared encoding (`sites.site_statistics`), no arrays;
- train: its weights after `epochs` of the one training loop from the global weights (FedProx: plus the
  proximal term mu/2 ||w - w_global||^2 through the loop's `extra_loss`), and its training-set size;
- personalise: the global model fine-tuned on its own training split (early stopping on its validation
  split, the global weights kept when no epoch beats them), and the class probabilities of the global and
  the personalised model on its validation and test splits. The personalised weights stay at the site.
`evaluate` returns the validation loss of the global weights: the server picks the round with the lowest.

With a dp level, every training of the site's rows is DP-SGD (Opacus) under one guarantee: the noise is
calibrated for all of them (rounds x local epochs, then the personalisation epochs), each round is charged
the rounds before it, and the client sends its accountant's record with the weights ("dp" in the metrics).
So the federated model the server saw after every round, and the personalised model, are each within the
target epsilon for the site's training examples. Not covered, as in `training/privacy.py`: the validation
split (round selection, early stopping, threshold), the statistics round, and the probabilities sent for
the report.
"""

from __future__ import annotations

import json

import torch
from flwr.client import NumPyClient

from ..data.tabular import TabularEncoder
from ..errors import MedTransferError
from ..training.loop import fit
from ..training.privacy import DPSchedule, parse_dp
from .model import build_model, load_arrays, local_seed, log_loss, probabilities, to_arrays, train_config
from .sites import SiteData, cached_load, site_statistics


def no_monitor(model) -> None:
    """A local round keeps its last epoch: no validation score (the server selects rounds on validation)."""
    return None


def proximal_term(model: torch.nn.Module, mu: float):
    """FedProx's mu/2 ||w - w_global||^2, with w_global the weights the round started from."""
    anchor = [p.detach().clone() for p in model.parameters()]

    def term() -> torch.Tensor:
        return mu / 2 * sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor))
    return term


class SiteClient(NumPyClient):
    def __init__(self, site: SiteData):
        self.site = site

    def get_parameters(self, config):
        return []  # the server always sends the weights it starts from

    def data(self, config):
        return cached_load(self.site.to_json(), config["encoder"])

    def model(self, parameters, config, data):
        encoder = TabularEncoder.from_dict(json.loads(config["encoder"]))
        model = build_model(json.loads(config["architecture"]), encoder, data.num_outputs)
        load_arrays(model, parameters)
        return model

    def fit(self, parameters, config):
        phase = config.get("phase")
        if phase == "statistics":
            stats = site_statistics(self.site)
            return [], stats["n"], {"site": self.site.spec, "statistics": json.dumps(stats)}
        data = self.data(config)
        model = self.model(parameters, config, data)
        groups = [{"params": list(model.parameters())}]
        if phase == "train":
            settings = train_config(int(config["epochs"]), float(config["lr"]), int(config["batch_size"]),
                                    float(config["weight_decay"]),
                                    local_seed(int(config["seed"]), int(config["round"]), self.site.spec))
            mu = float(config.get("proximal_mu", 0.0))
            before = (int(config["round"]) - 1) * int(config["epochs"])
            result = fit(model, groups, data.train, data.val, data.task, "tabular", settings,
                         extra_loss=proximal_term(model, mu) if mu > 0 else None, score_fn=no_monitor,
                         **private(config, before))
            metrics = {"site": self.site.spec, "train_loss": float(result.history[-1]["train_loss"])}
            return to_arrays(model), len(data.train), {**metrics, **privacy_metric(result)}
        if phase == "personalise":
            arrays = [probabilities(model, data.val, data.task), probabilities(model, data.test, data.task)]
            metrics = {"site": self.site.spec}
            epochs = int(config["personalise_epochs"])
            if epochs > 0:
                settings = train_config(epochs, float(config["personalise_lr"]), int(config["batch_size"]),
                                        float(config["weight_decay"]),
                                        local_seed(int(config["seed"]), 0, self.site.spec), int(config["patience"]))
                before = int(config["rounds"]) * int(config["epochs"])
                result = fit(model, groups, data.train, data.val, data.task, "tabular", settings,
                             **private(config, before))
                arrays += [probabilities(model, data.val, data.task), probabilities(model, data.test, data.task)]
                metrics.update(personalised_epoch=int(result.best_epoch), **privacy_metric(result))
            return arrays, len(data.train), metrics
        raise MedTransferError(f"unknown federated phase {phase!r} (statistics, train or personalise)")

    def evaluate(self, parameters, config):
        data = self.data(config)
        prob = probabilities(self.model(parameters, config, data), data.val, data.task)
        return log_loss(data.val.y.numpy(), prob), len(data.val), {"site": self.site.spec}


def private(config, epochs_before: int) -> dict:
    """fit's DP arguments for the instruction's dp level: none, or DP-SGD whose noise is calibrated for every
    epoch the site trains in the run, `epochs_before` of them already taken."""
    dp = parse_dp(config.get("dp"), flag="dp")
    if dp is None:
        return {}
    planned = int(config["rounds"]) * int(config["epochs"]) + int(config["personalise_epochs"])
    return {"dp": dp, "dp_schedule": DPSchedule(planned, epochs_before)}


def privacy_metric(result) -> dict:
    """The accountant's record, as a Flower metric (a JSON string), when the fit was private."""
    return {"dp": json.dumps(result.dp)} if result.dp is not None else {}


def simulation_client_fn(sites: list[SiteData]):
    """Flower's `client_fn` for the simulation engine: virtual node i is site i."""
    def client_fn(context):
        torch.set_num_threads(1)  # one thread per site, as in a client process: the same arithmetic
        return SiteClient(sites[int(context.node_config["partition-id"])]).to_client()
    return client_fn
