"""Transfer of a probe across passes, and the self/other 2x2 cross-prediction.

A probe trained on one pass's activations (``mcq``) to predict a target (the mcq entropy) is
applied to another pass's activations (``self_conf``, ``other_conf``) of the SAME held-out
questions. If the confidence prompt re-represents the answer uncertainty along the direction the
MCQ prompt used, the transferred R^2 approaches the direct one: transfer ratio = best transfer
R^2 / best direct R^2 (best over layers). Standardisation of the transferred activations:
``centered`` with the training pass's statistics (as the probe was fitted), ``separate`` with the
test pass's own statistics over the same training questions (removes a pass-wide offset/scale).
Control: the same with the question alignment shuffled among the held-out questions.

The probe is the reference pipeline (StandardScaler -> PCA(100) -> Ridge(alpha=1000)), solved in
closed form from one eigendecomposition of the smaller Gram matrix per split and layer, for
several targets at once. Everything here takes arrays already aligned by question (row i of
every matrix is the same question) and the splits to use (the same for every layer).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UserError
from .directions import PCA_COMPONENTS, RIDGE_ALPHA, reference_fit

STANDARDISATIONS = ("centered", "separate")


@dataclass
class RefProbe:
    """A fitted reference probe for P targets at once.

    mean, scale: (d,) training statistics (scale floored at 1e-6); coef: (d, P) weights on the
    standardised input (PCA folded back in); intercept: (P,).
    """

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray

    def predict(self, X, mean=None, scale=None) -> np.ndarray:
        """(n, d) -> (n, P); ``mean``/``scale`` replace the training statistics (``separate``)."""
        mean = self.mean if mean is None else mean
        scale = self.scale if scale is None else scale
        return ((np.asarray(X, np.float64) - mean) / scale) @ self.coef + self.intercept


def standardiser(X) -> tuple[np.ndarray, np.ndarray]:
    """Column mean and std (ddof 0, floored at 1e-6) of (n, d) -> two (d,) float64 arrays.

    Example:
        >>> m, s = standardiser([[1.0, 5.0], [3.0, 5.0]])
        >>> m.tolist(), s.tolist()
        ([2.0, 5.0], [1.0, 1e-06])
    """
    X = np.asarray(X, np.float64)
    return X.mean(0), np.maximum(X.std(0), 1e-6)


def fit_reference_probe(X, Y, n_components: int = PCA_COMPONENTS, alpha: float = RIDGE_ALPHA,
                        device=None) -> RefProbe:
    """StandardScaler -> PCA(k) -> Ridge(alpha) for each column of Y (n, P), in closed form
    (:func:`~hf_introspect.analysis.directions.reference_fit`; equal to scikit-learn's pipeline).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> X = rng.normal(size=(50, 3)); y = X @ np.array([1.0, -2.0, 0.0])
        >>> p = fit_reference_probe(X, y[:, None], n_components=3, alpha=1e-9)
        >>> np.allclose(p.predict(X)[:, 0], y)
        True
    """
    return RefProbe(*reference_fit(X, Y, n_components, alpha, device))


def r2(y, pred) -> np.ndarray:
    """Coefficient of determination per column (as sklearn's r2_score): y (n,), pred (n,) or (n, P).

    Example:
        >>> float(r2(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 4.0])))
        0.5
    """
    y = np.asarray(y, np.float64)
    pred = np.asarray(pred, np.float64)
    yc = y - y.mean()
    ss_tot = float(yc @ yc)
    if ss_tot == 0.0:
        raise UserError("the held-out target is constant; use more questions or another target")
    res = (pred.T - y).T if pred.ndim > 1 else pred - y
    return 1.0 - (res**2).sum(0) / ss_tot


def _check(y, mats: dict, splits) -> np.ndarray:
    y = np.asarray(y, np.float64)
    for name, X in mats.items():
        if len(X) != len(y):
            raise UserError(f"{name} activations have {len(X)} rows for {len(y)} targets; align the passes by "
                            "question_id first")
    if not np.isfinite(y).all():
        raise UserError("the target has missing values; keep only the questions where it is defined")
    if not splits:
        raise UserError("no splits; use at least one train/test split")
    return y


def transfer_layer(X_train, tests: dict, y, splits, *, n_components: int = PCA_COMPONENTS,
                   alpha: float = RIDGE_ALPHA, seed: int = 0) -> dict[str, np.ndarray]:
    """Direct and transferred test R^2 of one layer over ``splits`` -> ``{key: (n_splits,)}``.

    Args:
        X_train: (n, d) activations of the pass the probe is trained on (e.g. mcq).
        tests: ``{pass: (n, d)}`` activations of the same n questions in other passes.
        y: (n,) the target (e.g. mcq entropy).
        splits: list of (train_idx, test_idx), the same for every layer.
    Returns keys ``direct``, ``PASS.centered``, ``PASS.separate``, ``PASS.shuffled.centered``,
    ``PASS.shuffled.separate`` (the held-out questions' rows permuted: alignment shuffled).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> y = rng.normal(size=200); u = rng.normal(size=20)
        >>> Xm = np.outer(y, u) + rng.normal(size=(200, 20)); Xs = np.outer(y, u) + rng.normal(size=(200, 20))
        >>> splits = [(np.arange(160), np.arange(160, 200))]
        >>> out = transfer_layer(Xm, {"self_conf": Xs}, y, splits, alpha=1.0)
        >>> bool(out["direct"][0] > 0.8 and out["self_conf.separate"][0] > 0.8), bool(out["self_conf.shuffled.separate"][0] < 0.2)
        (True, True)
    """
    y = _check(y, {"train": X_train, **tests}, splits)
    rng = np.random.default_rng(seed)
    out = {"direct": np.empty(len(splits))}
    for name in tests:
        for key in STANDARDISATIONS:
            out[f"{name}.{key}"] = np.empty(len(splits))
            out[f"{name}.shuffled.{key}"] = np.empty(len(splits))
    for s, (tr, te) in enumerate(splits):
        probe = fit_reference_probe(X_train[tr], y[tr], n_components, alpha)
        out["direct"][s] = r2(y[te], probe.predict(X_train[te])[:, 0])
        shuffled = rng.permutation(te)
        for name, X in tests.items():
            own = standardiser(X[tr])  # the test pass's statistics over the same training questions
            for rows, tag in ((te, ""), (shuffled, "shuffled.")):
                out[f"{name}.{tag}centered"][s] = r2(y[te], probe.predict(X[rows])[:, 0])
                out[f"{name}.{tag}separate"][s] = r2(y[te], probe.predict(X[rows], *own)[:, 0])
    return out


def cross_layer(X_a, X_b, y_a, y_b, splits, *, n_components: int = PCA_COMPONENTS, alpha: float = RIDGE_ALPHA,
                standardisation: str = "separate", return_r: bool = False):
    """The 2x2 cross-prediction of one layer -> (2, 2, n_splits) test R^2 (and, with ``return_r``,
    the Pearson r of the predictions with the target, same shape: blind to the offset and scale a
    probe trained on the other pass's target carries, which R^2 charges for).

    ``[i, j]``: probe trained on pass i's activations for pass i's target (a: self_conf ->
    self_confidence, b: other_conf -> other_confidence), applied to pass j's held-out activations,
    scored against pass j's target. The diagonal is each pass's direct R^2; the off-diagonal says
    whether one readout direction serves both prompts (the self-confidence probe reading the
    other-confidence answer from the other prompt, and vice versa).

    Example:
        >>> rng = np.random.default_rng(1)
        >>> ys, yo, u, v = rng.normal(size=200), rng.normal(size=200), rng.normal(size=16), rng.normal(size=16)
        >>> Xs = np.outer(ys, u) + 0.1 * rng.normal(size=(200, 16)); Xo = np.outer(yo, u) + 0.1 * rng.normal(size=(200, 16))
        >>> c = cross_layer(Xs, Xo, ys, yo, [(np.arange(150), np.arange(150, 200))], alpha=1.0)
        >>> c[..., 0].round(1).tolist()  # both prompts write their readout along u: one direction serves both
        [[1.0, 1.0], [1.0, 1.0]]
    """
    if standardisation not in STANDARDISATIONS:
        raise UserError(f"unknown standardisation {standardisation!r}; use one of {STANDARDISATIONS}")
    y_a, y_b = _check(y_a, {"a": X_a, "b": X_b}, splits), np.asarray(y_b, np.float64)
    mats, ys = (X_a, X_b), (y_a, y_b)
    out, corr = np.empty((2, 2, len(splits))), np.empty((2, 2, len(splits)))
    for s, (tr, te) in enumerate(splits):
        for i in range(2):
            probe = fit_reference_probe(mats[i][tr], ys[i][tr], n_components, alpha)
            for j in range(2):
                stats = standardiser(mats[j][tr]) if (standardisation == "separate" and j != i) else (None, None)
                pred = probe.predict(mats[j][te], *stats)[:, 0]
                out[i, j, s] = r2(ys[j][te], pred)
                corr[i, j, s] = np.corrcoef(pred, ys[j][te])[0, 1] if pred.std() > 0 else np.nan
    return (out, corr) if return_r else out


def transfer_ratio(direct, transferred) -> dict:
    """Best transferred R^2 over layers / best direct R^2 over layers.

    ``direct`` and ``transferred`` are per-layer mean R^2 arrays (NaN for skipped layers). The ratio
    is NaN when the best direct R^2 is not positive (nothing to transfer).

    Example:
        >>> transfer_ratio([0.1, 0.8, 0.6], [0.0, 0.2, 0.4])
        {'best_direct_index': 1, 'best_direct': 0.8, 'best_transfer_index': 2, 'best_transfer': 0.4, 'ratio': 0.5}
    """
    direct, transferred = np.asarray(direct, np.float64), np.asarray(transferred, np.float64)
    i, j = int(np.nanargmax(direct)), int(np.nanargmax(transferred))
    ratio = float(transferred[j] / direct[i]) if direct[i] > 0 else float("nan")
    return {"best_direct_index": i, "best_direct": float(direct[i]), "best_transfer_index": j,
            "best_transfer": float(transferred[j]), "ratio": round(ratio, 12)}
