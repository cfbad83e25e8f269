"""Linear probes on activations: one fit, as a plain :class:`LinearProbe` (weights on the
standardised input, PCA folded back in).

Methods (``fit_probe(method=...)``):

- ``"ridge"`` (default): ridge on the standardised activations, all dimensions, the penalty chosen
  inside the data it is fitted on by exact leave-one-out error (one eigendecomposition of the Gram
  matrix gives every alpha of the grid), intercept unpenalised. Classification tasks fit the
  +-1-coded classes the same way (scikit-learn's ``RidgeClassifierCV``); the decision is the score.
- ``"ep"``: the reference pipeline, exactly: StandardScaler (std floored at 1e-6) -> PCA(100) ->
  Ridge(alpha=1000) for numeric targets; PCA(256) + ``LogisticRegression(max_iter=1000)`` for classes
  (no scaler there, as in the reference: PCA of the centred activations).
- ``"logistic"``: L2 logistic regression (scikit-learn, ``C=1``) on the standardised activations,
  fitted in the span of the training rows (exactly the same optimum, far fewer columns).

Standardisation: ``(X - mean) / scale`` with ``scale = max(std, 1e-6)`` per dimension (population std,
ddof 0). This is the reference's "scale floored at 1e-6"; scikit-learn's ``StandardScaler`` instead
maps a std below ~1e-15 to 1. The two agree whenever no dimension has a std below 1e-6; a dimension
that is constant in the training rows is all zeros after centring either way, so it only matters for
dimensions that vary by less than 1e-6 (then the reference's floor is what we follow).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import UserError

SCALE_FLOOR = 1e-6
EP_COMPONENTS = {"regression": 100, "binary": 256, "multiclass": 256}
EP_ALPHA = 1000.0
ALPHA_GRID = np.logspace(-3, 3, 7)  # ridge penalties, in units of the mean eigenvalue of the Gram matrix
METHODS = ("ridge", "ep", "logistic")
TASKS = ("regression", "binary", "multiclass")
MIN_QUESTIONS = 5


@dataclass
class LinearProbe:
    """A fitted linear probe: ``decision(X) = ((X - mean) / scale) @ coef.T + intercept``.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> X = rng.normal(size=(60, 8)).astype(np.float32)
        >>> probe = fit_probe(X, X[:, 0] * 2.0 + 0.1 * rng.normal(size=60))
        >>> probe.method, probe.task, probe.coef.shape
        ('ridge', 'regression', (8,))
        >>> int(np.argmax(np.abs(probe.direction)))
        0
    """

    method: str  # "ridge" | "ep" | "logistic"
    task: str  # "regression" | "binary" | "multiclass"
    mean: np.ndarray  # (d,) training mean of the activations
    scale: np.ndarray  # (d,) training std floored at 1e-6
    coef: np.ndarray  # (d,) or (k, d): weights on the standardised input
    intercept: float | np.ndarray
    classes: np.ndarray | None = None
    alpha: float | None = None  # the penalty used (ridge: chosen by leave-one-out; ep: 1000)

    def standardized(self, X, standardize: str = "train") -> np.ndarray:
        """``X`` standardised with the training statistics ("train") or with its own ("own")."""
        X = _as_matrix(X, len(self.mean))
        if standardize == "train":
            return (X - self.mean) / self.scale
        if standardize == "own":
            mean, scale = _mean_scale(X)
            return (X - mean) / scale
        raise UserError(f"standardize must be 'train' or 'own' (got {standardize!r})")

    def decision(self, X, standardize: str = "train") -> np.ndarray:
        """Scores: the value (regression), the positive-class score (binary, (n,)), or (n, k)."""
        return self.standardized(X, standardize) @ np.asarray(self.coef, np.float64).T + self.intercept

    def predict(self, X, standardize: str = "train") -> np.ndarray:
        """The predicted value (regression) or class label."""
        scores = self.decision(X, standardize)
        if self.task == "regression":
            return scores
        if self.task == "binary":
            return self.classes[(scores > 0).astype(int)]
        return self.classes[np.argmax(scores, axis=1)]

    @property
    def direction(self) -> np.ndarray:
        """Unit vector(s) in raw activation space: ``coef / scale`` normalised ((d,) or (k, d))."""
        raw = np.asarray(self.coef, np.float64) / self.scale
        norm = np.linalg.norm(raw, axis=-1, keepdims=True)
        return raw / np.where(norm > 0, norm, 1.0)


def fit_probe(X, y, *, method: str = "ridge", task: str = "regression", alphas=None, alpha: float | None = None,
              n_components: int | None = None, C: float = 1.0, scale=None, device=None) -> LinearProbe:
    """Fit one linear probe of ``y`` on activations ``X`` (see the module docstring for the methods).

    Args:
        X: (n, d) activations (float16 is cast to float32 first, then float64 for the fit).
        y: (n,) target: numbers (regression) or labels (binary / multiclass).
        alphas: ridge penalty grid in units of the Gram matrix's mean eigenvalue (default 1e-3..1e3).
        alpha: a fixed ridge penalty in absolute units (``ep``: 1000, the reference).
        n_components: PCA components for ``ep`` (default 100 for regression, 256 for classes),
            clipped to the rank the data allows.
        C: inverse L2 strength for ``logistic`` (and ``ep`` classes), as in scikit-learn.
        scale: (d,) per-dimension scale to use instead of X's own floored std (e.g. the layer's
            std over all questions, so that several fits share one standardisation).
        device: torch device for the linear algebra (default: CUDA when available, else CPU).

    Example:
        >>> rng = np.random.default_rng(1)
        >>> X = rng.normal(size=(80, 20))
        >>> labels = np.where(X[:, 3] > 0, "yes", "no")
        >>> probe = fit_probe(X, labels, task="binary")
        >>> float(np.mean(probe.predict(X) == labels)) > 0.9
        True
    """
    X, y, classes = _validate(X, y, method, task)
    mean, own_scale = _mean_scale(X)
    if method == "ep" and task != "regression" and scale is None:
        own_scale = np.ones_like(own_scale)  # the reference's letter probe has no scaler: PCA of the centred activations
    scale = own_scale if scale is None else np.maximum(np.asarray(scale, np.float64), SCALE_FLOOR)
    Z = (X - mean) / scale  # (n, d) standardised
    dev = resolve_device(device)
    if method == "ridge":
        coef, intercept, used = _fit_ridge(Z, _coded(y, task, classes), alphas, alpha, dev)
        return LinearProbe(method, task, mean, scale, coef, intercept, classes, used)
    k = n_components or EP_COMPONENTS[task]
    if method == "ep" and task == "regression":
        coef, intercept = _fit_pca_ridge(Z, y, k, EP_ALPHA if alpha is None else alpha, dev)
        return LinearProbe(method, task, mean, scale, coef, intercept, None, EP_ALPHA if alpha is None else alpha)
    if method == "logistic" and task == "regression":
        raise UserError("--method logistic needs a class target (is_correct or a letter); use ridge or ep")
    if method == "ep":  # reference letter probe: PCA(256) + LogisticRegression(max_iter=1000)
        U, s2 = left_basis(Z, dev, top=k)
    else:  # the L2 optimum lies in the span of the rows: fit there, losslessly
        U, s2 = left_basis(Z, dev)
    coef, intercept = _fit_logistic(Z, U * np.sqrt(s2), y, classes, C)
    return LinearProbe(method, task, mean, scale, coef, intercept, classes, None)


def resolve_device(device=None) -> torch.device:
    """The torch device for the linear algebra: the one given, else CUDA when available, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@contextmanager
