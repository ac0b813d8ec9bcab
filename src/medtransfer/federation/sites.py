"""A site's data, as its Flower client holds it, and the federated statistics its encoding is built from.

Why statistics: a federated model needs the same encoded columns at every site, and the usual encoding
(`data.tabular.TabularEncoder`) is fitted on training rows. Each client therefore sends only aggregates
of its own training split: per numeric column the row count, the count of measured values, their mean
and their sum of squared deviations; per categorical column the set of levels seen. The server merges
them exactly (Chan's parallel formulas) into one encoder: numeric columns imputed with the pooled mean
of the measured values (a median cannot be merged from aggregates) and standardised with the pooled
mean and standard deviation after that imputation; categorical levels are the union. With a source
model the source's own encoding is the shared one instead (a fixed public schema) and no statistics
are collected.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np

from ..data import TaskDataset, load_dataset, require_classes
from ..data.tabular import HEART_SITES, MISSING, TabularEncoder, as_text, heart_frame, id_texts, read_csv
from ..errors import MedTransferError


@dataclass(frozen=True)
class SiteData:
    """Where one site's table is and how it is read: what its client is started with."""
    spec: str  # heart:<hospital> or csv:<path>
    target: str | None = None
    group: str | None = None
    id: str | None = None  # noqa: A003 - the id column, as --id
    drop: tuple[str, ...] = ()
    split_seed: int = 0
    data_root: str | None = None

    def load(self, encoder: TabularEncoder | None = None) -> TaskDataset:
        """The site's splits, encoded with `encoder` (None: an encoding fitted on its own training rows)."""
        csv = self.spec.startswith("csv:")
        dataset = load_dataset(self.spec, data_root=self.data_root, target=self.target if csv else None,
                               group=self.group if csv else None, id=self.id if csv else None,
                               drop=self.drop if csv else (), encoder=encoder, split_seed=self.split_seed)
        require_classes(dataset, self.spec)
        if dataset.modality != "tabular":
            raise MedTransferError(f"site {self.spec} is not a table; federated sites are heart: or csv: tables")
        return dataset

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "SiteData":
        data = json.loads(text)
        return cls(**{**data, "drop": tuple(data.get("drop") or ())})


@lru_cache(maxsize=16)
def cached_load(site_json: str, encoder_json: str | None) -> TaskDataset:
    """A site's dataset, loaded once per process (Flower builds a new client for every message)."""
    encoder = TabularEncoder.from_dict(json.loads(encoder_json)) if encoder_json else None
    return SiteData.from_json(site_json).load(encoder)


def raw_rows(site: SiteData):
    """(the site's table as read, each row's id as its loader names it): what the statistics are
    computed on. The ids are the loader's (`<hospital>:<UCI id>`, a csv's id column or row number), so
    the training rows are exactly those of the dataset's train split."""
    scheme, _, arg = site.spec.partition(":")
    if scheme == "heart":
        key = arg.strip().lower()
        frame = heart_frame(with_id=True)
        frame = frame[frame.pop("dataset") == HEART_SITES[key]].reset_index(drop=True)
        return frame, [f"{key}:{i}" for i in id_texts(frame["id"])]
    from pathlib import Path
    frame = read_csv(Path(arg).expanduser())
    return frame, id_texts(frame[site.id]) if site.id else [str(i) for i in range(len(frame))]


def site_statistics(site: SiteData) -> dict:
    """What a client sends for the shared encoding: aggregates of its training split, never a row."""
    dataset = cached_load(site.to_json(), None)  # its own encoding says which columns are numeric
    own = dataset.encoder
    frame, ids = raw_rows(site)
    wanted = set(dataset.train.ids)
    train = frame[[i in wanted for i in ids]]
    if len(train) != len(dataset.train):
        raise MedTransferError(f"site {site.spec}: its row ids are not unique, so its training rows cannot be told "
                               "apart; give each row a distinct id (id_column) or none")
    import pandas as pd

    numeric = {}
    for col in own.numeric:
        values = pd.to_numeric(train[col], errors="coerce").to_numpy(float)
        measured = values[np.isfinite(values)]
        mean = float(measured.mean()) if len(measured) else 0.0
        numeric[col] = [int(len(measured)), mean, float(((measured - mean) ** 2).sum())]
    categorical = {col: sorted(set(as_text(train[col])) - {MISSING}) for col in own.categorical}
    return {"site": site.spec, "n": len(train), "classes": list(dataset.classes), "numeric": numeric,
            "categorical": categorical}


STATISTICS_KEYS = ("site", "n", "classes", "numeric", "categorical")  # everything a statistics message holds


def merge_statistics(stats: list[dict]) -> TabularEncoder:
    """One encoder from every site's aggregates (see the module docstring); sites that disagree on the
    columns, on a column's kind or on the classes are refused, naming them."""
    first = stats[0]
    for other in stats[1:]:
        if other["classes"] != first["classes"]:
            raise MedTransferError(f"sites {first['site']} and {other['site']} have different classes "
                                   f"({first['classes']} vs {other['classes']}); a federation learns one task")
        for kind in ("numeric", "categorical"):
            if set(other[kind]) != set(first[kind]):
                diff = sorted(set(other[kind]) ^ set(first[kind]))
                detail = "; ".join(f"{c!r}: {_kind(first, c)} at {first['site']}, {_kind(other, c)} at "
                                   f"{other['site']}" for c in diff)
                raise MedTransferError(f"sites {first['site']} and {other['site']} do not share their feature "
                                       f"columns ({detail}); every site needs the same columns, each numeric or text "
                                       "everywhere")
    total = sum(s["n"] for s in stats)
    numeric = {}
    for col in first["numeric"]:
        parts = [s["numeric"][col] for s in stats]
        measured = sum(p[0] for p in parts)
        mean = sum(p[0] * p[1] for p in parts) / measured if measured else 0.0
        # Chan et al.: sum of squared deviations about the pooled mean; imputed values add none
        m2 = sum(p[2] + p[0] * (p[1] - mean) ** 2 for p in parts)
        std = math.sqrt(m2 / total) if total else 0.0
        numeric[col] = (mean, mean, std or 1.0)
    categorical = {col: sorted(set().union(*(s["categorical"][col] for s in stats))) + [MISSING]
                   for col in first["categorical"]}
    return TabularEncoder(numeric, categorical)


def _kind(stats: dict, col: str) -> str:
    return "numeric" if col in stats["numeric"] else "text" if col in stats["categorical"] else "absent"
