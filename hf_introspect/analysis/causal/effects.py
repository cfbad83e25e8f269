"""Turning readouts into effects: expected confidence, dose-response slopes, null p-values, FDR."""

from __future__ import annotations

import numpy as np


def readout_score(logits: np.ndarray, pass_name: str, chosen: np.ndarray | None = None) -> np.ndarray:
    """Per-row score of restricted logits (rows, n_labels): expected confidence in % (0-100) for a
    confidence pass, the probability (x100) of the originally chosen letter ``chosen`` (rows,) for mcq.
    Probabilities as the collector computes them (softmax in float64).

    Example:
        >>> readout_score(np.array([[0.0] * 7 + [50.0]]), "self_conf")
        array([95.])
    """
    from ...collection.readout import expected_confidence, softmax_np

    probs = softmax_np(np.asarray(logits, dtype=np.float64))  # (rows, n_labels)
    if pass_name == "mcq":
        return 100.0 * probs[np.arange(len(probs)), np.asarray(chosen)]
    return np.array([expected_confidence(p) for p in probs])


def entropy(logits: np.ndarray) -> np.ndarray:
    """Entropy (nats) of the restricted distribution per row.

    Example:
        >>> entropy(np.zeros((1, 4))).round(4)
        array([1.3863])
    """
    from ...collection.readout import entropy_nats, softmax_np

    return entropy_nats(softmax_np(np.asarray(logits, dtype=np.float64)))


def slope(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least-squares slope of ``y`` over ``x`` along the last axis (y: (..., len(x))).

    Example:
        >>> float(slope(np.array([-1.0, 0, 1]), np.array([1.0, 2, 3])))
        1.0
    """
    x = np.asarray(x, dtype=np.float64)
    xc = x - x.mean()
    y = np.asarray(y, dtype=np.float64)
    return (y - y.mean(axis=-1, keepdims=True)) @ xc / (xc @ xc)


def null_p_value(observed: float, null: np.ndarray) -> float:
    """Two-sided p against a null of effects: (1 + #{|null| >= |observed|}) / (1 + len(null)).

    Example:
        >>> null_p_value(3.0, np.array([0.5, -1.0, 4.0]))
        0.5
    """
    from ..stats import permutation_p

    return permutation_p(abs(observed), np.abs(np.asarray(null, dtype=np.float64)))


def fdr(p_values) -> list[float]:
    """Benjamini-Hochberg adjusted p-values over layers (NaN stays NaN).

    Example:
        >>> [round(p, 3) for p in fdr([0.01, 0.02, 0.5])]
        [0.03, 0.03, 0.5]
    """
    from ..stats import benjamini_hochberg

    return benjamini_hochberg(p_values).tolist()


def bootstrap_interval(values: np.ndarray, stat, n_boot: int = 1000, seed: int = 0, level: float = 0.95):
    """Percentile bootstrap interval of ``stat(values[idx])`` over rows -> (low, high).

    Example:
        >>> lo, hi = bootstrap_interval(np.arange(100.0), np.mean)
        >>> 40 < lo < 49.5 < hi < 60
        True
    """
    values = np.asarray(values)
    rng = np.random.default_rng(seed)
    boots = np.array([stat(values[rng.integers(0, len(values), len(values))]) for _ in range(n_boot)])
    tail = (1 - level) / 2 * 100
    return float(np.nanpercentile(boots, tail)), float(np.nanpercentile(boots, 100 - tail))
