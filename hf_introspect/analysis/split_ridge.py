"""Ridge test predictions for every split of one layer at once (the engine of ``score_splits``).

Why it is cheap: with a split-independent standardisation (every question's layer-wide mean and
std), all splits share one Gram matrix ``K = Z Z^T`` (n, n). Ridge with an unpenalised intercept is
the bordered system ``[[K + aI, 1], [1^T, 0]] [c; b] = [y; 0]``; with ``G`` the (n, n) block of its
inverse and ``c = G y`` the fit on all questions, deleting the test rows ``T`` of a split gives the
held-out residuals exactly (block-deletion identity of the inverse):

    y_T - yhat_T(trained without T) = G_TT^{-1} c_T

so one Cholesky of ``K + aI`` per penalty and one (t, t) Cholesky per split replace a fit per split,
and every column of ``Y`` (the target and its permuted copies) costs one more right-hand side.

The penalty is chosen inside each training split (nested: the test labels never see the choice).
Deleting the test rows ``T`` from the bordered inverse leaves the training rows' own bordered
inverse ``G_R = G_RR - G_RT G_TT^{-1} G_TR``, whose dual fit is ``c^R = c_R - G_RT e`` (``e`` the
held-out residuals above); the training residuals are ``a c^R`` and ``I - H_R = a G_R``. Two criteria:

* ``"gcv"`` (default): generalised cross-validation on the training rows,
  ``n_R |c^R|^2 / tr(G_R)^2``. With ``Q = G G`` (one (n, n) product per penalty) both parts need
  only the split's (t, t) blocks: ``tr(G_R) = tr(G) - tr(G_TT^{-1} Q_TT)`` and
  ``|c^R|^2 = |c|^2 - 2 e.(Gc)_T + e^T Q_TT e`` (from ``G_TR G_RT = Q_TT - G_TT^2``,
  ``G_TR c_R = (Gc)_T - G_TT c_T`` and ``G_TT e = c_T``): O(t^3) per split and penalty.
* ``"loo"``: exact leave-one-out, ``(c^R)_i / (G_R)_ii`` (what scikit-learn's ``RidgeCV`` computes on
  the training rows). The diagonal needs one triangular solve ``L^{-1} G_TR`` (t, n) per split and
  penalty: O(t^2 n); 2.7x the GCV time at n = 1,000, t = 200 (``benchmarks/bench_probe.py``).

Each split and column group (a target or a permuted copy) keeps the grid penalty with the least
criterion; the first grid penalty wins ties.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import UserError
from .linear_probe import ALPHA_GRID, SCALE_FLOOR, lapack_threads

FREE_PENALTY = 1e-6  # penalty of the ``free`` columns relative to the activations' (a rare one-hot
# column absent from a training split then gets weight 0 instead of a singular system)
SPLIT_CHUNK = 25  # splits solved together: (chunk, t, n) float64 stays ~40 MB at n = 1000


def standardized_gram(X, device, scale=None, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Gram matrix (n, n) float64 of the layer-wide standardised rows, and the scale used (d,).

    ``X`` float16 is cast to float32 first; the product runs in ``dtype`` (float32: ~2x faster on a
    CPU, relative error ~1e-6, below what the penalties here amplify).
    """
    Xt = torch.as_tensor(np.asarray(X), device=device).to(torch.float32)  # (n, d)
    X64 = Xt.double()
    mean = X64.mean(0)
    if scale is None:
        scale = X64.std(0, unbiased=False).clamp_min(SCALE_FLOOR)
    else:
        scale = torch.as_tensor(np.asarray(scale, np.float64), device=device).clamp_min(SCALE_FLOOR)
    Z = ((X64 - mean) / scale).to(dtype)  # (n, d), centred over all questions
    del X64, Xt
    return (Z @ Z.T).double(), scale


SELECTIONS = ("gcv", "loo")  # how the penalty is chosen inside a training split (module docstring)