def lapack_threads(device=None):
    """Run factorisations (eigh, Cholesky, triangular solves) on one CPU thread.

    Their many small parallel regions wait on each other when the cores are shared: measured here
    at load ~9 on 2 cores, eigh (200, 200) 0.008 s on one thread vs 0.99 s on two, eigh (1000, 1000)
    0.37 vs 1.40 s, batched Cholesky (25, 200, 200) 0.02 vs 0.22 s; matrix products are unaffected
    (they keep every thread). No-op on a GPU or when torch already uses one thread.
    """
    threads = torch.get_num_threads()
    if threads == 1 or (device is not None and torch.device(device).type != "cpu"):
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def left_basis(Z: np.ndarray, device, top: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Left singular vectors ``U`` (n, r) and squared singular values (r,) of ``Z``, largest first.

    From the eigendecomposition of the smaller Gram matrix, in float64; eigenvalues below
    ``1e-10 x`` the largest are dropped (the centred data's all-ones direction among them).
    """
    Zt = torch.as_tensor(Z, dtype=torch.float64, device=device)
    n, d = Zt.shape
    small = Zt @ Zt.T if n <= d else Zt.T @ Zt  # (min(n, d),) Gram matrix
    with lapack_threads(device):
        evals, evecs = torch.linalg.eigh(small)
    evals, evecs = evals.flip(0), evecs.flip(1)
    keep = evals > evals[0].clamp_min(1e-300) * 1e-10
    if top is not None:
        keep &= torch.arange(len(evals), device=evals.device) < top
    evals, evecs = evals[keep], evecs[:, keep]
    U = evecs if n <= d else (Zt @ evecs) / evals.sqrt()
    return U.cpu().numpy(), evals.cpu().numpy()


def _fit_ridge(Z, Y, alphas, alpha, device):
    """Ridge with intercept; alpha by exact leave-one-out MSE over the grid (summed over Y's columns)."""
    U, s2 = left_basis(Z, device)  # (n, r), (r,)
    Y2 = Y.reshape(len(Y), -1)  # (n, c)
    ybar = Y2.mean(0)
    UtY = U.T @ (Y2 - ybar)  # (r, c)
    grid = np.array([float(alpha)]) if alpha is not None else _grid(alphas, s2, len(Z))
    best = float(grid[int(np.argmin(_loo_errors(U, s2, Y2, ybar, UtY, grid).sum(1)))])  # first wins ties
    dual = U @ (UtY / (s2 + best)[:, None])  # (n, c)
    coef = (Z.T @ dual).T  # (c, d)
    if Y.ndim == 1:
        return coef[0], float(ybar[0]), float(best)
    return coef, ybar, float(best)


def _grid(alphas, s2, n):
    """The penalty grid in absolute units: ``alphas`` (default ALPHA_GRID) x the Gram's mean eigenvalue."""
    return np.asarray(ALPHA_GRID if alphas is None else alphas, np.float64) * (s2.sum() / n)


def _loo_errors(U, s2, Y2, ybar, UtY, grid) -> np.ndarray:
    """Exact leave-one-out MSE (len(grid), c) of ridge with intercept, per grid penalty and column of Y2."""
    out = np.empty((len(grid), Y2.shape[1]))
    for i, a in enumerate(grid):
        shrink = s2 / (s2 + a)  # (r,)
        fitted = ybar + U @ (shrink[:, None] * UtY)
        hat = 1.0 / len(U) + (U ** 2) @ shrink  # (n,) leverages, the intercept's 1/n included
        out[i] = np.mean(((Y2 - fitted) / (1.0 - hat)[:, None]) ** 2, axis=0)
    return out


def ridge_directions(X, Y, *, alphas=None, device=None) -> tuple[np.ndarray, np.ndarray]:
    """Ridge directions (unit, raw activation space) for every column of ``Y`` (n, P) -> ((P, d),
    penalties (P,) in the grid's relative units), each column choosing its own penalty by exact
    leave-one-out (so permuted copies of a target go through the same selection as the target);
    one eigendecomposition for all columns. Column j equals ``fit_probe(X, Y[:, j]).direction``.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> X = rng.normal(size=(200, 5)); y = X[:, 2] + 0.1 * rng.normal(size=200)
        >>> dirs, chosen = ridge_directions(X, np.stack([y, rng.permutation(y)], 1))
        >>> int(np.argmax(np.abs(dirs[0]))), dirs.shape
        (2, (2, 5))
    """
    X = _as_matrix(X)
    Y2 = np.asarray(Y, np.float64).reshape(len(X), -1)
    mean, scale = _mean_scale(X)
    Z = (X - mean) / scale  # (n, d)
    U, s2 = left_basis(Z, resolve_device(device))
    ybar = Y2.mean(0)
    UtY = U.T @ (Y2 - ybar)  # (r, P)
    grid = _grid(alphas, s2, len(Z))
    best = grid[np.argmin(_loo_errors(U, s2, Y2, ybar, UtY, grid), axis=0)]  # (P,) per column, first wins ties
    dual = U @ (UtY / (s2[:, None] + best[None, :]))  # (n, P)
    raw = (Z.T @ dual).T / scale  # (P, d) weights on the raw activations
    norm = np.linalg.norm(raw, axis=1, keepdims=True)
    return raw / np.where(norm > 0, norm, 1.0), best / (s2.sum() / len(Z))


def _fit_pca_ridge(Z, y, k, alpha, device):
    """PCA(k) of the standardised rows then Ridge(alpha): coef = V_k s/(s^2+alpha) U_k^T (y - ybar)."""
    U, s2 = left_basis(Z, device, top=k)
    ybar = float(y.mean())
    w = (U.T @ (y - ybar)) / (s2 + alpha)  # (k,): s * s/(s^2+a) / s^2 folded: V = Z^T U / s
    return Z.T @ (U @ w), ybar


def _fit_logistic(Z, T, y, classes, C):
    """sklearn LogisticRegression on the scores ``T = Z V`` (n, r); weights mapped back to Z's columns."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=C, max_iter=1000).fit(T, y)
    basis_w = model.coef_  # (1 or k, r) on T's columns; T = Z V so w_Z = V w_T, V = Z^T U / s
    s = np.linalg.norm(T, axis=0)  # (r,) singular values
    V = Z.T @ (T / np.where(s > 0, s, 1.0) ** 2)  # (d, r): Z^T U / s since T = U s
    coef = basis_w @ V.T  # (1 or k, d)
    if len(classes) == 2:
        return coef[0], float(model.intercept_[0])
    return coef, model.intercept_.astype(np.float64)


def _coded(y, task, classes):
    """Regression: y as float; binary: +-1; multiclass: (n, k) one-hot coded +-1."""
    if task == "regression":
        return y
    if task == "binary":
        return np.where(y == classes[1], 1.0, -1.0)
    return np.where(y[:, None] == classes[None, :], 1.0, -1.0)


def _mean_scale(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = X.mean(0)
    return mean, np.maximum(X.std(0), SCALE_FLOOR)


def _as_matrix(X, d: int | None = None) -> np.ndarray:
    # float16 -> float32 first (the reference's cast), then float64 for the arithmetic
    X = np.asarray(X)
    if X.dtype == np.float16:
        X = X.astype(np.float32)
    X = X.astype(np.float64)
    if X.ndim != 2 or (d is not None and X.shape[1] != d):
        raise UserError(f"activations must be a (questions, {d or 'hidden'}) matrix (got shape {X.shape})")
    if not np.isfinite(X).all():
        raise UserError("activations contain NaN or inf; drop those questions or re-collect in float32")
    return X


def _validate(X, y, method, task):
    if method not in METHODS:
        raise UserError(f"unknown probe method {method!r}; use one of {', '.join(METHODS)}")
    if task not in TASKS:
        raise UserError(f"unknown probe task {task!r}; use one of {', '.join(TASKS)}")
    X = _as_matrix(X)
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != len(X):
        raise UserError(f"the target must have one value per question ({len(X)}), got shape {y.shape}")
    if len(X) < MIN_QUESTIONS:
        raise UserError(f"a probe needs at least {MIN_QUESTIONS} questions (got {len(X)}); use a larger run")
    classes = None
    if task == "regression":
        y = _numeric(y)
        if np.ptp(y) == 0:
            raise UserError("the target is constant, nothing to probe; pick a target that varies")
    else:
        if y.dtype.kind == "f" and not np.isfinite(y).all():
            raise UserError("the target contains NaN; drop the questions without a value")
        classes = np.unique(y)
        want = "2" if task == "binary" else "at least 2"
        if len(classes) < 2 or (task == "binary" and len(classes) != 2):
            raise UserError(f"a {task} target needs {want} classes (got {len(classes)}); pick another target")
    return X, y, classes


def _numeric(y) -> np.ndarray:
    try:
        y = np.asarray(y, dtype=np.float64)
    except (TypeError, ValueError):
        raise UserError("a regression target must be numeric; use task='multiclass' for labels") from None
    if not np.isfinite(y).all():
        raise UserError("the target contains NaN or inf; drop the questions without a value")
    return y
