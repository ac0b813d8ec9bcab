"""The model every site and the server share, as Flower moves it: a list of numpy arrays in the order of
the model's state_dict, built from an architecture and the shared tabular encoding.

Training always runs on the CPU in fp32: tabular models this size gain nothing from a GPU, a Ray actor
gets none, and one device keeps the simulation and the client processes over gRPC on the same arithmetic.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch

from ..data.tabular import TabularEncoder
from ..errors import MedTransferError
from ..models.backbones import Classifier, create_model, default_spec, describe
from ..models.inference import predict_proba
from ..training.loop import TrainConfig

DEVICE = "cpu"


def architecture_for(backbone: str, encoder: TabularEncoder) -> dict:
    return describe(backbone, "tabular", 0, len(encoder.feature_names))


def build_model(architecture: dict, encoder: TabularEncoder, n_outputs: int, seed: int | None = None) -> Classifier:
    """A fresh model (random weights drawn from `seed` when given) taking the encoding's columns."""
    if seed is not None:
        torch.manual_seed(seed)
    return create_model(architecture, default_spec("tabular", 0, encoder.feature_names), n_outputs)


def to_arrays(model: torch.nn.Module) -> list[np.ndarray]:
    """The weights as Flower sends them: one array per state_dict entry, in its order."""
    return [v.detach().cpu().numpy().copy() for v in model.state_dict().values()]


def load_arrays(model: torch.nn.Module, arrays) -> None:
    """Set the weights from Flower's arrays; a count or shape that does not fit is refused by name."""
    state = model.state_dict()
    if len(arrays) != len(state):
        raise MedTransferError(f"received {len(arrays)} weight arrays for a model of {len(state)}; the server and "
                               "this site disagree on the architecture")
    new = {}
    for (name, current), array in zip(state.items(), arrays):
        if tuple(np.shape(array)) != tuple(current.shape):
            raise MedTransferError(f"received weights of shape {tuple(np.shape(array))} for {name} "
                                   f"{tuple(current.shape)}; the server and this site disagree on the encoding")
        new[name] = torch.as_tensor(np.asarray(array)).to(current.dtype)
    model.load_state_dict(new, strict=True)


def train_config(epochs: int, lr: float, batch_size: int, weight_decay: float, seed: int,
                 patience: int | None = None) -> TrainConfig:
    """The one loop's settings for every training in a federated run (local rounds, references,
    personalisation); `patience` None: no early stopping (a local round runs all its epochs)."""
    return TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, weight_decay=weight_decay,
                       patience=patience or epochs + 1, augment=False, seed=seed, accelerator=DEVICE,
                       progress=False, precision="fp32")


def local_seed(seed: int, round_: int, site: str) -> int:
    """The seed of one site's training in one round: fixed by (seed, round, site), whichever process runs it."""
    return int(np.random.SeedSequence([seed, round_, zlib.crc32(site.encode())]).generate_state(1)[0])


def probabilities(model: Classifier, split, task: str) -> np.ndarray:
    return predict_proba(model, split.x, task, device=DEVICE).astype(np.float32)


def log_loss(y: np.ndarray, prob: np.ndarray) -> float:
    """Mean cross-entropy of the true class: the validation loss Flower averages over sites."""
    picked = prob[np.arange(len(y)), np.asarray(y, dtype=np.int64)]
    return float(-np.log(np.clip(picked, 1e-7, 1.0)).mean())
