"""The shipped example grids stay valid: each loads with its own loader (a YAML edit that breaks one fails
here, not for a user), expands to the cell count its header states, and every image grid states its
measured time on 2 CPU cores."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from medtransfer.experiment import grid, load_config
from medtransfer.federation.config import load_federated_config

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))


def header(path: Path) -> str:
    return "".join(line for line in path.read_text().splitlines(keepends=True) if line.startswith("#"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_loads_and_has_the_cells_its_header_states(path):
    raw = yaml.safe_load(path.read_text())
    if "sites" in raw:  # a federated run (medtransfer federate)
        config, _ = load_federated_config(path)
        assert config.name == raw["name"]
        return
    config, _ = load_config(path)
    stated = re.search(r"= (\d+) cells|the (\d+)-cell grid|^# (\d+) cells|\((\d+) cells", header(path), re.M)
    assert stated, f"{path.name}: its header does not state its number of cells"
    count = int(next(group for group in stated.groups() if group))
    assert len(grid(config)) == count, f"{path.name} states {count} cells"


def test_every_image_grid_states_its_measured_time_on_2_cpu_cores():
    images = [p for p in EXAMPLES if "medmnist:" in "".join(line for line in p.read_text().splitlines()
                                                            if not line.startswith("#"))]
    assert images, "no image example grid found"
    for path in images:
        assert re.search(r"Measured on 2 CPU cores", header(path)), f"{path.name}: no measured time in its header"
