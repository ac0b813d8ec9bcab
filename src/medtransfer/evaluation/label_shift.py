"""Label-shift estimators: the target's class prior from a source model's outputs, without target labels.

Why here and not in the shift diagnosis: the prior-shift strategies correct a model with these same
estimators, and a strategy should not depend on the diagnosis module. BBSE (Lipton, Wang & Smola 2018)
and EM (Saerens, Latinne & Decaestecker 2002) on temperature-calibrated posteriors (Alexandari et al. 2020).
"""

from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """Temperature T minimising the NLL of softmax(logits / T) on labelled (source validation) data."""
    from scipy.optimize import minimize_scalar

    if len(y) == 0 or len(np.unique(y)) < 2:
        return 1.0

    def nll(log_t):
        p = softmax(logits / np.exp(log_t))
        return -np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None)))
    return float(np.exp(minimize_scalar(nll, bounds=(-3, 3), method="bounded").x))


def reweight(prob: np.ndarray, source_prior: np.ndarray, target_prior: np.ndarray) -> np.ndarray:
    """p'(y|x) proportional to p(y|x) * pi_t(y) / pi_s(y): the posterior under the target prior."""
    w = prob * (np.asarray(target_prior) / np.clip(source_prior, 1e-12, None))[None, :]
    return w / np.clip(w.sum(1, keepdims=True), 1e-300, None)


def em_prior(prob: np.ndarray, source_prior: np.ndarray, max_iter: int = 1000, tol: float = 1e-8) -> np.ndarray:
    """Saerens et al. (2002): alternate posterior re-weighting and prior = mean posterior until the
    prior stops moving. `prob`: the source model's (calibrated) posteriors on unlabelled target data."""
    source_prior = np.asarray(source_prior, float)
    prior = source_prior.copy()
    for _ in range(max_iter):
        new = reweight(prob, source_prior, prior).mean(0)
        if np.abs(new - prior).max() < tol:
            return new
        prior = new
    return prior


def confusion_given_label(y: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """C[i, j] = P(predicted i | true j) on labelled data."""
    joint = np.zeros((n_classes, n_classes))
    np.add.at(joint, (pred, y), 1.0)
    return joint / np.clip(joint.sum(0, keepdims=True), 1, None)


def bbse_prior(y_val: np.ndarray, pred_val: np.ndarray, pred_target: np.ndarray, n_classes: int) -> np.ndarray:
    """Lipton, Wang & Smola (2018): with C = P(predicted | true) from labelled source data and
    mu = the target's predicted-label frequencies, solve C pi_t = mu (least squares), then project
    onto the probability simplex (clip at 0, normalise)."""
    conf = confusion_given_label(np.asarray(y_val), np.asarray(pred_val), n_classes)
    mu = np.bincount(np.asarray(pred_target), minlength=n_classes) / max(len(pred_target), 1)
    prior = np.linalg.lstsq(conf, mu, rcond=None)[0]
    prior = np.clip(prior, 0, None)
    return prior / prior.sum() if prior.sum() > 0 else np.full(n_classes, 1.0 / n_classes)
