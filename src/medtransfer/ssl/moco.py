"""MoCo v2 (He et al. 2020; Chen et al. 2020): a query encoder trained by gradient, a key encoder that
is its exponential moving average, and a FIFO queue of past keys as negatives (InfoNCE).
Projection head, momentum update and loss-with-queue come from lightly (MoCoProjectionHead,
update_momentum / deactivate_requires_grad, NTXentLoss with a memory bank)."""

from __future__ import annotations

import copy

import torch

from ..models.backbones import Classifier
from ..training.augment import ViewConfig
from .base import ContrastiveMethod, register


@register
class MoCo(ContrastiveMethod):
    name = "moco"
    default_temperature = 0.2
    default_queue_size = 4096
    default_momentum = 0.99
    data_parallel = True  # every rank enqueues the gathered global batch of keys: one queue, as on one device

    def __init__(self, encoder: Classifier, views: ViewConfig | None = None, temperature: float | None = None,
                 queue_size: int | None = None, momentum: float | None = None, projection_dim: int = 128):
        from lightly.loss import NTXentLoss
        from lightly.models.modules import MoCoProjectionHead
        from lightly.models.utils import deactivate_requires_grad

        super().__init__(encoder, views, projection_dim)
        width = encoder.num_features
        self.temperature = temperature or self.default_temperature
        self.queue_size = int(queue_size or self.default_queue_size)
        self.momentum = self.default_momentum if momentum is None else float(momentum)
        self.projection_head = MoCoProjectionHead(width, width, projection_dim)
        # the key encoder: a copy of backbone and head that never receives gradients
        self.key_backbone = copy.deepcopy(encoder.backbone)
        self.key_head = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.key_backbone)
        deactivate_requires_grad(self.key_head)
        # the queue: lightly's memory bank, (queue_size, dim) of normalised keys, FIFO via a pointer
        # gather_distributed: under DDP the keys of every rank are enqueued (one process: no effect)
        self.criterion = NTXentLoss(temperature=self.temperature, memory_bank_size=(self.queue_size, projection_dim),
                                    gather_distributed=True)

    @property
    def queue(self) -> torch.Tensor:
        return self.criterion.memory_bank.bank

    @property
    def queue_pointer(self) -> int:
        return int(self.criterion.memory_bank.bank_ptr)

    def query(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection_head(self.embed(x))

    @torch.no_grad()
    def key(self, x: torch.Tensor) -> torch.Tensor:
        return self.key_head(self.key_backbone(self.encoder.preprocess(x)))

    def forward(self, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
        q, k = self.float32(self.query(view1), self.key(view2))
        with torch.autocast(q.device.type, enabled=False):
            # positives: q . k; negatives: the queue as it was; then k is enqueued (oldest out)
            return self.criterion(q, k)

    @torch.no_grad()
    def update_momentum(self) -> None:
        """key = m * key + (1 - m) * query, for backbone and projection head."""
        from lightly.models.utils import update_momentum

        update_momentum(self.encoder.backbone, self.key_backbone, self.momentum)
        update_momentum(self.projection_head, self.key_head, self.momentum)

    def after_step(self, model) -> None:
        self.update_momentum()

    def settings(self) -> dict:
        return {"temperature": self.temperature, "queue_size": self.queue_size, "momentum": self.momentum,
                "projection_dim": self.projection_dim}
