"""Transferability scores: how well a source model should transfer to a target, read off its frozen
outputs on the target's labelled examples *before* any fine-tuning (`medtransfer rank`). Larger is
better for all three; they rank sources for one target, they are not comparable across targets.

- `logme`: the log marginal likelihood (evidence) of the labels under Bayesian linear regression on the
  source's backbone features (You et al. 2021, "LogME: Practical Assessment of Pre-trained Models for
  Transfer Learning"). Needs features only, so it scores any source (ImageNet, self-supervised, ...).
- `leep`: the log expected empirical prediction (Nguyen et al. 2020): how well the source head's soft
  labels, mapped to the target classes through their empirical conditional, predict the target labels.
- `nce`: the negative conditional entropy -H(Y|Z) of the target label given the source's argmax label
  (Tran et al. 2019).
LEEP and NCE need a source head with known classes (a supervised source).
"""

from __future__ import annotations

import numpy as np

from ..errors import MedTransferError

TASKS = ("binary", "multiclass", "multilabel")
# The reference's fixed-point settings (thuml/LogME, `_fit_fixed_point`): start at alpha = beta = 1, at
# most 11 updates, stop once alpha/beta moves by at most 0.1%; 1e-5 keeps the updates finite on a perfect fit.
MAX_UPDATES, TOLERANCE, EPSILON = 11, 1e-3, 1e-5


def logme(features, y, task: str) -> float:
    """LogME of `features` (N, D) for labels `y`: the maximised log evidence per example, averaged over
    the one-vs-rest targets of the classes present in `y` (multilabel: over the label columns of the
    (N, L) 0/1 matrix). Unchanged by rotating or rescaling the features, reordering the examples, or
    renaming the classes.

    The evidence is maximised as in the authors' reference code (the fixed-point updates of alpha, the
    prior precision of the weights, and beta, the noise precision, on the SVD of the features). It is then
    evaluated exactly at the final alpha and beta, including the null space of the features: when there
    are fewer examples than feature dimensions (the usual case for a small label budget) the reference's
    truncated-SVD version leaves out the (D - rank)/2 * log(alpha) term of the log-determinant, which its
    ICML version (an eigendecomposition of all D dimensions) keeps. The features are first divided by one
    number, their root-mean-square row norm: the maximised evidence does not change with the features'
    scale, but the reference's 1e-5 guard in the updates does, so without it a source whose features are
    larger would score differently (0.84 against 0.39 on the same features x 37, 40 examples x 128)."""
    f = _matrix(features, "features")
    targets = _targets(y, task, len(f))
    scale = np.sqrt((f ** 2).sum(axis=1).mean())
    if scale == 0:
        raise MedTransferError("the features are all zero: the source model gives no signal on these inputs")
    u, s, _ = np.linalg.svd(f / scale, full_matrices=False)
    rank = int((s > s.max() * max(f.shape) * np.finfo(float).eps).sum())
    u, sigma = u[:, :rank], s[:rank] ** 2
    return float(np.mean([_max_evidence(u, sigma, t, f.shape[1])[0] for t in targets.T]))


def _max_evidence(u: np.ndarray, sigma: np.ndarray, y: np.ndarray, dim: int) -> tuple[float, float, float]:
    """(log evidence / N, alpha, beta) of one target vector `y`, from the left singular vectors `u` (N, k)
    and the squared singular values `sigma` (k,) of the (N, dim) feature matrix."""
    n = len(y)
    x2 = (u.T @ y) ** 2  # y's squared coordinates along the feature directions
    outside = max(float(y @ y - x2.sum()), 0.0)  # what no linear function of the features can fit

    def moments(t: float) -> tuple[float, float, float]:
        """gamma (effective number of parameters), |m|^2 and |y - F m|^2 at alpha/beta = t."""
        return ((sigma / (sigma + t)).sum(), (sigma * x2 / (sigma + t) ** 2).sum(),
                (x2 * (t / (sigma + t)) ** 2).sum() + outside)

    alpha = beta = 1.0
    for _ in range(MAX_UPDATES):
        t = alpha / beta
        gamma, m2, res2 = moments(t)
        alpha, beta = gamma / (m2 + EPSILON), (n - gamma) / (res2 + EPSILON)
        if abs(alpha / beta - t) / t <= TOLERANCE:
            break
    _, m2, res2 = moments(alpha / beta)  # the posterior mean at the final alpha, beta
    log_det = np.log(alpha + beta * sigma).sum() + (dim - len(sigma)) * np.log(alpha)
    evidence = (dim * np.log(alpha) + n * np.log(beta) - log_det - beta * res2 - alpha * m2
                - n * np.log(2 * np.pi)) / 2
    return float(evidence / n), float(alpha), float(beta)


