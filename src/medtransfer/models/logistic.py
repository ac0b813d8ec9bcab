"""The one logistic-regression fit: standardised features, C chosen on validation from a small grid.

Why one helper: the linear probe, the tabular baselines and the shift diagnosis's source model are all
"scikit-learn logistic regression, C picked on held-out data". They differ only in what picks C
(validation AUC for a classifier we rank with; validation log-loss for a probability model whose
calibration matters) and in how many iterations they allow, so those are the two knobs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..defaults import C_GRID
from ..errors import MedTransferError
from ..evaluation.selection import selection_key

MISSING_CLASS = "a class is missing from the labelled training examples; raise the budget"
CRITERIA = ("auc", "log_loss")


@dataclass
class LogisticFit:
    """The chosen fit. coef / bias act on standardised inputs ((x - mean) / std); for a binary task they
    are the two rows [-w/2, w/2] (softmax over them = sigmoid(w x + b)), as a two-output head expects."""
    mean: np.ndarray
    std: np.ndarray
    classifiers: list  # one LogisticRegression, or one per label (multilabel)
    coef: np.ndarray  # (n_outputs, n_features)
    bias: np.ndarray  # (n_outputs,)
    c: float
    score: float  # the criterion on validation for the chosen C (auc: higher is better; log_loss: lower)
    multilabel: bool = False

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Decision values for raw (unstandardised) inputs; binary: [-z/2, z/2], so softmax = sigmoid(z)."""
        z_in = (x - self.mean) / self.std
        if self.multilabel:
            return np.stack([f.decision_function(z_in) for f in self.classifiers], axis=1)
        z = self.classifiers[0].decision_function(z_in)
        return np.c_[-z / 2, z / 2] if z.ndim == 1 else z

    def folded(self) -> tuple[np.ndarray, np.ndarray]:
        """(weight, bias) acting on raw inputs: the standardisation folded into a linear head."""
        weight = self.coef / self.std[None, :]
        return weight, self.bias - weight @ self.mean


def full_proba(clf, x: np.ndarray, n_classes: int) -> np.ndarray:
    """predict_proba with a column for every class, zeros for classes the fit never saw."""
    prob = np.zeros((len(x), n_classes))
    prob[:, clf.classes_] = clf.predict_proba(x)
    return prob


def fit_logistic(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray, task: str,
                 n_outputs: int, seed: int = 0, criterion: str = "auc", max_iter: int = 2000,
                 grid=C_GRID, class_weight: str = "none", standardize: bool = True,
                 scale_x: np.ndarray | None = None) -> LogisticFit:
    """Logistic regression on standardised features for each C in `grid`; keeps the C whose validation
    `criterion` is best ("auc": `selection_key`, i.e. AUC with ties broken by balanced accuracy and
    log-loss; "log_loss": lowest), the first on ties. Multilabel: one binary fit per label (criterion
    "auc" only). `class_weight="balanced"`: scikit-learn's balanced class weights (`--class-weight`).
    `standardize=False`: the features as they are (TF-IDF rows, already L2-normalised and sparse).
    `scale_x`: the rows whose mean and std standardise the features (default `train_x`), e.g. the target's
    unlabelled training inputs, whose statistics are steadier than those of a few labelled rows."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss

    if criterion not in CRITERIA:
        raise ValueError(f"fit_logistic: unknown criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")
    multilabel = task == "multilabel"
    if multilabel and criterion != "auc":
        raise ValueError("fit_logistic: a multilabel task is chosen by criterion 'auc'")
    weighting = "balanced" if class_weight == "balanced" else None
    if standardize:
        reference = train_x if scale_x is None else scale_x
        mean, std = reference.mean(0), reference.std(0) + 1e-6
    else:
        mean, std = np.zeros(train_x.shape[1], train_x.dtype), np.ones(train_x.shape[1], train_x.dtype)
    train_z, val_z = (train_x - mean) / std, (val_x - mean) / std
    best, best_key = None, None
    for c in grid:
        if multilabel:
            fits = [LogisticRegression(C=c, max_iter=max_iter, class_weight=weighting).fit(train_z, train_y[:, j])
                    for j in range(train_y.shape[1])]
            coef = np.concatenate([f.coef_ for f in fits]); bias = np.concatenate([f.intercept_ for f in fits])
            prob = 1 / (1 + np.exp(-(val_z @ coef.T + bias)))
        else:
            clf = LogisticRegression(C=c, max_iter=max_iter, random_state=seed,
                                     class_weight=weighting).fit(train_z, train_y)
            fits, coef, bias = [clf], clf.coef_, clf.intercept_
            if coef.shape[0] == 1:  # binary: softmax over [-z/2, z/2] equals sigmoid(z)
                coef, bias = np.concatenate([-coef / 2, coef / 2]), np.array([-bias[0] / 2, bias[0] / 2])
            if len(clf.classes_) < n_outputs:
                raise MedTransferError(MISSING_CLASS)
        if criterion == "auc":
            key = selection_key(val_y, prob if multilabel else full_proba(clf, val_z, n_outputs), task)
            score = key[0]
            better = best is None or key > best_key
        else:
            score = log_loss(val_y, clf.predict_proba(val_z), labels=list(range(n_outputs)))
            better = best is None or score < best.score
        if better:
            best = LogisticFit(mean, std, fits, coef, bias, c, score, multilabel)
            best_key = key if criterion == "auc" else None
    return best
