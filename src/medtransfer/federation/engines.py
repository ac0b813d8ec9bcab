"""Where a `Schedule` runs: Flower's simulation engine (virtual clients in Ray actors, one machine), or
real client processes that connect to a Flower server over gRPC on 127.0.0.1.

Both run the same legacy Flower `Server` with the same `Schedule` and the same `SiteClient`, so for one
seed they give the same weights. The gRPC engine is Flower's own pieces of `flwr.server.start_server`
(its gRPC server and `run_fl`) without the process-wide signal handlers that function installs: a
library call must not take over Ctrl-C, and the server must stop (and the clients with it) when a
round fails. Each client process is `python -m medtransfer.federation.node`, Flower's `start_client`.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from flwr.server import SimpleClientManager

from ..errors import MedTransferError
from ..runs import temporary_environ
from . import QUIET_ENV
from .client import simulation_client_fn
from .schedule import Schedule
from .sites import SiteData

CONNECT_SECONDS = 180  # client processes must have joined by then (they import torch and Flower first)


@contextmanager
def quiet_flower():
    """Flower's log at ERROR while a run goes (it reports its own progress; Flower's INFO lines and the
    deprecation notes of its legacy server API would bury it)."""
    logger = logging.getLogger("flwr")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


LOOPBACK_RAY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray's head node on 127.0.0.1, not the machine's address


def run_simulation(schedule: Schedule, sites: list[SiteData]) -> None:
    """The schedule in Flower's simulation engine: one virtual node per site, Ray on this machine only,
    one CPU per client and as many clients at once as there are CPUs (at most one per site).

    Ray on Linux binds its head node to the machine's network address even when asked for 127.0.0.1,
    unless its single-machine mode (the Windows / macOS default) is on: it is switched on here when Ray is
    not yet imported, since Ray reads the switch once, at import."""
    import importlib.util
    if importlib.util.find_spec("ray") is None:
        raise MedTransferError("the simulation engine needs Ray, which is not installed: pip install "
                               "'medtransfer[federated]' (Flower's simulation extra), or use engine: grpc")
    loopback = "ray" not in sys.modules and LOOPBACK_RAY not in os.environ
    with temporary_environ({LOOPBACK_RAY: "0"} if loopback else {}):
        _simulate(schedule, sites)


def _simulate(schedule: Schedule, sites: list[SiteData]) -> None:
    with quiet_flower():
        from flwr.client import ClientApp
        from flwr.server import Server, ServerApp, ServerAppComponents, ServerConfig
        from flwr.simulation import run_simulation as flower_simulation

        def server_fn(context):
            return ServerAppComponents(server=Server(client_manager=SimpleClientManager(), strategy=schedule),
                                       config=ServerConfig(num_rounds=schedule.rounds))

        cpus = max(1, min(len(sites), os.cpu_count() or 1))
        backend = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                   "init_args": {"num_cpus": cpus, "num_gpus": 0, "include_dashboard": False,
                                 "logging_level": logging.ERROR, "log_to_driver": False}}
        flower_simulation(ServerApp(server_fn=server_fn), ClientApp(client_fn=simulation_client_fn(sites)),
                          num_supernodes=len(sites), backend_config=backend)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_grpc(schedule: Schedule, sites: list[SiteData]) -> None:
    """The schedule with one client process per site, connected to this process's Flower server over gRPC
    on 127.0.0.1 (a free port). The processes stop when the run ends, and are stopped if it fails."""
    with quiet_flower():
        from flwr.server import Server, ServerConfig
        from flwr.server.server import run_fl
        from flwr.server.superlink.fleet.grpc_bidi.grpc_server import start_grpc_server

        address = f"127.0.0.1:{free_port()}"
        manager = WatchedClientManager()
        grpc_server = start_grpc_server(client_manager=manager, server_address=address)
        with tempfile.TemporaryDirectory(prefix="medtransfer-federated-") as logs:
            done = False
            try:
                manager.nodes = [start_node(address, site, Path(logs) / f"node{i}.log") for i, site in enumerate(sites)]
                run_fl(Server(client_manager=manager, strategy=schedule), ServerConfig(num_rounds=schedule.rounds))
                done = True
            finally:
                grpc_server.stop(grace=1)
                stop_nodes(manager.nodes, wait=30.0 if done else 0.0)


def start_node(address: str, site: SiteData, log: Path) -> tuple[subprocess.Popen, SiteData, Path]:
    env = dict(os.environ, **QUIET_ENV)
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "medtransfer.federation.node", "--server", address,
                                    "--site", site.to_json()], stdout=subprocess.DEVNULL, stderr=out, env=env)
    return process, site, log


def stop_nodes(nodes: list, wait: float = 30.0) -> None:
    """Wait up to `wait` seconds for the client processes to leave (the server told them to, at the end of
    a run); stop those still there (all of them at once after a failed run)."""
    deadline = time.monotonic() + wait
    for process, _, _ in nodes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class WatchedClientManager(SimpleClientManager):
    """Flower's client manager, waiting for the client processes to join while watching them: one that
    exits first is reported with the last line it wrote, instead of the server waiting for a day."""

    def __init__(self) -> None:
        super().__init__()
        self.nodes: list = []  # (process, site, log file) of each client process

    def wait_for(self, num_clients: int, timeout: int = 86400) -> bool:
        deadline = time.monotonic() + min(timeout, CONNECT_SECONDS)
        while not super().wait_for(num_clients, timeout=1):
            for process, site, log in self.nodes:
                if process.poll() is not None:
                    lines = log.read_text(errors="replace").strip().splitlines() if log.is_file() else []
                    raise MedTransferError(f"the Flower client process of site {site.spec} exited (code "
                                           f"{process.returncode}) before the run ended: "
                                           f"{lines[-1] if lines else 'no message'}")
            if time.monotonic() > deadline:
                raise MedTransferError(f"only {len(self)} of {num_clients} Flower client processes joined the server "
                                       f"within {CONNECT_SECONDS} s")
        return True


ENGINES = {"simulation": run_simulation, "grpc": run_grpc}
