"""Small statistics for inspecting runs: intervals, calibration, ranking, paired tests, similarity.

Pure functions of numpy arrays; no dataset access here. Confidences are probabilities in [0, 1]
(divide the 0-100 ``self_confidence`` column by 100), ``correct`` is a boolean array.
scikit-learn (AUROC) and scipy (Spearman, Wilcoxon) are imported only by the functions that use
them; :func:`require_analysis` turns their absence into a :class:`UserError`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np

from ...errors import UserError

ANALYSIS_HINT = "pip install hf_introspect[analysis]"

# Edges (as probabilities) of the 8 native confidence bins S-Z: <5%, 5-10%, ..., 80-90%, >90%.
NATIVE_BIN_EDGES = (0.0, 0.05, 0.10, 0.20, 0.40, 0.60, 0.80, 0.90, 1.0)
Z95 = 1.959963984540054  # two-sided 95% normal quantile


def require_analysis(*modules: str) -> None:
    """Raise a UserError naming the extra to install when an optional package is missing.

    Example:
        >>> require_analysis("numpy")
    """
    names = {"sklearn": "scikit-learn"}
    for module in modules or ("sklearn", "scipy"):
        try:
            __import__(module)
        except ImportError as exc:
            raise UserError(f"inspecting runs needs {names.get(module, module)}, which is not installed; "
                            f"run: {ANALYSIS_HINT}") from exc


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% by default).

    Unlike the normal approximation it stays inside [0, 1] and is sensible for 0/n and n/n.
    Returns (nan, nan) when n == 0.

    Example:
        >>> lo, hi = wilson_interval(7, 10)
        >>> round(lo, 4), round(hi, 4)
        (0.3968, 0.8922)
        >>> wilson_interval(0, 0)
        (nan, nan)
    """
    if n <= 0:
        return (math.nan, math.nan)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if successes <= 0 else max(0.0, centre - half)
    hi = 1.0 if successes >= n else min(1.0, centre + half)
    return (lo, hi)


def _clean(confidence, correct) -> tuple[np.ndarray, np.ndarray]:
    conf = np.asarray(confidence, dtype=np.float64).ravel()
    y = np.asarray(correct, dtype=bool).ravel()
    if conf.shape != y.shape:
        raise ValueError(f"confidence and correct differ in length ({conf.size} vs {y.size})")
    keep = np.isfinite(conf)
    return np.clip(conf[keep], 0.0, 1.0), y[keep]


def bin_edges(bins: int | Sequence[float]) -> np.ndarray:
    """``n`` equal-width bins over [0, 1], or the given edges.

    Example:
        >>> bin_edges(4).tolist()
        [0.0, 0.25, 0.5, 0.75, 1.0]
    """
    if isinstance(bins, (int, np.integer)):
        return np.linspace(0.0, 1.0, int(bins) + 1)
    edges = np.asarray(bins, dtype=np.float64)
    if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError(f"bin edges must be increasing, got {list(bins)}")
    return edges


def reliability_table(confidence, correct, bins: int | Sequence[float] = 10) -> list[dict]:
    """Per-bin count, mean confidence and accuracy (the points of a reliability diagram).

    Bins are closed on the left, open on the right, except the last, which includes 1.0.
    Empty bins are kept with ``count`` 0 and nan means.

    Example:
        >>> rows = reliability_table([0.1, 0.3, 0.8, 0.9], [False, True, True, True], bins=2)
        >>> [(r["count"], round(r["confidence"], 2), r["accuracy"]) for r in rows]
        [(2, 0.2, 0.5), (2, 0.85, 1.0)]
    """
    conf, y = _clean(confidence, correct)
    edges = bin_edges(bins)
    idx = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, len(edges) - 2)
    rows = []
    for b in range(len(edges) - 1):
        sel = idx == b
        n = int(sel.sum())
        rows.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "count": n,
                     "confidence": float(conf[sel].mean()) if n else math.nan,
                     "accuracy": float(y[sel].mean()) if n else math.nan})
    return rows


def ece(confidence, correct, bins: int | Sequence[float] = 10) -> float:
    """Expected calibration error: sum over bins of (bin share) x |accuracy - mean confidence|.

    ``bins`` is a number of equal-width bins or explicit edges, e.g. :data:`NATIVE_BIN_EDGES`
    (the 8 confidence bins the model was asked to choose from). nan for no data.

    Example (hand-computed: bin [0, .5) holds 0.1, 0.3 -> |0.5 - 0.2| = 0.3; bin [.5, 1] holds
    0.8, 0.9 -> |1.0 - 0.85| = 0.15; ECE = 0.5 * 0.3 + 0.5 * 0.15 = 0.225):

        >>> round(ece([0.1, 0.3, 0.8, 0.9], [False, True, True, True], bins=2), 6)
        0.225
    """
    table = reliability_table(confidence, correct, bins)
    total = sum(r["count"] for r in table)
    if total == 0:
        return math.nan
    return float(sum(r["count"] / total * abs(r["accuracy"] - r["confidence"]) for r in table if r["count"]))


def brier(confidence, correct) -> float:
    """Brier score: mean squared difference between confidence and the 0/1 outcome (lower is better).

    Example:
        >>> round(brier([0.1, 0.3, 0.8, 0.9], [False, True, True, True]), 4)
        0.1375
    """
    conf, y = _clean(confidence, correct)
    return float(np.mean((conf - y) ** 2)) if conf.size else math.nan


