"""Small statistics the analyses share: split intervals, permutation p-values, Benjamini-Hochberg, AUROC.

All numpy, vectorised; NaN where a quantity is undefined (no permutations, one class).
"""

from __future__ import annotations

import numpy as np


def split_interval(scores: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Central ``level`` interval of a metric over random train/test splits (percentiles).

    It is the range the test score falls in for 95% of random 80/20 splits of these questions:
    the split-to-split spread the reference reports as a std, not a confidence interval for a
    new sample of questions.

    Example:
        >>> [round(v, 6) for v in split_interval(np.arange(101.0))]
        [2.5, 97.5]
    """
    s = np.asarray(scores, dtype=np.float64)
    s = s[np.isfinite(s)]
    if len(s) == 0:
        return float("nan"), float("nan")
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(s, [tail, 100 - tail])
    return float(lo), float(hi)


def permutation_p(observed: float, null: np.ndarray) -> float:
    """One-sided permutation p-value ``(1 + #(null >= observed)) / (1 + P)``; NaN without a null.

    Example:
        >>> permutation_p(0.5, np.array([0.1, 0.6, 0.2, 0.0]))
        0.4
    """
    null = np.asarray(null, dtype=np.float64)
    null = null[np.isfinite(null)]  # an undefined null copy is no evidence either way (NaN >= x is False)
    if null.size == 0 or not np.isfinite(observed):
        return float("nan")
    return float((1 + np.count_nonzero(null >= observed)) / (1 + null.size))


def null_quantile(null: np.ndarray, q: float = 0.95) -> float:
    """The ``q`` quantile of a permutation null (NaN when empty).

    Example:
        >>> null_quantile(np.arange(101.0))
        95.0
    """
    null = np.asarray(null, dtype=np.float64)
    null = null[np.isfinite(null)]
    return float(np.quantile(null, q)) if null.size else float("nan")


def max_null_p(observed: float, nulls) -> float:
    """Permutation p-value of the best of several layers, corrected for picking it (family-wise).

    ``nulls`` (layers, P): the permutation null of each layer, column ``j`` the SAME permuted target
    in every layer (as the sweeps draw them). The best layer's score is compared with the maximum
    over layers of each permuted copy (Westfall-Young max-T): the chance that some layer scores this
    well with no signal at all, not only the chosen one. Layers whose null is all NaN are left out.

    Example:
        >>> nulls = np.array([[0.1, 0.3, 0.0, 0.2], [0.2, 0.1, 0.4, 0.0]])
        >>> max_null_p(0.35, nulls)  # maxima 0.2, 0.3, 0.4, 0.2: one of 4 reaches 0.35
        0.4
    """
    nulls = np.atleast_2d(np.asarray(nulls, dtype=np.float64))
    nulls = nulls[np.isfinite(nulls).any(axis=1)]
    if nulls.size == 0:
        return float("nan")
    with np.errstate(invalid="ignore"):
        maxima = np.nanmax(np.where(np.isfinite(nulls), nulls, -np.inf), axis=0)  # (P,)
    return permutation_p(observed, np.where(np.isfinite(maxima), maxima, np.nan))


def benjamini_hochberg(p_values) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values), same order; NaNs stay NaN and do not count.

    Example:
        >>> benjamini_hochberg([0.01, 0.04, 0.03, 0.5]).round(4).tolist()
        [0.04, 0.0533, 0.0533, 0.5]
    """
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    if len(ok) == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    m = len(order)
    scaled = p[order] * m / np.arange(1, m + 1)
    scaled = np.minimum.accumulate(scaled[::-1])[::-1]        # monotone from the largest p down
    out[order] = np.minimum(scaled, 1.0)
    return out


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n along the last axis, ties given their average rank (as scipy's rankdata).

    Example:
        >>> average_ranks(np.array([[3.0, 1.0, 3.0, 2.0]])).tolist()
        [[3.5, 1.0, 3.5, 2.0]]
    """
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))        # (k, n)
    k, n = x.shape
    order = np.argsort(x, axis=1, kind="stable")
    s = np.take_along_axis(x, order, axis=1)
    new_group = np.ones((k, n), dtype=bool)
    new_group[:, 1:] = s[:, 1:] != s[:, :-1]
    gid = np.cumsum(new_group, axis=1) - 1 + (np.arange(k) * n)[:, None]   # (k, n) globally unique group ids
    pos = np.broadcast_to(np.arange(1, n + 1, dtype=np.float64), (k, n))
    with np.errstate(invalid="ignore"):  # ids no row uses count 0: 0/0 there, never read
        mean_rank = np.bincount(gid.ravel(), weights=pos.ravel()) / np.bincount(gid.ravel())
    ranks = np.empty((k, n))
    np.put_along_axis(ranks, order, mean_rank[gid], axis=1)
    return ranks


def auroc(scores: np.ndarray, labels: np.ndarray) -> np.ndarray | float:
    """Area under the ROC curve (Mann-Whitney U / n1 n0), ties counted half; batched over leading axes.

    scores: (n,) or (k, n); labels: (n,) or (k, n) of 0/1. NaN where a row has one class only.

    Example:
        >>> auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]))
        0.75
    """
    s = np.asarray(scores, dtype=np.float64)
    single = s.ndim == 1
    s = np.atleast_2d(s)
    y = np.broadcast_to(np.asarray(labels).astype(bool), s.shape)
    n1 = y.sum(axis=1).astype(np.float64)
    n0 = y.shape[1] - n1
    r = average_ranks(s)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = ((r * y).sum(axis=1) - n1 * (n1 + 1) / 2) / (n1 * n0)
    auc = np.where((n1 > 0) & (n0 > 0), auc, np.nan)
    return float(auc[0]) if single else auc
