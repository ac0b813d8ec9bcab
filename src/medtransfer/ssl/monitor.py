"""The pretraining monitor: weighted k-NN (Wu et al. 2018, the vote lightly's `knn_predict` uses) on
backbone features: a labelled bank from the training split votes for each image of a small labelled
validation set, and the votes are scored like every other model in the toolkit (validation AUC:
binary AUC, macro one-vs-rest for multi-class). AUC rather than accuracy: with imbalanced medical
labels a k-NN vote is mostly the majority class, so accuracy barely moves while the ranking does.
Cheap (one eval pass over a few thousand images) and training-free: the best epoch by this score is
the checkpoint kept."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..data.base import Split
from ..defaults import EVAL_BATCH_SIZE
from ..models.inference import batched, eval_mode
from ..training.loop import selection_score


class KNNMonitor:
    name = "k-NN AUC"

    def __init__(self, bank: Split, val: Split, num_classes: int, task: str = "multiclass", k: int = 200,
                 temperature: float = 0.1, batch_size: int = EVAL_BATCH_SIZE):
        self.bank, self.val = bank, val
        self.num_classes, self.task = num_classes, task
        self.k = max(1, min(k, len(bank)))
        self.temperature = temperature
        self.batch_size = batch_size

    def features(self, method: nn.Module, x: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Unit-length embeddings, left on the device for the vote."""
        return F.normalize(batched(method.embed, x, self.batch_size, device, cpu=False), dim=1)

    @torch.no_grad()
    def votes(self, query: torch.Tensor, bank: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Class probabilities from the k most similar bank features, weighted by exp(cos / t)."""
        similarity, index = (query @ bank.T).topk(self.k, dim=1)
        weight = (similarity / self.temperature).exp()
        scores = (F.one_hot(labels[index], self.num_classes).float() * weight[..., None]).sum(1)
        return scores / scores.sum(1, keepdim=True)

    @torch.no_grad()
    def __call__(self, method: nn.Module) -> float:
        device = next(method.parameters()).device
        with eval_mode(method):
            bank = self.features(method, self.bank.x, device)
            query = self.features(method, self.val.x, device)
        prob = self.votes(query, bank, self.bank.y.to(device)).cpu().double().numpy()
        return selection_score(self.val.y.numpy(), prob, self.task)
