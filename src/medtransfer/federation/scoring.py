"""One site's result for one method and seed: the operating point chosen on the site's validation split,
then its test split scored once, at that point and (for comparison with FLamby's accuracy) at 0.5."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..data import TaskDataset
from ..data.positive import Positive
from ..evaluation import choose_operating_point, compute_metrics, decisions
from ..pipeline.operating import class_names, scoring_options
from ..runs import predictions_frame

RATES = ("sensitivity", "specificity")  # at the validation operating point (binary)


def score(site: str, method: str, seed: int, data: TaskDataset, positive: Positive | None, rule: str,
          val_prob: np.ndarray, test_prob: np.ndarray, n_boot: int) -> tuple[dict, pd.DataFrame]:
    """(the results.csv row, the predictions rows on validation and test)."""
    index = positive.index if positive is not None else 1
    val_y, test_y = data.val.y.numpy(), data.test.y.numpy()
    point = choose_operating_point(rule, val_y, val_prob, data.task, positive=index)
    at_point = compute_metrics(test_y, test_prob, data.task, n_boot=n_boot, seed=seed,
                               **scoring_options(point, data.classes))
    at_half = compute_metrics(test_y, test_prob, data.task, n_boot=n_boot, seed=seed, threshold=0.5, positive=index,
                              classes=data.classes)
    row = {"site": site, "method": method, "seed": seed, "n_train": len(data.train), "n_val": len(data.val),
           "n_test": len(data.test), **_metric("auc", at_point["auc"]), **_metric("acc_at_0.5", at_half["acc"]),
           "threshold_rule": point.rule, "threshold": point.threshold, **_metric("acc", at_point["acc"])}
    for name in RATES:
        if name in at_point:
            row[name] = at_point[name]["value"]
    row["positive"] = positive.name if positive is not None else None
    frames = [predictions_frame(name, y, prob, data.classes, split.id_list(name),
                                class_names(np.asarray(decisions(prob, data.task, point), np.int64), data.classes))
              for name, split, y, prob in (("val", data.val, val_y, val_prob), ("test", data.test, test_y, test_prob))]
    frame = pd.concat(frames, ignore_index=True)
    for i, (key, value) in enumerate((("site", site), ("method", method), ("seed", seed))):
        frame.insert(i, key, value)
    return row, frame


def _metric(name: str, entry: dict) -> dict:
    return {name: entry["value"], f"{name}_low": entry["ci"][0], f"{name}_high": entry["ci"][1]}
