"""Weighted metric kernels shared by the registered metrics and the paired-AUC helpers.

Each takes w (B, N) bootstrap multiplicities and returns (B,) or (B, K) arrays; nan marks "undefined".
"""

from __future__ import annotations

import numpy as np


def _div(a, b):
    """a / b with nan where b == 0 (an undefined rate, e.g. sensitivity without positives)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1), np.nan)


def _nanmean(a, axis=-1):
    """Mean over the defined entries (sklearn's macro convention for absent classes); nan if none."""
    ok = np.isfinite(a)
    return _div(np.where(ok, a, 0).sum(axis), ok.sum(axis))


def _weighted_auc(w, pos, score):
    """Mann–Whitney AUC per row of w, with average ranks for ties; nan where a class is absent.

    Copies of a sample share its score, so a tie group starting after ``before`` (weighted) samples and
    holding ``total`` copies has average rank ``before + (total + 1) / 2``. One sort serves all rows.
    """
    order = np.argsort(score, kind="stable")
    s, ws, ps = score[order], w[:, order], pos[order].astype(float)
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # first index of each tie group
    group = np.cumsum(np.r_[True, s[1:] != s[:-1]]) - 1  # tie group of each sorted sample
    cum = np.cumsum(ws, axis=1)
    before = np.concatenate([np.zeros((len(w), 1)), cum[:, starts[1:] - 1]], axis=1)
    total = np.concatenate([before[:, 1:], cum[:, -1:]], axis=1) - before
    midrank = before + (total + 1) / 2
    n1 = ws @ ps  # weighted count of positives per resample
    n0 = ws.sum(axis=1) - n1
    rank_sum = (ws * midrank[:, group]) @ ps
    return _div(rank_sum - n1 * (n1 + 1) / 2, n1 * n0)


def _ece(w, target, conf, n_bins=10):
    """Weighted ECE: sum over bins of |sum(target) - sum(conf)| / N, bins (lo, hi] on [0, 1]."""
    bins = np.digitize(conf, np.linspace(0, 1, n_bins + 1)[1:-1], right=True)
    onehot = np.eye(n_bins)[bins]  # (N, n_bins)
    gap = w @ (onehot * (target - conf)[:, None])
    return np.abs(gap).sum(axis=1) / w.sum(axis=1)



_LOG_EPS = 1e-7  # log-loss clips probabilities here: one confident mistake costs at most -log(1e-7) ~ 16
_CAL_EPS = 1e-6  # calibration slope / intercept clip q here before taking its logit
_NEWTON_STEPS = 50  # an upper bound; a row stops once its step is below _NEWTON_TOL (typically after 4-7)
_NEWTON_TOL = 1e-7  # Newton converges quadratically: after a step this small the error is ~1e-14
_MAX_STEP = 4.0  # damping: one step moves a coefficient by at most this (the likelihood is concave)


def _log_loss(w, target, prob):
    """Weighted mean of -log(probability of the outcome); ``target`` (0/1) marks the outcome of ``prob``.

    prob is clipped to [1e-7, 1 - 1e-7]. Works per column too: target and prob (N,) or (N, K) give (B,) or (B, K).
    """
    q = np.clip(prob, _LOG_EPS, 1 - _LOG_EPS)
    loss = -(target * np.log(q) + (1 - target) * np.log1p(-q))
    return (w @ loss) / (w.sum(axis=1) if loss.ndim == 1 else w.sum(axis=1)[:, None])


def _logit(q):
    q = np.clip(q, _CAL_EPS, 1 - _CAL_EPS)
    return np.log(q) - np.log1p(-q)


def _expit(x):
    """1 / (1 + exp(-x)); accurate in both tails (exp overflowing to inf gives the right 0)."""
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))


def _newton(w, y, q, slope: bool):
    """Logistic recalibration of 0/1 labels y on z = logit(q), one fit per row of the multiplicities w.

    slope=False: the intercept a of ``y ~ a + offset(z)`` (calibration-in-the-large); returns (a, None).
    slope=True: (a, b) of ``y ~ a + b z``; b is the calibration slope.
    Damped Newton (IRLS) from a=0 and b=0 (the usual start; b=1 can overshoot on badly calibrated
    models), only on rows not yet converged. A row with one class only, a slope fit on a resample whose
    classes z separates (the MLE is infinite), or a fit that does not converge, is nan.
    """
    z = _logit(q)
    a, b = np.zeros(len(w)), np.zeros(len(w)) if slope else np.ones(len(w))
    ok = _both_classes(w, y) & (~_separated(w, y, z) if slope else True)
    active = ok.copy()
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for _ in range(_NEWTON_STEPS):
            rows = np.flatnonzero(active)
            if rows.size == 0:
                break
            wr = w if rows.size == len(w) else w[rows]
            mu = _expit(a[rows, None] + (b[rows, None] * z if slope else z))
            s = mu * (1 - mu)
            s *= wr  # information weights, (R, N)
            r = y - mu
            r *= wr  # score weights
            g0, h00 = r.sum(axis=1), s.sum(axis=1)
            if slope:
                g1, h01, h11 = r @ z, s @ z, s @ (z * z)
                det = h00 * h11 - h01 * h01
                da, db = (h11 * g0 - h01 * g1) / det, (h00 * g1 - h01 * g0) / det
            else:
                da, db = g0 / h00, np.zeros_like(g0)
            da, db = (np.clip(np.nan_to_num(d, nan=np.inf), -_MAX_STEP, _MAX_STEP) for d in (da, db))
            a[rows] += da
            b[rows] += db
            active[rows] = np.maximum(np.abs(da), np.abs(db)) >= _NEWTON_TOL
    good = ok & ~active & np.isfinite(a) & np.isfinite(b)
    a, b = np.where(good, a, np.nan), np.where(good, b, np.nan)
    return (a, b) if slope else (a, None)


def _both_classes(w, y):
    """(B,) True where the resample holds both classes."""
    n1 = w @ y
    return (n1 > 0) & (n1 < w.sum(axis=1))


def _separated(w, y, z):
    """(B,) True where z separates the resampled classes (every positive on one side of every negative, ties
    allowed): no finite logistic slope fits such a resample."""
    drawn, pos = w > 0, y.astype(bool)
    lo1 = np.where(drawn & pos, z, np.inf).min(axis=1)
    hi1 = np.where(drawn & pos, z, -np.inf).max(axis=1)
    lo0 = np.where(drawn & ~pos, z, np.inf).min(axis=1)
    hi0 = np.where(drawn & ~pos, z, -np.inf).max(axis=1)
    return (hi0 <= lo1) | (hi1 <= lo0)
