"""LoRA (Hu et al. 2022) through peft: low-rank adapters on every linear layer of the backbone (a text
encoder's attention and feed-forward projections, a ViT's, an MLP's), trained with the head while the
source weights stay frozen; after training the adapters are merged into the weights, so the saved
model.safetensors is a plain model (no peft needed to load or predict). Rank and alpha are recorded in
the run's strategy notes (config.json, model.json provenance, model card)."""

from __future__ import annotations

from torch import nn

from ..errors import MedTransferError
from ..models.backbones import Classifier
from .base import Strategy, TransferContext, register
from .linear_probe import linear_probe


def linear_layers(module: nn.Module) -> list[str]:
    return [name for name, m in module.named_modules() if isinstance(m, nn.Linear) and name]


@register
class LoRA(Strategy):
    name = "lora"
    reads_unlabelled = True  # its probe standardises features on the unlabelled inputs
    summary = ("low-rank adapters (peft) on the backbone's linear layers, head from a linear probe; merged into the "
               "weights at save")
    rank, alpha, dropout = 8, 16, 0.1
    data_parallel = True  # the probe is a deterministic fit every rank repeats; the adapters train with DDP

    @classmethod
    def accepts(cls, backbone: str | None) -> bool:
        return backbone != "linear"  # a logistic regression has no backbone layers to adapt

    def run(self, ctx: TransferContext) -> Classifier:
        try:
            from peft import LoraConfig, LoraModel
        except ImportError:
            raise MedTransferError("strategy lora needs peft: pip install peft (or pip install 'medtransfer[lora]')") \
                from None
        # The head starts as a linear probe (logistic regression on the frozen, cached features, as lp-ft
        # does): with a few labels per class, adapters trained under a random head first undo what the
        # head's noise asks of them; from a probe they only refine, and early stopping keeps the probe
        # itself when adapting does not beat it on validation.
        model = linear_probe(ctx, self.name)
        targets = linear_layers(model.backbone)
        if not targets:
            raise MedTransferError(f"strategy lora adapts linear layers, and the {model.architecture.get('name')} "
                                   "backbone has none (a convolutional network); use full, partial or l2-sp")
        model.backbone.requires_grad_(False)
        config = LoraConfig(r=self.rank, lora_alpha=self.alpha, lora_dropout=self.dropout, target_modules=targets)
        plain = model.backbone
        model.backbone = LoraModel(plain, config, "default")
        adapters = [p for n, p in model.backbone.named_parameters() if "lora_" in n]
        for p in adapters:
            p.requires_grad_(True)
        try:
            ctx.fit(model, [{"params": adapters, "lr": ctx.config.lr}, {"params": list(model.head.parameters())}],
                    warmup_epochs=max(ctx.config.warmup_epochs, 1.0))
        finally:
            model.backbone = model.backbone.merge_and_unload()  # W + (alpha / r) B A, no adapters left
        model.backbone.requires_grad_(True)
        ctx.notes["lora"] = {"rank": self.rank, "alpha": self.alpha, "dropout": self.dropout,
                             "target_layers": len(targets), "adapter_parameters": sum(p.numel() for p in adapters),
                             "merged": True}
        return model
