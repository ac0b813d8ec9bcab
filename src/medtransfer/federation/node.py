"""One site's Flower client as its own process: `python -m medtransfer.federation.node --server HOST:PORT
--site '<SiteData JSON>'`. It joins the server over gRPC (Flower's `start_client`), answers until the
server tells it to leave, and exits; its rows never leave this process."""

from __future__ import annotations

import argparse
import logging
import os
import sys


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m medtransfer.federation.node", description=__doc__)
    parser.add_argument("--server", required=True, help="the Flower server's address, e.g. 127.0.0.1:9092")
    parser.add_argument("--site", required=True, help="the site's data, as SiteData JSON")
    args = parser.parse_args(argv)

    import torch
    from flwr.client import start_client

    from .client import SiteClient
    from .sites import SiteData

    torch.set_num_threads(1)  # as a simulation actor: one thread, the same arithmetic
    logging.getLogger("flwr").setLevel(logging.ERROR)
    site = SiteData.from_json(args.site)
    start_client(server_address=args.server, client_fn=lambda context: SiteClient(site).to_client(), insecure=True,
                 max_wait_time=60)


if __name__ == "__main__":
    main()
    # The server has said goodbye and nothing is left to release: skip the interpreter's teardown, which
    # after Flower's gRPC client took about 9 s per process (in native code; measured), for nothing.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
