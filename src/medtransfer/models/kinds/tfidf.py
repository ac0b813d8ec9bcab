"""TF-IDF over the tokenizer's WordPiece unigrams and bigrams, as a frozen "backbone" module, so the
TF-IDF + logistic-regression baseline (`strategies/tfidf.py`) is a saved Classifier like any other run
(predict, evaluate and the model card work unchanged). Its vocabulary and idf weights are buffers,
fitted by scikit-learn's TfidfVectorizer in the strategy; the module reproduces `transform` (raw counts
x idf, L2-normalised). No CLI name claims it: it is built from a checkpoint's architecture only."""

from __future__ import annotations

import torch
from torch import nn

from ...errors import MedTransferError
from .base import BackboneKind, register_kind


def term_keys(ids: torch.Tensor, valid: torch.Tensor, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, key) of every unigram (key = id) and bigram (key = (id1 + 1) x V + id2) of valid tokens."""
    rows = torch.arange(len(ids), device=ids.device).unsqueeze(1)
    uni = valid
    bi = valid[:, :-1] & valid[:, 1:]
    bigrams = (ids[:, :-1] + 1) * vocab_size + ids[:, 1:]
    row = torch.cat([rows.expand_as(ids)[uni], rows.expand_as(bigrams)[bi]])
    key = torch.cat([ids[uni], bigrams[bi]])
    return row, key


def documents(x: torch.Tensor, special: list[int], vocab_size: int) -> list[list[int]]:
    """Each text's term keys in order, for TfidfVectorizer(analyzer=list)."""
    ids, valid = token_mask(x, special)
    row, key = term_keys(ids, valid, vocab_size)
    docs: list[list[int]] = [[] for _ in range(len(x))]
    for r, k in zip(row.tolist(), key.tolist()):
        docs[r].append(k)
    return docs


def token_mask(x: torch.Tensor, special: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    ids, mask = x[:, 0].long(), x[:, 1].bool()
    valid = mask & ~torch.isin(ids, torch.tensor(special, dtype=torch.long, device=ids.device))
    return ids, valid


class TfidfFeatures(nn.Module):
    """(N, 2, L) token ids + mask -> (N, terms) TF-IDF rows; `keys` sorted, `idf` in the same order."""

    def __init__(self, terms: int, vocab_size: int, special: list[int]):
        super().__init__()
        self.register_buffer("keys", torch.zeros(terms, dtype=torch.long))
        self.register_buffer("idf", torch.zeros(terms))
        self.vocab_size, self.special, self.out_features = vocab_size, list(special), terms

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids, valid = token_mask(x, self.special)
        row, key = term_keys(ids, valid, self.vocab_size)
        pos = torch.searchsorted(self.keys, key).clamp(max=len(self.keys) - 1)
        found = self.keys[pos] == key
        counts = torch.zeros(len(x), len(self.keys), device=x.device)
        counts.index_put_((row[found], pos[found]), torch.ones(int(found.sum()), device=x.device), accumulate=True)
        tfidf = counts * self.idf
        return tfidf / tfidf.norm(dim=1, keepdim=True).clamp(min=1e-12)


@register_kind
class TfidfKind(BackboneKind):
    name = "tfidf"
    modality = "text"

    def describe(self, name: str, channels: int, n_features: int) -> dict:
        raise MedTransferError("tfidf is not a --backbone: the TF-IDF baseline is --strategy tfidf-lr")

    def build(self, architecture: dict) -> tuple[nn.Module, int]:
        module = TfidfFeatures(architecture["terms"], architecture["vocab_size"], architecture["special"])
        return module, module.out_features

    def stages(self, backbone: nn.Module) -> list[str]:
        return []
