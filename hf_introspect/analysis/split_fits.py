"""Random train/test splits by question, and the test metric of a probe on every split of one layer,
with a label-permutation null, computed together.

The speed comes from linearity: for ridge-type probes the test predictions are linear in the
target (``pred_T = H_split y``, ``H`` depending only on the activations and the split), so the
target and ``permutations`` permuted copies are the columns of one matrix ``Y`` (n, 1 + P) solved
together. See :mod:`.split_ridge` (default method) and :mod:`.split_pca` (``ep``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from ..errors import UserError
from .linear_probe import EP_ALPHA, EP_COMPONENTS, METHODS, MIN_QUESTIONS, _validate, fit_probe

METRICS = {"regression": "r2", "binary": "auroc", "multiclass": "accuracy"}


def make_splits(n: int, n_splits: int = 100, test_size: float = 0.2,
                seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n_splits`` random (train, test) row-index pairs over ``n`` questions, sorted within each.

    The test set has ``ceil(test_size * n)`` questions (as scikit-learn's ``ShuffleSplit``); the
    same ``seed`` gives the same splits, so every layer is scored on the same questions.

    Example:
        >>> splits = make_splits(10, n_splits=2, test_size=0.2, seed=0)
        >>> [len(train) for train, test in splits], [len(test) for train, test in splits]
        ([8, 8], [2, 2])
        >>> bool(np.array_equal(splits[0][1], make_splits(10, 2, 0.2, 0)[0][1]))
        True
    """
    if n < MIN_QUESTIONS:
        raise UserError(f"splits need at least {MIN_QUESTIONS} questions (got {n}); use a larger run")
    if not 0.0 < test_size < 1.0:
        raise UserError(f"test_size must be between 0 and 1 (got {test_size}); e.g. --test_size 0.2")
    if n_splits < 1:
        raise UserError(f"n_splits must be >= 1 (got {n_splits}); e.g. --splits 100")
    n_test = int(np.ceil(test_size * n))
    if n_test < 2 or n - n_test < 3:
        raise UserError(f"test_size {test_size} leaves {n_test} test / {n - n_test} training questions of {n}; "
                        "use a test_size near 0.2 or more questions")
    rng = np.random.default_rng(seed)
    splits = []
    for _ in range(n_splits):
        order = rng.permutation(n)
        splits.append((np.sort(order[n_test:]), np.sort(order[:n_test])))
    return splits


@dataclass
class SplitScores:
    """Test metric per split, and the permutation null (mean over splits per permuted copy)."""

    metric: str  # "r2" | "auroc" | "accuracy"
    scores: np.ndarray  # (n_splits,) test metric per split
    null: np.ndarray  # (permutations,) mean-over-splits test metric with permuted labels ((0,) if none)
    extra: dict = field(default_factory=dict)  # e.g. {"accuracy": (n_splits,)} for binary

    @property
    def mean(self) -> float:
        # NaN splits (a test set with one class: AUROC undefined) are left out, as in the null
        return float(np.nanmean(self.scores)) if np.isfinite(self.scores).any() else float("nan")

    @property
    def p_value(self) -> float:
        """Permutation p-value of the mean score, ``(1 + #null >= mean) / (1 + P)`` (NaN without a null)."""
        null = self.null[np.isfinite(self.null)]  # a copy with every split undefined is left out
        if len(null) == 0 or not np.isfinite(self.mean):
            return float("nan")
        return float((1 + np.sum(null >= self.mean)) / (1 + len(null)))


def score_splits(X, y, splits, *, method: str = "ridge", task: str = "regression", permutations: int = 0,
                 seed: int = 0, device=None, **options) -> SplitScores:
    """Fit on each split's training rows, score on its test rows; the same for ``permutations``
    copies of ``y`` shuffled over all questions (seeded by ``seed``, the same splits).

    ``method="ridge"`` (default): ridge on all dimensions standardised by the layer's mean and std
    over all questions (label-free; one Gram matrix for every split), the intercept from each
    training split, the penalty chosen inside each training split (nested: the test labels never
    see it) by generalised cross-validation over that split's training rows (``selection="loo"``:
    exact leave-one-out, as ``RidgeCV``; 2.7x slower at 1,000 questions), from the grid ``alphas`` (in
    units of the Gram's mean eigenvalue, default 1e-3..1e3 by decades; ``alpha=`` fixes it, same
    units); every permuted copy gets its own choice per split, so the null goes through the same
    selection. ``extra["alpha"]`` holds the chosen penalty per split (n_splits,), ``extra["null_alpha"]``
    (n_splits, permutations). Classes are fitted as +-1 columns (as ``RidgeClassifierCV`` with
    ``selection="loo"``; the criterion summed over a target's class columns), scored by the decision.
    ``"ep"``: the reference pipeline per split (:mod:`.split_pca`; ``alpha`` in absolute units,
    1000). ``"logistic"``: :func:`fit_probe` per split and permuted copy (slow; for checks).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> X = rng.normal(size=(100, 30))
        >>> y = X[:, 0] + 0.5 * rng.normal(size=100)
        >>> res = score_splits(X, y, make_splits(100, 20), permutations=20)
        >>> res.metric, bool(res.mean > 0.6), bool(res.null.max() < 0.2), res.p_value < 0.05
        ('r2', True, True, True)
    """
    if method not in METHODS:
        raise UserError(f"unknown probe method {method!r}; use one of {', '.join(METHODS)}")
    X, y, classes = _validate(X, y, method, task)
    if permutations < 0:
        raise UserError(f"permutations must be >= 0 (got {permutations})")
    rng = np.random.default_rng(seed)
    orders = [np.arange(len(y))] + [rng.permutation(len(y)) for _ in range(permutations)]
    labels = np.stack([y[o] for o in orders], axis=1)  # (n, 1 + P) target and its permuted copies
    metric = METRICS[task]
    by_size = {}
    for i, (train, test) in enumerate(splits):
        by_size.setdefault(len(test), []).append(i)
    values = np.empty((len(splits), labels.shape[1]))
    accuracy = np.empty_like(values)
    chosen = None
    for idx in by_size.values():
        group = [splits[i] for i in idx]
        tests = np.stack([np.asarray(t) for _, t in group])  # (S, t)
        scores, alphas = _test_scores(X, labels, classes, group, tests, method, task, device, seed, options)
        truth = labels[tests]  # (S, t, 1 + P)
        values[idx] = _metric(scores, truth, classes, task)
        if alphas is not None:  # (S, 1 + P) penalties chosen per split and column
            chosen = np.empty((len(splits), alphas.shape[1])) if chosen is None else chosen
            chosen[idx] = alphas
        if task == "binary":
            accuracy[idx] = np.mean((scores > 0) == (truth == classes[1]), axis=1)
    extra = {}
    if task == "binary":
        extra = {"accuracy": accuracy[:, 0], "null_accuracy": accuracy[:, 1:].mean(0)}
    if chosen is not None:
        extra["alpha"] = chosen[:, 0]
        extra["null_alpha"] = chosen[:, 1:]
    # the null averages over the same splits as the observed score, leaving out NaN splits (a test
    # set with one class: AUROC undefined); a plain mean made every permuted copy NaN whenever one
    # split was, and a NaN null counted as "below" the score: p = 1/(1 + P) with no signal at all
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN copies stay NaN
        null = np.nanmean(values[:, 1:], axis=0)
    return SplitScores(metric, values[:, 0], null, extra)