def heldout_predictions(K: torch.Tensor, Y: torch.Tensor, tests: torch.Tensor, alpha: float,
                        flat: torch.Tensor | None = None, groups: int | None = None,
                        free: torch.Tensor | None = None,
                        selection: str = "gcv") -> tuple[torch.Tensor, torch.Tensor | None]:
    """Test-row predictions (S, t, C) of ridge(alpha) trained on each split's other rows, and (when
    ``groups`` is given) the ``selection`` criterion (GCV or exact leave-one-out MSE) inside each
    split's training rows (S, C // groups), summed over each group of ``groups`` consecutive columns.

    ``tests`` (S, t) holds each split's test rows; the training rows are all the others.
    ``flat`` (S, t * t): the test blocks' positions in ``K.view(-1)`` (computed here when not given).
    ``free`` (n, f): columns fitted beside the intercept and (almost) unpenalised (``FREE_PENALTY``).
    """
    n = K.shape[0]
    A = K.clone()
    A.diagonal().add_(alpha)
    with lapack_threads(K.device):
        Ainv = torch.cholesky_inverse(torch.linalg.cholesky(A))  # (n, n)
    G = _bordered(Ainv, free)  # (n, n) block of the bordered inverse (intercept and free columns)
    c = G @ Y  # (n, C) dual coefficients of the fit on all rows
    if flat is None:
        flat = block_positions(tests, n)
    Gflat = G.reshape(-1)
    if groups is not None and selection == "gcv":
        Q = G @ G  # (n, n): G_TR G_RT = Q_TT - G_TT^2 gives the training fit from (t, t) blocks
        gcv_terms = (Q.reshape(-1), G @ c, (c * c).sum(0), float(G.diagonal().sum()))
    out, errs = [], []
    for lo in range(0, len(tests), SPLIT_CHUNK):
        T = tests[lo:lo + SPLIT_CHUNK]  # (s, t)
        s, t = T.shape
        GTT = Gflat[flat[lo:lo + SPLIT_CHUNK]].reshape(s, t, t)  # (s, t, t)
        cT = c.index_select(0, T.reshape(-1)).reshape(s, t, -1)  # (s, t, C)
        with lapack_threads(K.device):
            L = torch.linalg.cholesky(GTT)
            e = torch.cholesky_solve(cT, L)  # (s, t, C) held-out residuals
        out.append(Y.index_select(0, T.reshape(-1)).reshape(cT.shape) - e)
        if groups is not None and selection == "gcv":
            errs.append(_training_gcv(gcv_terms, flat[lo:lo + SPLIT_CHUNK], T, cT, L, e, groups))
        elif groups is not None:
            errs.append(_training_loo(G, c, T, L, e, groups))
    return torch.cat(out), (torch.cat(errs) if groups is not None else None)


def _bordered(Ainv: torch.Tensor, free: torch.Tensor | None) -> torch.Tensor:
    """(n, n) top-left block of the inverse of ``[[K + aI, F], [F^T, -D]]``, ``F = [1, free]`` (n, 1 + f),
    ``D = diag(0, FREE_PENALTY, ...)``: ``Ainv - P (F^T P + D)^{-1} P^T`` with ``P = Ainv F``."""
    if free is None:  # intercept only: a rank-one update
        a1 = Ainv.sum(1)
        return Ainv - torch.outer(a1, a1) / a1.sum()
    F = torch.cat([torch.ones((Ainv.shape[0], 1), dtype=Ainv.dtype, device=Ainv.device), free], 1)  # (n, 1 + f)
    P = Ainv @ F  # (n, 1 + f)
    D = torch.full((F.shape[1],), FREE_PENALTY, dtype=Ainv.dtype, device=Ainv.device)
    D[0] = 0.0  # the intercept stays exactly unpenalised
    return Ainv - P @ torch.linalg.solve(F.T @ P + torch.diag(D), P.T)


def _training_gcv(terms, flat, T, cT, L, e, groups) -> torch.Tensor:
    """GCV criterion ``n_R |c^R|^2 / tr(G_R)^2`` (s, C // groups) of each split's training-only fit,
    from ``terms = (Q.view(-1), G c, |c|^2 per column, tr G)`` on all rows, the test blocks' flat
    positions ``flat`` (s, t * t), the test rows ``T`` (s, t), ``c_T`` (s, t, C), the Cholesky factor ``L`` (s, t, t) of ``G_TT``
    and the held-out residuals ``e`` (s, t, C); formulas in the module docstring."""
    Qflat, Gc, cc, trace = terms
    s, t, _ = cT.shape
    QTT = Qflat[flat].reshape(s, t, t)  # (s, t, t)
    with lapack_threads(L.device):
        GTT_inv = torch.cholesky_inverse(L)  # (s, t, t)
    tr_R = trace - (GTT_inv * QTT).sum((1, 2))  # (s,) trace of the training rows' bordered inverse
    GcT = Gc.index_select(0, T.reshape(-1)).reshape(cT.shape)  # (s, t, C) rows T of G c
    norm = cc[None] - 2.0 * (e * GcT).sum(1) + (e * (QTT @ e)).sum(1)  # (s, C) |c^R|^2 per column
    n = len(Gc)
    gcv = (n - t) * norm.clamp_min(0.0) / (tr_R ** 2)[:, None]  # (s, C)
    return gcv.reshape(s, -1, groups).sum(2)


