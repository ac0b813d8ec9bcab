"""Tabular clinical data: `csv:<path>` and the built-in UCI Heart Disease sites (`heart:<site>`).

Numeric columns are median-imputed and standardised, categorical ones one-hot encoded (missing
is its own level), with the statistics fitted on the training split only. The fitted encoder is
plain JSON, so it travels in a checkpoint and a target site is encoded exactly like the source.
Every row keeps an id (the `--id` column's value, else its row number), and a column that merely
numbers or names the rows is refused as a feature: it can only be learnt by heart, or leak.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..errors import MedTransferError
from .base import Split, TaskDataset
from .fingerprint import digest, file_digest
from .schemes import LoadOptions, register_scheme

if TYPE_CHECKING:  # pandas and scikit-learn load inside the functions: `import medtransfer.data` stays light
    import pandas as pd

HEART_SITES = {"cleveland": "Cleveland", "hungary": "Hungary", "switzerland": "Switzerland",
               "va": "VA Long Beach"}
MISSING = "<missing>"
MIN_ID_ROWS = 10  # below this, a column of distinct values says little about being an identifier


def as_text(values: pd.Series) -> pd.Series:
    return values.astype(object).where(values.notna(), MISSING).astype(str)


def check_finite(values: pd.Series, col: str, where: str) -> None:
    """Refuse +-inf in a numeric column (NaN is a missing value, imputed)."""
    array = values.to_numpy(dtype=float, na_value=np.nan)
    infinite = np.isinf(array)
    if infinite.any():
        rows = list(values.index[infinite][:5])
        raise MedTransferError(f"{where}: column {col!r} holds infinite values (rows {rows}); replace them with "
                               "real measurements or leave them empty (missing)")


def _rows(index, k: int = 5) -> str:
    """'row 3' / 'rows 3, 7, … (12 rows)': which rows, by the table's own index."""
    shown = ", ".join(map(str, list(index[:k])))
    if len(index) == 1:
        return f"row {shown}"
    return f"rows {shown}" + (f", … ({len(index)} rows)" if len(index) > k else "")


def _shown(values: pd.Series, k: int = 5) -> str:
    distinct = sorted(set(map(str, values)))
    return ", ".join(repr(v) for v in distinct[:k]) + (f", … ({len(distinct)} distinct)" if len(distinct) > k else "")


@dataclass
class TabularEncoder:
    numeric: dict[str, tuple[float, float, float]]  # column -> (median, mean, std)
    categorical: dict[str, list[str]]  # column -> levels seen in training (+ MISSING)

    @classmethod
    def fit(cls, frame: pd.DataFrame, columns: list[str], where: str = "the table") -> "TabularEncoder":
        """Statistics of the training rows. A non-finite value, or values so large that the mean or
        standard deviation overflows, is refused naming the column: an infinite spread would encode
        the whole column as 0 without a word."""
        import pandas as pd

        numeric, categorical = {}, {}
        for col in columns:
            values = frame[col]
            if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
                check_finite(values, col, where)
                with np.errstate(over="ignore", invalid="ignore"):  # an overflow is refused just below
                    filled = values.fillna(values.median() if values.notna().any() else 0.0)
                    std = float(filled.std(ddof=0)) or 1.0
                    numeric[col] = (float(filled.median()), float(filled.mean()), std)
                if not np.isfinite(numeric[col]).all():
                    raise MedTransferError(
                        f"{where}: column {col!r} has values too large to standardise (largest magnitude "
                        f"{float(values.abs().max()):.3g}: its mean or spread overflows); rescale the column "
                        "(e.g. other units) or drop it")
            else:
                categorical[col] = sorted(set(as_text(values)) - {MISSING}) + [MISSING]
        return cls(numeric, categorical)

    @property
    def feature_names(self) -> list[str]:
        names = list(self.numeric)
        for col, levels in self.categorical.items():
            names += [f"{col}={level}" for level in levels]
        return names

    def transform(self, frame: pd.DataFrame, where: str = "the table", warnings: list | None = None) -> np.ndarray:
        """Encode rows as at training. A missing value is imputed (numeric: the training median;
        categorical: the missing level). A value the encoding cannot read (text in a numeric column,
        a level never seen in training) is imputed the same way; when `warnings` is a list, one line
        per column names those values there. Infinite values, and values so far out that the encoded
        feature overflows, are refused naming the column."""
        missing = [c for c in [*self.numeric, *self.categorical] if c not in frame.columns]
        if missing:
            raise MedTransferError(f"{where}: columns {missing} are missing; this encoding expects them "
                                   f"(columns found: {', '.join(map(str, frame.columns))})")
        import pandas as pd

        parts = []
        for col, (median, mean, std) in self.numeric.items():
            parsed = pd.to_numeric(frame[col], errors="coerce")
            check_finite(parsed, col, where)
            if warnings is not None:
                unreadable = frame[col][parsed.isna() & frame[col].notna()]
                if len(unreadable):
                    warnings.append(f"{where}: column {col!r} has values that are not numbers "
                                    f"({_shown(unreadable)}) in {_rows(unreadable.index)}; they were imputed with "
                                    f"the training median {median:g}, as a missing value")
            values = parsed.fillna(median).to_numpy(float)
            parts.append(((values - mean) / std)[:, None])
        for col, levels in self.categorical.items():
            values = as_text(frame[col])
            unseen = ~values.isin(levels)
            if warnings is not None and unseen.any():
                warnings.append(f"{where}: column {col!r} has values never seen in training "
                                f"({_shown(values[unseen])}) in {_rows(values.index[unseen])}; they were encoded "
                                f"as missing (known values: {', '.join(v for v in levels if v != MISSING)})")
            values = values.where(~unseen, MISSING)  # unseen level -> missing
            parts.append((values.to_numpy()[:, None] == np.array(levels)[None, :]).astype(float))
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow is refused just below
            x = np.concatenate(parts, axis=1).astype(np.float32)
        if not np.isfinite(x).all():
            names = self.feature_names
            col = names[int(np.flatnonzero(~np.isfinite(x).all(axis=0))[0])]
            raise MedTransferError(f"{where}: column {col!r} has values so far from the training range that they "
                                   "overflow once standardised; check the column's units")
        return x

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TabularEncoder":
        return cls({k: tuple(v) for k, v in data["numeric"].items()}, dict(data["categorical"]))


