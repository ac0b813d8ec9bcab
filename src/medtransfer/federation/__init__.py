"""Federated transfer with Flower: sites (hospitals) train one model together, only weights and aggregate
statistics travel; each site then fine-tunes it on its own data ("federated then personalised").

Layer: beside `experiment` (it runs many trainings and writes a results folder). `config` reads the
YAML, `sites` holds a site's data and the federated statistics of the shared encoding, `client` is a
site's Flower client, `schedule` the Flower strategy that runs every federation in one Flower run,
`engines` runs it in Flower's simulation engine or with client processes over gRPC, `references` trains
the local-only, pooled and source references, and `run` ties them together into a results folder.
The package is `federation`, not `federated`, so that `medtransfer.federated` stays the API function.
"""

from __future__ import annotations

import os

# Flower reads its telemetry switch once, when first imported, and Ray its usage statistics at start:
# both off before either is imported here (nothing leaves this machine; client processes inherit them).
QUIET_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "RAY_USAGE_STATS_ENABLED": "0", "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"}
for _key, _value in QUIET_ENV.items():
    os.environ.setdefault(_key, _value)

from .config import FederatedConfig, load_federated_config  # noqa: E402 - after the environment above

__all__ = ["FederatedConfig", "load_federated_config", "run_federated", "FederatedResult"]


def __getattr__(name):  # the run (torch, Flower) loads on first use: reading a config stays light
    if name in ("run_federated", "FederatedResult"):
        import importlib.util
        if importlib.util.find_spec("flwr") is None:
            from ..errors import MedTransferError
            raise MedTransferError("federated runs need Flower, which is not installed: pip install "
                                   "'medtransfer[federated]'")
        from . import run
        return getattr(run, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
