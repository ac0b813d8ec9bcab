"""What every self-supervised method shares: the encoder (a normal medtransfer Classifier whose
preprocess + backbone are what a transfer later uses), the view pipeline, and the hooks the one
training loop (`training.fit`) calls: `batch_loss`, `after_step`, `parameter_groups`.

A method is an nn.Module whose forward(view1, view2) returns the loss, so Lightning Fabric's
precision (bf16 autocast on CUDA) wraps the whole step; the loss itself is computed in float32.
"""

from __future__ import annotations

import torch
from torch import nn

from ..models.backbones import Classifier
from ..registry import Registry
from ..training.augment import SignalViewConfig, ViewConfig, two_views

METHODS = Registry("self-supervised method")  # name -> ContrastiveMethod class


def register(cls):
    """Class decorator: registers a method under its `name`."""
    return METHODS.register()(cls)


class ContrastiveMethod(nn.Module):
    name = ""
    default_temperature = 0.5
    # Its loss sees the whole global batch under DDP (`--devices N`): negatives gathered from every rank,
    # so N shares of a batch train as the batch would on one device. False: pretraining refuses --devices.
    data_parallel = False

    def __init__(self, encoder: Classifier, views: ViewConfig | SignalViewConfig | None = None,
                 projection_dim: int = 128):
        super().__init__()
        self.encoder = encoder
        self.views = views or (SignalViewConfig() if encoder.spec.modality == "signal" else
                               ViewConfig(size=encoder.spec.size))
        self.projection_dim = projection_dim

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone features (what transfer uses); the projection head sits on top of these."""
        return self.encoder.features(x)

    def parameter_groups(self) -> list[dict]:
        """What the optimizer trains: the encoder's backbone and the projection head (not the
        classifier head, which a transfer replaces, nor a momentum encoder)."""
        return [{"params": list(self.encoder.backbone.parameters()) + list(self.projection_head.parameters())}]

    def batch_loss(self, model: nn.Module, xb: torch.Tensor, yb: torch.Tensor,
                   generator: torch.Generator) -> torch.Tensor:
        """The loop's batch loss: labels are ignored; two random views of the batch -> the loss.
        `model` is this module as wrapped by Fabric (its forward runs under the run's precision)."""
        view1, view2 = two_views(xb, generator, self.views)
        return model(view1, view2)

    def after_step(self, model: nn.Module) -> None:
        """Called after every optimizer step (MoCo's momentum update)."""

    @staticmethod
    def float32(*tensors: torch.Tensor):
        """Projections leave autocast as float32, so the contrastive loss is computed in full precision."""
        return [t.float() for t in tensors]