def leep(source_probs, y) -> float:
    """LEEP: (1/N) sum_i log sum_z P(y_i | z) theta_z(x_i), with theta(x_i) the source head's class
    probabilities for example i (rows of `source_probs`, (N, C_s)) and P(y | z) the empirical conditional
    of the target label given the source label, P(y, z) = (1/N) sum_{i: y_i = y} theta_z(x_i).
    Unchanged by reordering the source classes, renaming the target classes or reordering the examples."""
    theta = _matrix(source_probs, "source probabilities")
    if (theta < 0).any() or not np.allclose(theta.sum(axis=1), 1.0, atol=1e-4):
        raise MedTransferError("source probabilities must be non-negative and sum to 1 in every row (a softmax "
                               "over the source's classes)")
    labels = _labels(y, len(theta))
    joint = np.stack([theta[labels == k].sum(axis=0) for k in range(labels.max() + 1)]) / len(theta)  # (C_t, C_s)
    marginal = joint.sum(axis=0)
    used = marginal > 0  # a source class no example gives any probability to adds nothing
    conditional = joint[:, used] / marginal[used]  # P(y | z)
    expected = (theta[:, used] * conditional[labels]).sum(axis=1)  # sum_z P(y_i | z) theta_z(x_i)
    return float(np.log(expected).mean())


def nce(source_labels, y) -> float:
    """NCE: -H(Y | Z), the negative conditional entropy of the target label Y given the source model's
    (argmax) label Z, both from their empirical joint distribution over the examples. 0 when Z determines
    Y; -H(Y) when Z says nothing about it."""
    z = _labels(source_labels, None, "source labels")
    labels = _labels(y, len(z))
    joint = np.zeros((labels.max() + 1, z.max() + 1))
    np.add.at(joint, (labels, z), 1.0 / len(z))
    marginal = joint.sum(axis=0)
    filled = joint > 0
    conditional = np.divide(joint, marginal, out=np.ones_like(joint), where=filled)
    return float((joint[filled] * np.log(conditional[filled])).sum())


def _matrix(values, what: str) -> np.ndarray:
    m = np.asarray(values, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] < 2 or m.shape[1] < 1:
        raise MedTransferError(f"{what} must be a matrix (examples x columns) with at least two examples, "
                               f"got shape {m.shape}")
    if not np.isfinite(m).all():
        raise MedTransferError(f"{what} hold NaN or infinite values: the source model gives non-finite outputs "
                               "on these inputs")
    return m


def _labels(y, n: int | None, what: str = "labels") -> np.ndarray:
    """Class labels as 0..C-1 codes in the order of their values (a renaming keeps the partition)."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or (n is not None and len(y) != n) or len(y) == 0:
        raise MedTransferError(f"{what} must be one class per example" + (f" ({n})" if n is not None else "") +
                               f", got shape {y.shape}")
    return np.unique(y, return_inverse=True)[1].reshape(-1)


def _targets(y, task: str, n: int) -> np.ndarray:
    """The regression targets LogME fits, as columns: one-vs-rest per class present, or the label columns."""
    if task not in TASKS:
        raise MedTransferError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    if task == "multilabel":
        targets = np.asarray(y, dtype=np.float64)
        if targets.ndim != 2 or len(targets) != n:
            raise MedTransferError(f"multilabel labels must be a matrix ({n} examples x labels), got shape "
                                   f"{targets.shape}")
        return targets
    codes = _labels(y, n)
    return (codes[:, None] == np.arange(codes.max() + 1)[None, :]).astype(np.float64)