def _test_scores(X, labels, classes, splits, tests, method, task, device, seed, options):
    """Held-out scores (S, t, C) for binary/regression, (S, t, C, k) for multiclass; chosen penalties."""
    if method == "ridge":
        from .split_ridge import ridge_split_predictions

        Y, groups = _coded(labels, classes, task)
        pred, alphas = ridge_split_predictions(X, Y, tests, groups=groups, device=device, **options)
        return _uncode(pred, labels.shape[1], groups, task), alphas
    if method == "ep" and task == "regression":
        from .split_pca import pca_ridge_split_predictions

        opts = {"k": EP_COMPONENTS[task], "alpha": EP_ALPHA, "seed": seed, **options}
        return pca_ridge_split_predictions(X, labels.astype(np.float64), splits, device=device, **opts), None
    return _loop_fits(X, labels, classes, splits, method, task, device, options), None


def _loop_fits(X, labels, classes, splits, method, task, device, options):
    """One :func:`fit_probe` per split and column (logistic probes are not linear in the labels)."""
    out = []
    for train, test in splits:
        cols = []
        for c in range(labels.shape[1]):
            probe = fit_probe(X[train], labels[train, c], method=method, task=task, device=device, **options)
            cols.append(_on_all_classes(probe, X[test], classes, task))
        out.append(np.stack(cols, axis=1))  # (t, C) or (t, C, k)
    return np.stack(out)


def _on_all_classes(probe, X_test, classes, task):
    """Test decisions (t, k) over ALL the target's classes: a training split may lack a rare class
    (a letter the model seldom answers); that class gets -inf, never predicted, and the others keep
    their columns, so argmax indexes ``classes`` as the metric assumes."""
    scores = probe.decision(X_test)
    if task != "multiclass":
        return scores
    if scores.ndim == 1:  # two classes in this training split: one decision, > 0 for probe.classes[1]
        scores = np.stack([-scores, scores], axis=1)
    out = np.full((len(X_test), len(classes)), -np.inf)
    out[:, np.searchsorted(classes, probe.classes)] = scores
    return out


def _coded(labels, classes, task):
    """Targets as float columns: regression as is; binary +-1; multiclass one-hot +-1, (n, C * k)."""
    if task == "regression":
        return labels.astype(np.float64), 1
    if task == "binary":
        return np.where(labels == classes[1], 1.0, -1.0), 1
    onehot = np.where(labels[:, :, None] == classes[None, None, :], 1.0, -1.0)  # (n, C, k)
    return onehot.reshape(len(labels), -1), len(classes)


def _uncode(pred, n_columns, groups, task):
    if task == "multiclass":
        return pred.reshape(pred.shape[0], pred.shape[1], n_columns, groups)
    return pred


def _metric(scores, truth, classes, task) -> np.ndarray:
    """(S, C) test metric: R^2 (test-set mean as the baseline), AUROC or accuracy."""
    if task == "regression":
        truth = truth.astype(np.float64)
        ss_res = ((truth - scores) ** 2).sum(1)
        ss_tot = ((truth - truth.mean(1, keepdims=True)) ** 2).sum(1)
        return 1.0 - ss_res / np.where(ss_tot > 0, ss_tot, np.nan)
    if task == "binary":
        return auroc(scores, truth == classes[1])
    return np.mean(classes[np.argmax(scores, axis=-1)] == truth, axis=1)


def auroc(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """Area under the ROC curve along axis 1 of (S, t, C) arrays (ties count one half); NaN when a
    test set holds one class only.

    Example:
        >>> s = np.array([0.1, 0.4, 0.35, 0.8])[None, :, None]
        >>> float(auroc(s, np.array([0, 0, 1, 1], bool)[None, :, None])[0, 0])
        0.75
    """
    from scipy.stats import rankdata

    ranks = rankdata(scores, axis=1)  # average ranks, ties shared
    n_pos = positive.sum(1)
    n_neg = positive.shape[1] - n_pos
    u = (ranks * positive).sum(1) - n_pos * (n_pos + 1) / 2.0
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg), np.nan)