def auroc(scores, labels) -> float:
    """Area under the ROC curve of ``scores`` for the boolean ``labels`` (scikit-learn).

    The probability that a random positive scores above a random negative (ties count half).
    nan when only one class is present (it is undefined), or non-finite scores are all there is.

    Example:
        >>> auroc([0.1, 0.4, 0.35, 0.8], [False, False, True, True])
        0.75
        >>> auroc([0.1, 0.2], [True, True])
        nan
    """
    from sklearn.metrics import roc_auc_score

    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=bool).ravel()
    keep = np.isfinite(s)
    s, y = s[keep], y[keep]
    if y.size == 0 or y.all() or not y.any():
        return math.nan
    return float(roc_auc_score(y, s))


def spearman(x, y) -> tuple[float, float]:
    """Spearman rank correlation and its two-sided p-value (scipy); (nan, nan) when undefined
    (fewer than 3 pairs, or a constant input).

    Example:
        >>> rho, p = spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7])
        >>> round(rho, 4)
        0.8208
    """
    from scipy.stats import spearmanr

    a = np.asarray(x, dtype=np.float64).ravel()
    b = np.asarray(y, dtype=np.float64).ravel()
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    if a.size < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return (math.nan, math.nan)
    res = spearmanr(a, b)
    return (float(res.statistic), float(res.pvalue))


def mcnemar(b: int, c: int, exact_below: int = 25) -> dict:
    """McNemar's test for paired correctness of two models on the same questions.

    ``b`` = questions only the first model gets right, ``c`` = only the second. With fewer than
    ``exact_below`` discordant pairs the exact two-sided binomial test (b ~ Bin(b + c, 1/2)) is
    used, otherwise the chi-square statistic with continuity correction, (|b - c| - 1)^2 / (b + c),
    on 1 degree of freedom. No discordant pairs -> p = 1.

    Example (hand-computed: 2 * P(X <= 1), X ~ Bin(8, 1/2) = 2 * 9/256 = 0.0703125):

        >>> mcnemar(1, 7)["p_value"]
        0.0703125
        >>> r = mcnemar(10, 30)   # (|10 - 30| - 1)^2 / 40 = 9.025
        >>> r["method"], r["statistic"], round(r["p_value"], 5)
        ('chi2_cc', 9.025, 0.00266)
    """
    b, c = int(b), int(c)
    n = b + c
    if n == 0:
        return {"b": b, "c": c, "method": "none", "statistic": 0.0, "p_value": 1.0}
    if n < exact_below:
        k = min(b, c)
        tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
        return {"b": b, "c": c, "method": "exact_binomial", "statistic": float(k), "p_value": min(1.0, 2 * tail)}
    stat = (abs(b - c) - 1) ** 2 / n
    return {"b": b, "c": c, "method": "chi2_cc", "statistic": float(stat),
            "p_value": float(math.erfc(math.sqrt(stat / 2)))}  # chi2(1) survival function


def wilcoxon_p(differences) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired differences (scipy); nan when all are 0
    or fewer than 2 are finite.

    Example:
        >>> wilcoxon_p([0, 0, 0])
        nan
    """
    from scipy.stats import wilcoxon

    d = np.asarray(differences, dtype=np.float64).ravel()
    d = d[np.isfinite(d)]
    if d.size < 2 or not np.any(d != 0):
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(wilcoxon(d).pvalue)


def describe(values) -> dict:
    """Count, mean, standard deviation (ddof=0), median, min and max of the finite values.

    Example:
        >>> describe([1, 2, 3, float("nan")])["mean"], describe([1, 2, 3])["std"] ** 2
        (2.0, 0.6666666666666666)
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"n": 0, "mean": math.nan, "std": math.nan, "median": math.nan, "min": math.nan, "max": math.nan}
    return {"n": int(v.size), "mean": float(v.mean()), "std": float(v.std()), "median": float(np.median(v)),
            "min": float(v.min()), "max": float(v.max())}


def label_counts(values, labels: Sequence[str]) -> dict[str, int]:
    """How often each label occurs (labels in the given order; others counted under ``"other"``
    only when present).

    Example:
        >>> label_counts(["A", "C", "A", None], "ABCD")
        {'A': 2, 'B': 0, 'C': 1, 'D': 0, 'other': 1}
    """
    counts = {label: 0 for label in labels}
    other = 0
    for v in values:
        if v in counts:
            counts[v] += 1
        else:
            other += 1
    if other:
        counts["other"] = other
    return counts


def row_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of matching rows of two (n, d) arrays, computed in float64.

    A row whose norm is 0 (or non-finite) in either array gives nan.

    Example:
        >>> row_cosine(np.array([[1.0, 0.0], [3.0, 4.0]]), np.array([[0.0, 2.0], [-3.0, -4.0]])).tolist()
        [0.0, -1.0]
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    na = np.linalg.norm(a, axis=-1)
    nb = np.linalg.norm(b, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        cos = np.einsum("...d,...d->...", a, b) / (na * nb)
    cos[~np.isfinite(cos)] = np.nan
    return np.clip(cos, -1.0, 1.0)


def summarise_similarity(cosines) -> dict:
    """Mean, median, 25th and 75th percentile and count of per-question cosine similarities.

    Example:
        >>> summarise_similarity([0.5, 1.0, float("nan")])["mean"]
        0.75
    """
    c = np.asarray(cosines, dtype=np.float64).ravel()
    c = c[np.isfinite(c)]
    if c.size == 0:
        return {"n": 0, "mean": math.nan, "median": math.nan, "q25": math.nan, "q75": math.nan}
    q25, med, q75 = np.percentile(c, [25, 50, 75])
    return {"n": int(c.size), "mean": float(c.mean()), "median": float(med), "q25": float(q25), "q75": float(q75)}
