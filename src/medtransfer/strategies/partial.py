from ..errors import MedTransferError
from ..models.backbones import Classifier
from .base import Strategy, TransferContext, register


def unfreeze_last_stages(model: Classifier, k: int) -> list:
    """Freeze the backbone up to its k-th last stage; return the modules left frozen (kept in eval
    mode so their BatchNorm statistics stay the source's)."""
    stages = model.stages()
    if not 1 <= k <= len(stages):
        raise MedTransferError(f"partial: stages must be between 1 and {len(stages)} for this backbone")
    first = stages[-k]
    trainable = False
    for name, param in model.backbone.named_parameters():
        trainable = trainable or name == first or name.startswith(first + ".")
        param.requires_grad_(trainable)
    return [m for m in model.backbone.modules()
            if any(True for _ in m.parameters(recurse=False))
            and not any(p.requires_grad for p in m.parameters(recurse=False))]


@register
class Partial(Strategy):
    name = "partial"
    summary = "fine-tune the last k backbone stages (default 1) and the head"
    stages = 1
    dp_sgd = True  # --dp trains it with DP-SGD
    data_parallel = True  # --devices N trains it with DDP

    @classmethod
    def accepts(cls, backbone: str | None) -> bool:
        return backbone != "linear"  # a logistic regression has no backbone stages to unfreeze

    def run(self, ctx: TransferContext) -> Classifier:
        model = ctx.target_model(self.name)
        frozen = unfreeze_last_stages(model, self.stages)
        params = [p for p in model.parameters() if p.requires_grad]
        return ctx.fit(model, [{"params": params}], frozen=frozen)
