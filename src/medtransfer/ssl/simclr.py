"""SimCLR (Chen et al. 2020): two views of each image, a projection head, NT-Xent over the batch
(every other view in the batch is a negative). Head and loss from lightly."""

from __future__ import annotations

import torch

from ..models.backbones import Classifier
from ..training.augment import ViewConfig
from .base import ContrastiveMethod, register


@register
class SimCLR(ContrastiveMethod):
    name = "simclr"
    default_temperature = 0.5
    data_parallel = True  # NT-Xent over the gathered global batch (lightly's gather_distributed)

    def __init__(self, encoder: Classifier, views: ViewConfig | None = None, temperature: float | None = None,
                 projection_dim: int = 128):
        from lightly.loss import NTXentLoss
        from lightly.models.modules import SimCLRProjectionHead

        super().__init__(encoder, views, projection_dim)
        width = encoder.num_features
        self.temperature = temperature or self.default_temperature
        self.projection_head = SimCLRProjectionHead(width, width, projection_dim)
        # gather_distributed: under DDP every rank's views are the negatives (one process: no effect)
        self.criterion = NTXentLoss(temperature=self.temperature, gather_distributed=True)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection_head(self.embed(x))

    def forward(self, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
        z = self.project(torch.cat([view1, view2]))  # one pass: BatchNorm sees both views
        z1, z2 = self.float32(*z.chunk(2))
        with torch.autocast(z.device.type, enabled=False):
            return self.criterion(z1, z2)

    def settings(self) -> dict:
        return {"temperature": self.temperature, "projection_dim": self.projection_dim}