def split_indices(y: np.ndarray, groups: np.ndarray | None, seed: int, val_fraction: float,
                  test_fraction: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded stratified train/val/test indices; with groups, no group spans two splits."""
    from sklearn.model_selection import train_test_split

    index = np.arange(len(y))
    if groups is None:
        rest, test = train_test_split(index, test_size=test_fraction, stratify=y, random_state=seed)
        train, val = train_test_split(rest, test_size=val_fraction / (1 - test_fraction),
                                      stratify=y[rest], random_state=seed)
        return train, val, test
    rest, test = group_holdout(index, y, groups, test_fraction, seed)
    train, val = group_holdout(rest, y, groups, val_fraction / (1 - test_fraction), seed)
    return train, val, test


def group_holdout(index: np.ndarray, y: np.ndarray, groups: np.ndarray, fraction: float,
                  seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held out) of `index`: about `fraction` of its groups held out whole, stratified by y, seeded.
    Raises ValueError when there are fewer groups than the folds the fraction needs."""
    from sklearn.model_selection import StratifiedGroupKFold

    if fraction <= 0:
        return index, index[:0]
    folds = StratifiedGroupKFold(n_splits=max(2, round(1 / fraction)), shuffle=True, random_state=seed)
    keep, held = next(folds.split(index, y[index], groups[index]))
    return index[keep], index[held]


def check_columns(frame: pd.DataFrame, where: str, target: str, group: str | None, id: str | None,  # noqa: A002
                  drop: tuple[str, ...]) -> None:
    """Every column an option names is in the table, and the label is none of the non-features."""
    named = [(target, "label column (--target)"), (group, "group column (--group)"), (id, "id column (--id)"),
             *((col, "column to drop (--drop)") for col in drop)]
    for col, flag in named:
        if col and col not in frame.columns:
            raise MedTransferError(f"{flag} {col!r} not in {where}; columns are: {', '.join(map(str, frame.columns))}")
    for col, flag in ((id, "--id"), *((col, "--drop") for col in drop)):
        if col and col == target:
            raise MedTransferError(f"{where}: {flag} {col} names the label column (--target {target}); a label is "
                                   "neither an id nor dropped: name another column")


def is_identifier(values: pd.Series) -> bool:
    """A column with a different value on every row, the way an identifier has: text all distinct, or
    integers all distinct that count 1, 2, 3… (in any order) or only grow down the file. Float columns
    never are (measurements such as a creatinine of 1.13 are distinct by nature)."""
    import pandas as pd

    n = len(values)
    if n < MIN_ID_ROWS or values.nunique() != n or pd.api.types.is_bool_dtype(values):
        return False
    if pd.api.types.is_integer_dtype(values):
        array = values.to_numpy()
        return bool(array.max() - array.min() == n - 1 or (np.diff(array) > 0).all())
    return not pd.api.types.is_numeric_dtype(values)


def check_no_identifier(frame: pd.DataFrame, features: list[str], where: str) -> None:
    """Refuse a feature that identifies rows: a model would learn nothing real from it, or leak."""
    for col in features:
        if is_identifier(frame[col]):
            raise MedTransferError(f"{where}: column {col!r} has a different value on every row, like an identifier "
                                   f"(a model would learn nothing real from it, or leak); name it with --id {col} or "
                                   f"drop it with --drop {col}")


def id_texts(values: pd.Series) -> list[str]:
    """Each row's id as text; a column of whole numbers read as floats (one was empty) keeps '12', not '12.0'."""
    import pandas as pd

    if pd.api.types.is_float_dtype(values) and values.dropna().map(float.is_integer).all():
        values = values.astype("Int64")
    return ["" if pd.isna(v) else str(v) for v in values]


def frame_to_dataset(frame: pd.DataFrame, target: str, name: str, *, group: str | None = None,
                     id: str | None = None, drop: tuple[str, ...] = (),  # noqa: A002 - the option's name
                     encoder: TabularEncoder | None = None,
                     classes: list[str] | None = None, split_seed: int = 0,
                     val_fraction: float = 0.15, test_fraction: float = 0.3, where: str | None = None) -> TaskDataset:
    """`where`: the file the table came from, for messages (default: `name`). `id`: the column whose
    values are the rows' ids (else the 0-based row number); `id`, `group` and `drop` are not features."""
    import pandas as pd

    where = where or name
    drop = tuple(drop)
    check_columns(frame, where, target, group, id, drop)
    if len(frame) == 0:
        raise MedTransferError(f"{where} has a header but no data rows; add rows of patients")
    if frame[target].isna().any():
        rows = list(frame.index[frame[target].isna()][:5])
        raise MedTransferError(f"{where}: target column {target!r} has missing labels (rows {rows}); "
                               "drop or fill those rows first")
    as_number = pd.to_numeric(frame[target], errors="coerce")
    infinite = np.isinf(as_number.to_numpy(dtype=float, na_value=np.nan))
    if infinite.any():
        rows = list(frame.index[infinite][:5])
        raise MedTransferError(f"{where}: label column {target!r} holds non-finite values "
                               f"({_shown(frame[target][infinite])}, rows {rows}); a label is a class, not inf: "
                               "fix or drop those rows")
    labels = frame[target].astype(str)
    classes = classes or sorted(labels.unique())
    unknown = set(labels) - set(classes)
    if unknown:
        raise MedTransferError(f"{name}: labels {sorted(unknown)} are not among the classes {classes}")
    if len(classes) < 2:
        raise MedTransferError(f"{name}: target {target!r} has a single class {classes}; need two or more")
    y = np.array(labels.map({c: i for i, c in enumerate(classes)}), dtype=np.int64)  # a writable copy
    groups = frame[group].astype(str).to_numpy() if group else None
    try:
        parts = split_indices(y, groups, split_seed, val_fraction, test_fraction)
    except ValueError as exc:
        raise MedTransferError(f"{name}: cannot make a stratified split ({exc}); each class needs "
                               "several rows") from None
    features = [c for c in frame.columns if c not in {target, group, id, *drop}]
    # Rows encoded with another site's encoding may hold values that encoding never saw: say so.
    warnings = [] if encoder is not None else None
    if encoder is None:  # a given encoding was checked when it was fitted
        check_no_identifier(frame, features, where)
    encoder = encoder or TabularEncoder.fit(frame.iloc[parts[0]], features, where)
    x = torch.from_numpy(encoder.transform(frame, where, warnings))
    y = torch.from_numpy(y)
    ids = id_texts(frame[id]) if id else [str(i) for i in range(len(frame))]
    train, val, test = (Split(x[idx], y[idx], [ids[i] for i in idx]) for idx in parts)
    for split_name, split in (("train", train), ("val", val), ("test", test)):
        absent = [classes[c] for c in range(len(classes)) if not (split.y == c).any()]
        if absent:
            raise MedTransferError(f"{name}: class {absent} missing from the {split_name} split; "
                                   "add rows of that class or merge classes")
    return TaskDataset(name=name, modality="tabular", task="binary" if len(classes) == 2 else "multiclass",
                       classes=classes, train=train, val=val, test=test, encoder=encoder,
                       info={"features": encoder.feature_names, "rows": len(frame), "split_seed": split_seed,
                             "missing": {c: float(frame[c].isna().mean()) for c in features},
                             **({"warnings": warnings} if warnings else {})})


@register_scheme("csv", help="a table with --target COLUMN (and --group COLUMN for patient-level splits, --id "
                             "COLUMN naming each row, --drop COLUMN for a column that is no feature), "
                             "e.g. csv:./labs.csv", reads=("target", "group", "id", "drop"))
def load_csv_scheme(arg: str, options: LoadOptions) -> TaskDataset:
    return load_csv(arg, options.target, options.group, encoder=options.encoder, split_seed=options.split_seed,
                    id=options.id, drop=options.drop)


@register_scheme("heart", help="built-in UCI Heart Disease site: cleveland, hungary, switzerland or va, "
                               "e.g. heart:hungary", reads=())  # the label is fixed: disease (num > 0)
def load_heart_scheme(arg: str, options: LoadOptions) -> TaskDataset:
    return load_heart(arg, encoder=options.encoder, split_seed=options.split_seed)


def load_csv(path: str | Path, target: str | None, group: str | None = None,
             encoder: TabularEncoder | None = None, split_seed: int = 0, id: str | None = None,  # noqa: A002
             drop: tuple[str, ...] = ()) -> TaskDataset:
    """A CSV table; ids are the `id` column's values, else the 0-based data row numbers."""
    path = Path(path).expanduser()
    if not target:
        raise MedTransferError(f"csv:{path} needs --target COLUMN naming the label column")
    if not path.is_file():
        raise MedTransferError(f"CSV file {path} not found")
    drop = (drop,) if isinstance(drop, str) else tuple(drop or ())
    frame = read_csv(path)
    dataset = frame_to_dataset(frame, target, f"csv:{path.name}", group=group, id=id, drop=drop, encoder=encoder,
                               split_seed=split_seed, where=str(path))
    dataset.info["fingerprint"] = digest("csv", file_digest(path), target, group, split_seed,
                                         encoder.to_dict() if encoder is not None else None,
                                         *((id, sorted(drop)) if id or drop else ()))
    if id:
        dataset.info["id_column"] = id
    return dataset


def read_csv(path: Path, **options) -> pd.DataFrame:
    """A CSV file with at least one data row, or one clear error naming the file. `options` go to
    `pandas.read_csv` (e.g. `dtype=str`)."""
    return read_rows(path, path, "one row per patient", **options)


def read_rows(source, where, unit: str, **options) -> pd.DataFrame:
    """`pandas.read_csv(source, **options)` with at least one data row, or one clear error naming `where`;
    `unit` says what a row is ("one row per patient", "one text per row")."""
    import pandas as pd

    try:
        frame = pd.read_csv(source, **options)
    except pd.errors.EmptyDataError:
        raise MedTransferError(f"{where} is empty (no header, no rows); give a CSV with a header row and {unit}") \
            from None
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [""])[0]
        raise MedTransferError(f"{where} is not a readable CSV ({exc.__class__.__name__}: {reason}); save it as "
                               "comma-separated text with a header row") from None
    if len(frame) == 0:
        raise MedTransferError(f"{where} has a header but no data rows; add {unit}")
    return frame


