"""The operating point: how probabilities become decisions (a threshold, or class weights on the argmax).

Why on validation: a threshold rule such as ``sens=0.90`` must be chosen on data the test never sees,
so the test metrics stay an honest estimate of what the rule gives on new patients. A rule is chosen
once, after training, and stored with the run; ``decisions`` applies it everywhere (test metrics,
predictions.csv, ``predict``). Choosing never fails on a trained run: a rule that validation cannot
support falls back to 0.5 with a warning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import MedTransferError
from .selection import FEW_EXAMPLES

RULE_HELP = ("how probabilities become decisions. Binary: a number in (0, 1) (default 0.5), youden (maximise "
             "sensitivity + specificity - 1), sens=S (validation sensitivity >= S) or spec=S (validation specificity "
             ">= S), chosen on validation; multiclass: argmax "
             "(default) or prior (argmax of p_k / prior_k, the labelled training prior); multilabel: a number")

_OPTION = "(option --threshold)"
_ACCEPTS = {
    "binary": "binary accepts a number between 0 and 1 (e.g. 0.3), youden, sens=S or spec=S (e.g. sens=0.90)",
    "multiclass": "multiclass accepts argmax or prior",
    "multilabel": "multilabel accepts a number between 0 and 1 (e.g. 0.3)",
}
_VAL_RULES = ("youden", "sens=", "spec=")  # rules chosen on the validation split


def parse_rule(rule, task: str) -> str:
    """The rule in canonical text ("0.5", "youden", "sens=0.9", "argmax", "prior"), or a one-line MedTransferError.

    None means the task's default: "0.5" (binary, multilabel) or "argmax" (multiclass).
    """
    if task not in _ACCEPTS:
        raise ValueError(f"parse_rule: unknown task {task!r}; expected one of {', '.join(_ACCEPTS)}.")
    if rule is None:
        return "argmax" if task == "multiclass" else "0.5"
    if isinstance(rule, bool) or not isinstance(rule, (str, int, float, np.number)):
        raise MedTransferError(f"threshold {rule!r} is not valid: {_ACCEPTS[task]} {_OPTION}")
    text = str(rule).strip().lower().replace(" ", "")
    number = _number(text)
    kind = "number" if number is not None else text[:4] + "=S" if text.startswith(("sens=", "spec=")) else text
    allowed = {"binary": ("number", "youden", "sens=S", "spec=S"), "multiclass": ("argmax", "prior"),
               "multilabel": ("number",)}[task]
    known = ("number", "youden", "sens=S", "spec=S", "argmax", "prior")
    if kind not in known:
        raise MedTransferError(f"threshold {str(rule)!r} is not valid: {_ACCEPTS[task]} {_OPTION}")
    if kind not in allowed:
        raise MedTransferError(f"threshold {str(rule)!r} is not valid for a {task} task: {_ACCEPTS[task]} {_OPTION}")
    if kind == "number":
        if not 0 < number < 1:
            raise MedTransferError(f"threshold {str(rule)!r} is not valid: a threshold must lie strictly between 0 "
                                   f"and 1 (e.g. 0.3) {_OPTION}")
        return repr(number)
    if kind in ("sens=S", "spec=S"):
        level = _number(text[5:])
        if level is None or not 0 < level < 1:
            name = kind[:4]
            raise MedTransferError(f"threshold {str(rule)!r} is not valid: {name}=S needs S between 0 and 1 "
                                   f"(e.g. {name}=0.90) {_OPTION}")
        return f"{kind[:4]}={level!r}"
    return kind


def check_rule_syntax(rule) -> str | None:
    """Check a rule before the task is known (a request, an experiment config): its canonical text when
    some task accepts it (None stays None: each task's default), else a one-line MedTransferError.
    ``parse_rule`` checks it against the task once the data are loaded."""
    if rule is None:
        return None
    for task in _ACCEPTS:
        try:
            return parse_rule(rule, task)
        except MedTransferError as exc:
            if task == "binary":
                first = exc
    text = str(rule).strip().lower()
    if _number(text) is not None or text.startswith(("sens=", "spec=")):
        raise first  # a malformed binary rule: its own message says what is wrong
    raise MedTransferError(f"threshold {str(rule)!r} is not valid: use a number between 0 and 1 (e.g. 0.3), youden, "
                           f"sens=S or spec=S (binary), argmax or prior (multiclass) {_OPTION}")


def _number(text: str):
    """The float that ``text`` spells, or None (nan and infinities are not numbers here)."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


@dataclass
class OperatingPoint:
    """A chosen rule and what it decides with: ``threshold`` (binary, multilabel), ``class_weights``
    (multiclass ``prior``), ``positive`` (binary: index of the positive class), the validation counts it
    rests on, and warnings for the run's metrics.json. ``chosen_on`` is "val" when the numbers came from
    the validation split, "fixed" otherwise (a number, argmax, prior, or a fallback)."""

    rule: str
    threshold: float | None
    class_weights: list[float] | None
    positive: int | None
    n_val: int
    n_val_positive: int | None
    n_val_negative: int | None
    warnings: list[str] = field(default_factory=list)
    chosen_on: str = "fixed"

    def to_dict(self, classes) -> dict:
        """The metrics.json / model.json "operating_point" block (the positive class by name)."""
        return {
            "rule": self.rule,
            "threshold": self.threshold,
            "positive": None if self.positive is None else str(list(classes)[self.positive]),
            "chosen_on": self.chosen_on,
            "n_val": self.n_val,
            "n_val_positive": self.n_val_positive,
            "n_val_negative": self.n_val_negative,
            "class_weights": self.class_weights,
        }

    @classmethod
    def from_dict(cls, block: dict, classes) -> "OperatingPoint":
        """The inverse of ``to_dict`` (reading a run back); warnings are not stored in the block."""
        names = [str(c) for c in classes]
        positive = block.get("positive")
        if positive is not None and str(positive) not in names:
            raise MedTransferError(f"operating point: positive class {positive!r} is not one of the run's classes "
                                   f"{', '.join(names)}; the run's model.json looks edited or corrupt")
        return cls(rule=str(block["rule"]), threshold=block.get("threshold"), class_weights=block.get("class_weights"),
                   positive=None if positive is None else names.index(str(positive)), n_val=int(block.get("n_val", 0)),
                   n_val_positive=block.get("n_val_positive"), n_val_negative=block.get("n_val_negative"),
                   chosen_on=block.get("chosen_on", "fixed"))


def choose_operating_point(rule, y_val, prob_val, task: str, positive: int = 1, train_prior=None) -> OperatingPoint:
    """Choose the operating point of ``rule`` (text as ``parse_rule`` accepts) on the validation split.

    binary: a number is the threshold itself; youden maximises sensitivity + specificity - 1 over the
    midpoints between consecutive distinct validation scores (plus both extremes; ties: the threshold
    closest to 0.5); sens=S reaches validation sensitivity >= S (just below the ceil(S * n_pos)-th
    highest score of a validation positive: the midpoint to the next lower validation score); spec=S
    reaches validation specificity >= S (the midpoint above the ceil(S * n_neg)-th lowest negative score). Scores are
    the probabilities of the class at index ``positive``; an example is positive when its score >= threshold.
    multiclass: argmax, or prior (class weights 1 / train_prior, normalised to mean 1; ``train_prior`` is the
    labelled training class distribution, counts or shares). multilabel: a number.
    A validation rule needs positive and negative validation examples; without them it falls back to 0.5
    with a warning, and one resting on fewer than 10 of either gets a warning too.
    """
    rule = parse_rule(rule, task)
    y, p = _validation_arrays(y_val, prob_val, task)
    if task == "multiclass":
        return _multiclass_point(rule, y, p, train_prior)
    if task == "multilabel":
        return OperatingPoint(rule, float(rule), None, None, len(y), None, None, [])
    positive = 1 if positive is None else int(positive)
    if positive not in (0, 1):
        raise ValueError(f"choose_operating_point: positive must be 0 or 1, got {positive}.")
    score, is_pos = p[:, positive], y == positive
    n_pos, n_neg = int(is_pos.sum()), int((~is_pos).sum())
    point = OperatingPoint(rule, None, None, positive, len(y), n_pos, n_neg, [])
    if not rule.startswith(_VAL_RULES):
        point.threshold = float(rule)
        return point
    if n_pos == 0 or n_neg == 0:
        point.threshold = 0.5
        point.warnings.append(f"threshold rule {rule} needs positive and negative validation examples, but validation "
                              f"has {n_pos} positive and {n_neg} negative; the threshold falls back to 0.5")
        return point
    point.threshold, point.chosen_on = _binary_threshold(rule, score, is_pos), "val"
    if min(n_pos, n_neg) < FEW_EXAMPLES:
        point.warnings.append(f"the threshold rests on {n_pos} positive and {n_neg} negative validation examples; "
                              "it may move a lot on new data")
    return point


def _binary_threshold(rule: str, score, is_pos) -> float:
    """The threshold of a validation rule, given both classes are present.

    sens=S: every threshold from just above the next lower validation score up to the ceil(S n_pos)-th
    highest positive score gives the same validation sensitivity and specificity; the midpoint of that
    interval is taken (as youden takes midpoints), so one validation example does not sit exactly on the
    threshold that new patients are decided by. spec=S likewise, between the ceil(S n_neg)-th lowest
    negative score and the next higher validation score."""
    if rule == "youden":
        return _youden(score, is_pos)
    level = float(rule[5:])
    if rule.startswith("sens="):
        kth = np.sort(score[is_pos])[::-1][_count_needed(level, int(is_pos.sum())) - 1]
        below = score[score < kth]
        return float((kth + below.max()) / 2) if below.size else float(kth)
    kth = np.sort(score[~is_pos])[_count_needed(level, int((~is_pos).sum())) - 1]
    above = score[score > kth]
    return float((kth + above.min()) / 2) if above.size else float(np.nextafter(kth, np.inf))


def _count_needed(level: float, n: int) -> int:
    """ceil(level * n), robust to float noise (0.9 * 10 must give 9, not 10)."""
    return min(n, max(1, math.ceil(round(level * n, 9))))


def _youden(score, is_pos) -> float:
    """The candidate threshold with the largest sensitivity + specificity - 1 (ties: closest to 0.5)."""
    distinct = np.unique(score)
    candidates = np.r_[distinct[0], (distinct[:-1] + distinct[1:]) / 2, np.nextafter(distinct[-1], np.inf)]
    pos, neg = np.sort(score[is_pos]), np.sort(score[~is_pos])
    sens = 1 - np.searchsorted(pos, candidates, side="left") / len(pos)  # share of positives >= candidate
    spec = np.searchsorted(neg, candidates, side="left") / len(neg)  # share of negatives below it
    j = sens + spec - 1
    best = np.flatnonzero(j >= j.max() - 1e-12)
    return float(candidates[best[np.argmin(np.abs(candidates[best] - 0.5))]])


def _multiclass_point(rule: str, y, p, train_prior) -> OperatingPoint:
    point = OperatingPoint(rule, None, None, None, len(y), None, None, [])
    if rule == "argmax":
        return point
    if train_prior is None:
        raise MedTransferError("threshold 'prior' needs the labelled training class distribution, and none was "
                               "given; use --threshold argmax or train with labelled examples (option --threshold)")
    prior = np.asarray(train_prior, dtype=float).reshape(-1)
    if prior.shape != (p.shape[1],) or not np.isfinite(prior).all() or (prior < 0).any() or prior.sum() <= 0:
        raise ValueError(f"choose_operating_point: train_prior must hold {p.shape[1]} non-negative numbers, "
                         f"got {list(prior)}.")
    if (prior == 0).any():
        point.warnings.append(f"threshold rule prior needs every class in the labelled training data, but "
                              f"{int((prior == 0).sum())} class(es) have none; decisions fall back to argmax")
        return point
    weights = 1 / (prior / prior.sum())
    point.class_weights = [float(v) for v in weights / weights.mean()]
    return point


def _validation_arrays(y_val, prob_val, task):
    """(y, p) as arrays: y (N,) class indices or (N, K) 0/1, p (N, C); empty validation is allowed."""
    y = np.asarray(y_val)
    p = np.asarray(prob_val, dtype=float)
    if task == "binary" and p.ndim == 1:
        p = np.stack([1 - p, p], axis=1)
    if task != "multilabel" and y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if p.ndim != 2 or len(p) != len(y):
        raise ValueError(f"choose_operating_point: {len(y)} validation labels but probabilities of shape {p.shape}.")
    return y.astype(int), p


def decisions(prob, task: str, point: OperatingPoint) -> np.ndarray:
    """The decided class index per example at ``point`` (binary, multiclass), or (N, K) 0/1 (multilabel).

    binary: the positive index where its probability >= threshold, else the other index; multiclass:
    argmax of prob * class_weights (plain argmax without weights).
    """
    p = np.asarray(prob, dtype=float)
    if task == "binary":
        p = np.stack([1 - p, p], axis=1) if p.ndim == 1 else p
        positive = 1 if point.positive is None else int(point.positive)
        threshold = 0.5 if point.threshold is None else point.threshold
        return np.where(p[:, positive] >= threshold, positive, 1 - positive)
    if task == "multiclass":
        weights = 1.0 if point.class_weights is None else np.asarray(point.class_weights, dtype=float)
        return (p * weights).argmax(axis=1)
    if task == "multilabel":
        return (p >= (0.5 if point.threshold is None else point.threshold)).astype(int)
    raise ValueError(f"decisions: unknown task {task!r}.")