def _training_loo(G, c, T, L, e, groups) -> torch.Tensor:
    """Leave-one-out MSE (s, C // groups) inside each split's training rows, from the bordered
    inverse ``G`` (n, n) on all rows, ``c = G Y`` (n, C), the test rows ``T`` (s, t), the Cholesky
    factor ``L`` (s, t, t) of ``G_TT`` and the held-out residuals ``e`` (s, t, C)."""
    n = G.shape[0]
    s, t = T.shape
    GT = G.index_select(0, T.reshape(-1)).reshape(s, t, n)  # (s, t, n) rows G_T: of each split
    with lapack_threads(G.device):
        V = torch.linalg.solve_triangular(L, GT, upper=False)  # (s, t, n) = L^{-1} G_T:
    # diagonal of the training rows' bordered inverse G_RR - G_RT G_TT^{-1} G_TR; ~0 on the test rows
    diag = G.diagonal()[None, :] - (V * V).sum(1)  # (s, n)
    del V
    dual = c[None] - torch.einsum("stn,stc->snc", GT, e)  # (s, n, C) training-only fit; 0 on test rows
    train = torch.ones((s, n), dtype=torch.bool, device=G.device)
    train.scatter_(1, T, False)
    resid = dual / torch.where(train, diag, torch.ones_like(diag))[:, :, None]  # (s, n, C) LOO residuals
    mse = (resid * resid * train[:, :, None]).sum(1) / (n - t)  # (s, C)
    return mse.reshape(s, -1, groups).sum(2)


def block_positions(tests: torch.Tensor, n: int) -> torch.Tensor:
    """(S, t * t) flat positions of each split's (t, t) test block in an (n, n) matrix."""
    return (tests[:, :, None] * n + tests[:, None, :]).reshape(len(tests), -1)


def ridge_split_predictions(X, Y: np.ndarray, tests: np.ndarray, *, alpha=None, alphas=None, groups: int = 1,
                            scale=None, device=None, free=None, selection: str = "gcv") -> tuple[np.ndarray, np.ndarray]:
    """Held-out ridge predictions (S, t, C) for every split and column of ``Y`` (n, C), and the
    penalties used per split and column group (S, C // groups), in units of the Gram's mean eigenvalue.

    ``alpha`` fixed (relative units), or chosen per split and column group from the grid ``alphas``
    by ``selection`` (``"gcv"`` or exact ``"loo"``) inside that split's training rows (nested: the
    test rows are never seen).
    ``free`` (n, f): extra columns (e.g. standardised surface features) fitted beside ``X`` with a
    penalty ``FREE_PENALTY`` times the activations' (in effect unpenalised, like the intercept).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> X = rng.normal(size=(40, 10)); y = X[:, :1] + 0.1 * rng.normal(size=(40, 1))
        >>> pred, chosen = ridge_split_predictions(X, y, np.array([[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]))
        >>> pred.shape, chosen.shape, bool(np.corrcoef(pred[0, :, 0], y[:5, 0])[0, 1] > 0.9)
        ((2, 5, 1), (2, 1), True)
    """
    if selection not in SELECTIONS:
        raise UserError(f"unknown penalty selection {selection!r}; use one of {', '.join(SELECTIONS)}")
    K, _ = standardized_gram(X, device, scale)
    Yt = torch.as_tensor(Y, dtype=torch.float64, device=K.device)
    # the penalties' unit: the mean eigenvalue of the centred Gram matrix (1 when the activations do
    # not vary at all, e.g. layer 0 at the readout token: every prediction is then the training mean)
    unit = float(torch.trace(K)) / K.shape[0] or 1.0
    T = torch.as_tensor(tests, device=K.device)
    flat = block_positions(T, K.shape[0])
    if free is not None:
        free = torch.as_tensor(np.asarray(free, np.float64).reshape(len(Y), -1), device=K.device)
    if alpha is not None:
        preds, _ = heldout_predictions(K, Yt, T, float(alpha) * unit, flat, free=free)
        return preds.cpu().numpy(), np.full((len(tests), Y.shape[1] // groups), float(alpha))
    grid = np.asarray(ALPHA_GRID if alphas is None else alphas, np.float64)
    best = torch.full((len(tests), Y.shape[1] // groups), float("inf"), dtype=torch.float64, device=K.device)
    index = torch.zeros(best.shape, dtype=torch.long, device=K.device)
    preds = torch.zeros((len(tests), tests.shape[1], Y.shape[1]), dtype=torch.float64, device=K.device)
    for i, a in enumerate(grid):
        pred, err = heldout_predictions(K, Yt, T, float(a) * unit, flat, groups, free, selection)
        better = err < best  # (S, C // groups): the first grid penalty wins ties, as in RidgeCV
        best = torch.where(better, err, best)
        index[better] = i
        preds = torch.where(better.repeat_interleave(groups, dim=1)[:, None, :], pred, preds)
    return preds.cpu().numpy(), grid[index.cpu().numpy()]
