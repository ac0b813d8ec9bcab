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
