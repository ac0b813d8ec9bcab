"""The metric registry and the per-task context its metrics read.

Why a context: metrics of one task share intermediate arrays (the weighted confusion counts, the
per-class AUCs). The context computes each on first use and keeps it, so a metric is a one-line
formula over named quantities and adding one costs no recomputation. Every quantity is a function
of the bootstrap multiplicities ``w`` (B, N), so the same metric serves the point estimate
(``w = 1``) and the resamples.
"""

from __future__ import annotations

import itertools
from functools import cached_property

import numpy as np

from ...registry import Registry
from .kernels import _div, _nanmean, _newton, _weighted_auc

TASKS = ("binary", "multiclass", "multilabel")


class Metric:
    """One metric name; its formula per task (a metric such as accuracy is defined differently per task)."""

    def __init__(self, name: str):
        self.name = name
        self.fns: dict = {}  # task -> fn(context) -> (B,) array, or a dict of named (B,) arrays
        self.order: dict = {}  # task -> registration sequence number: the output order within the task

    @property
    def tasks(self) -> tuple:
        return tuple(self.fns)


METRICS = Registry("metric")  # name -> Metric
_SEQUENCE = itertools.count()


def register_metric(name: str, tasks=TASKS):
    """Decorator: ``@register_metric("ppv", tasks=("binary",))`` on ``fn(context) -> (B,) array``.

    A function may also return ``{name: (B,) array}`` (several outputs, e.g. one AUC per label); its
    own name then only orders it. Registering an existing name for other tasks adds those tasks.
    """
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"register_metric({name!r}): unknown task(s) {unknown}; expected some of {', '.join(TASKS)}.")

    def add(fn):
        metric = METRICS.get(name) or METRICS.register(name)(Metric(name))
        for task in tasks:
            metric.fns[task] = fn
            metric.order[task] = next(_SEQUENCE)
        return fn
    return add


def metric_functions(task: str) -> list:
    """[(name, fn)] registered for ``task``, in registration order."""
    found = [(m.order[task], name, m.fns[task]) for name, m in METRICS.items() if task in m.fns]
    return [(name, fn) for _, name, fn in sorted(found, key=lambda item: item[0])]


def evaluate(task: str, w, y, p, threshold: float, class_weights=None, classes=None) -> dict:
    """Every registered metric of ``task`` for the rows of ``w``: {name: (B,) array}.

    ``class_weights`` (multiclass): decide by argmax(p * weights). ``classes``: the class names that
    per-class outputs are named after (their index as text when None).
    """
    context = CONTEXTS[task](w, y, p, threshold, class_weights, classes)
    out = {}
    for name, fn in metric_functions(task):
        value = fn(context)
        out.update(value if isinstance(value, dict) else {name: value})
    return out


# ----------------------------------------------------------------------------- contexts


class Context:
    """Inputs of one evaluation: w (B, N) multiplicities, labels y, probabilities p (N, C), threshold,
    optional class weights of the multiclass decision and the class names."""
    task = ""

    def __init__(self, w, y, p, threshold: float, class_weights=None, classes=None):
        self.w, self.y, self.p, self.threshold = w, y, p, threshold
        self.class_weights, self.classes = class_weights, classes

    @cached_property
    def class_names(self) -> list:
        """The name of each probability column: ``classes`` as text, else the column index as text."""
        if self.classes is None:
            return [str(k) for k in range(self.p.shape[1])]
        return [str(c) for c in self.classes]

    @cached_property
    def n(self):
        """Resampled test-set size per row of w, (B,)."""
        return self.w.sum(axis=1)


class BinaryContext(Context):
    """y (N,) in {0, 1}; q = p[:, 1] is the positive-class probability, positive when q >= threshold.

    A positive class at index 0 is handled before the context: compute_metrics flips labels and columns.
    """
    task = "binary"

    @cached_property
    def pos(self):
        return self.y == 1

    @cached_property
    def q(self):
        return self.p[:, 1]

    @cached_property
    def pred(self):
        return self.q >= self.threshold

    @cached_property
    def counts(self):
        """tp, fp, fn, tn per resample, each (B,): one BLAS product gives the whole confusion matrix."""
        pred, pos = self.pred, self.pos
        cells = np.stack([pred & pos, pred & ~pos, ~pred & pos, ~pred & ~pos], axis=1).astype(float)
        return tuple((self.w @ cells).T)

    tp = property(lambda self: self.counts[0])
    fp = property(lambda self: self.counts[1])
    fn = property(lambda self: self.counts[2])
    tn = property(lambda self: self.counts[3])

    @cached_property
    def sensitivity(self):
        return _div(self.tp, self.tp + self.fn)

    @cached_property
    def specificity(self):
        return _div(self.tn, self.tn + self.fp)

    @cached_property
    def recalibration(self):
        """(intercept, slope) of the logistic recalibration y ~ a + b logit(q), each (B,)."""
        return _newton(self.w, self.y, self.q, slope=True)


class MulticlassContext(Context):
    """y (N,) class indices; the decision is the arg-max class of p, or of p * class_weights when given
    (a prior-corrected decision); counts are per class, (B, C)."""
    task = "multiclass"

    @cached_property
    def pred(self):
        return (self.p if self.class_weights is None else self.p * self.class_weights).argmax(axis=1)

    @cached_property
    def pred_prob(self):
        """The probability the model gives its decided class (the top-label confidence), (N,)."""
        return self.p[np.arange(len(self.p)), self.pred]

    @cached_property
    def true1h(self):
        return np.eye(self.p.shape[1])[self.y]

    @cached_property
    def pred1h(self):
        return np.eye(self.p.shape[1])[self.pred]

    @cached_property
    def tp(self):
        return self.w @ (self.true1h * self.pred1h)

    @cached_property
    def fn(self):
        return self.w @ self.true1h - self.tp

    @cached_property
    def fp(self):
        return self.w @ self.pred1h - self.tp

    @cached_property
    def tn(self):
        return self.n[:, None] - self.tp - self.fn - self.fp

    @cached_property
    def recall(self):
        """Macro recall; classes absent from the resample are left out, as in sklearn."""
        return _nanmean(_div(self.tp, self.tp + self.fn))

    @cached_property
    def aucs(self):
        """One-vs-rest AUC per class, (B, C)."""
        return np.stack([_weighted_auc(self.w, self.y == k, self.p[:, k]) for k in range(self.p.shape[1])], axis=1)


class MultilabelContext(Context):
    """y (N, K) in {0, 1}; label k is predicted when p[:, k] >= threshold; counts are per label, (B, K)."""
    task = "multilabel"

    @cached_property
    def n(self):
        """(B, 1), to divide per-label sums."""
        return self.w.sum(axis=1)[:, None]

    @cached_property
    def pos(self):
        return self.y == 1

    @cached_property
    def pred(self):
        return self.p >= self.threshold

    @cached_property
    def tp(self):
        return self.w @ (self.pred & self.pos).astype(float)

    @cached_property
    def fp(self):
        return self.w @ (self.pred & ~self.pos).astype(float)

    @cached_property
    def fn(self):
        return self.w @ (~self.pred & self.pos).astype(float)

    @cached_property
    def aucs(self):
        """AUC per label, (B, K)."""
        return np.stack([_weighted_auc(self.w, self.pos[:, k], self.p[:, k]) for k in range(self.y.shape[1])],
                        axis=1)


CONTEXTS = {c.task: c for c in (BinaryContext, MulticlassContext, MultilabelContext)}
