"""TF-IDF + logistic regression: the classical text baseline every text report shows beside the
transfer methods. scikit-learn's TfidfVectorizer on the texts' WordPiece unigrams and bigrams (the
tokens every text dataset already holds), logistic regression with C chosen on validation (the one
logistic-regression helper, unstandardised: TF-IDF rows are already L2-normalised)."""

from __future__ import annotations

from .. import defaults
from ..errors import MedTransferError
from ..models.backbones import Classifier, create_model
from ..models.inference import batched
from ..models.kinds.tfidf import documents
from .base import Strategy, TransferContext, fit_logistic_head, register


@register
class TfidfLR(Strategy):
    name = "tfidf-lr"
    summary = "text baseline: TF-IDF of word(piece) unigrams and bigrams, logistic regression (C on validation)"
    needs_source_model = False
    baseline = True
    uses_backbone = False
    modalities = ("text",)

    def run(self, ctx: TransferContext) -> Classifier:
        from sklearn.feature_extraction.text import TfidfVectorizer

        target = ctx.target
        if target.modality != "text":
            raise MedTransferError(f"{self.name} is a text baseline; for {target.modality} data use "
                                   f"{'target-only' if target.modality == 'tabular' else 'scratch'}")
        from ..data.text import load_tokenizer

        tokenizer = load_tokenizer((target.info.get("tokenizer") or "minilm").partition("#")[0])
        vocab_size, special = len(tokenizer), sorted(set(tokenizer.all_special_ids))
        vectorizer = TfidfVectorizer(analyzer=lambda doc: doc, max_features=defaults.TFIDF_MAX_TERMS)
        vectorizer.fit(documents(target.train.x, special, vocab_size))
        keys = sorted(vectorizer.vocabulary_)
        architecture = {"kind": "tfidf", "name": "tfidf", "terms": len(keys), "vocab_size": vocab_size,
                        "special": special, "ngram": [1, 2], "tokenizer": target.info.get("tokenizer")}
        model = create_model(architecture, ctx.spec, target.num_outputs)
        import torch
        model.backbone.keys.copy_(torch.tensor(keys, dtype=torch.long))
        model.backbone.idf.copy_(torch.tensor([vectorizer.idf_[vectorizer.vocabulary_[k]] for k in keys]))
        train, val = target.train, target.val
        features = [batched(model.features, split.x).numpy() for split in (train, val)]
        fit_logistic_head(model, features[0], train.y.numpy(), features[1], val.y.numpy(), target.task, ctx.config,
                          grid=defaults.TFIDF_C_GRID, standardize=False)
        ctx.notes["tfidf"] = {"terms": len(keys), "ngram": [1, 2], "units": "WordPiece tokens"}
        return model
