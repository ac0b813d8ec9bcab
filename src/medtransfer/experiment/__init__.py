"""Experiment grids: the YAML config, the grid of cells, the runner (resumable; local processes or Ray) and
the records it keeps (results.csv with failed cells, MLflow), in a locked folder."""

from .config import NO_SOURCE, ExperimentConfig, TrainSettings, load_config
from .grid import Cell, grid, settings_of, short
from .runner import EXECUTORS, CellsFailed, cell_request, check_backend, run_cell, run_experiment
from .store import Results, Tracker, done

__all__ = ["NO_SOURCE", "ExperimentConfig", "TrainSettings", "load_config", "Cell", "grid", "settings_of", "short",
           "cell_request", "run_cell", "run_experiment", "CellsFailed", "Results", "Tracker", "done", "EXECUTORS",
           "check_backend"]