def heart_frame(with_id: bool = False) -> pd.DataFrame:
    """The bundled UCI table, label `disease`; `with_id` keeps the UCI `id` column (the patients' ids)."""
    frame = _heart_frame().copy()
    return frame if with_id else frame.drop(columns=["id"])


@lru_cache(maxsize=1)
def _heart_frame() -> pd.DataFrame:
    import pandas as pd

    with resources.files("medtransfer.data.resources").joinpath("heart_disease_uci.csv").open() as f:
        frame = pd.read_csv(f)
    frame["chol"] = frame["chol"].replace(0, np.nan)  # 0 = not measured (Switzerland)
    frame["disease"] = np.where(frame.pop("num") > 0, "disease", "no disease")
    return frame


def load_heart(site: str, encoder: TabularEncoder | None = None, split_seed: int = 0) -> TaskDataset:
    """One hospital of UCI Heart Disease. Half of each site is its test set (stratified, fixed by
    split_seed): the sites are small and Switzerland has only 8 patients without disease. Ids are
    `<site>:<UCI id>`; the positive class is "disease"."""
    key = site.strip().lower()
    if key not in HEART_SITES:
        raise MedTransferError(f"unknown heart site {site!r}; choose one of: {', '.join(HEART_SITES)}")
    frame = heart_frame(with_id=True)
    frame = frame[frame.pop("dataset") == HEART_SITES[key]].reset_index(drop=True)
    dataset = frame_to_dataset(frame, "disease", f"heart:{key}", id="id", encoder=encoder,
                               classes=["no disease", "disease"], split_seed=split_seed, test_fraction=0.5)
    for split in (dataset.train, dataset.val, dataset.test):
        split.ids = [f"{key}:{i}" for i in split.ids]
    dataset.info["fingerprint"] = digest("heart", _heart_digest(), key, split_seed,
                                         encoder.to_dict() if encoder is not None else None)
    dataset.info["positive"] = "disease"
    return dataset


@lru_cache(maxsize=1)
def _heart_digest() -> str:
    with resources.as_file(resources.files("medtransfer.data.resources").joinpath("heart_disease_uci.csv")) as f:
        return file_digest(f)
