"""Ridge test predictions for every split of one layer at once (the engine of ``score_splits``).

Why it is cheap: with a split-independent standardisation (every question's layer-wide mean and
std), all splits share one Gram matrix ``K = Z Z^T`` (n, n). Ridge with an unpenalised intercept is
the bordered system ``[[K + aI, 1], [1^T, 0]] [c; b] = [y; 0]``; with ``G`` the (n, n) block of its
inverse and ``c = G y`` the fit on all questions, deleting the test rows ``T`` of a split gives the
held-out residuals exactly (block-deletion identity of the inverse):

    y_T - yhat_T(trained without T) = G_TT^{-1} c_T

so one Cholesky of ``K + aI`` per penalty and one (t, t) Cholesky per split replace a fit per split,
and every column of ``Y`` (the target and its permuted copies) costs one more right-hand side.
"""

from __future__ import annotations

import numpy as np
import torch

from .linear_probe import ALPHA_GRID, SCALE_FLOOR, lapack_threads

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


def loo_alphas(K: torch.Tensor, Y: torch.Tensor, grid: np.ndarray, groups: int = 1) -> np.ndarray:
    """Per column group of ``Y`` (n, C), the grid penalty with the least exact leave-one-out MSE.

    One eigendecomposition of ``K`` (float32 here: it only ranks the grid) serves every penalty;
    leverages include the intercept's 1/n. Returns (C // groups,) absolute penalties.
    """
    n = K.shape[0]
    with lapack_threads(K.device):
        evals, U = torch.linalg.eigh(K.float() if n > 512 else K)
    evals, U = evals.double().clamp_min(0.0), U.double()
    Yc = Y - Y.mean(0)
    UtY = U.T @ Yc  # (n, C)
    U2 = U * U
    errs = []
    for a in grid:
        shrink = evals / (evals + a)  # (n,)
        resid = Yc - U @ (shrink[:, None] * UtY)  # (n, C)
        hat = 1.0 / n + U2 @ shrink  # (n,)
        err = ((resid / (1.0 - hat)[:, None]) ** 2).mean(0)  # (C,)
        errs.append(err.reshape(-1, groups).sum(1))
    best = torch.stack(errs).argmin(0).cpu().numpy()  # (C // groups,)
    return np.asarray(grid, np.float64)[best]


def heldout_predictions(K: torch.Tensor, Y: torch.Tensor, tests: torch.Tensor, alpha: float,
                        flat: torch.Tensor | None = None) -> torch.Tensor:
    """Test-row predictions (S, t, C) of ridge(alpha) trained on each split's other rows.

    ``tests`` (S, t) holds each split's test rows; the training rows are all the others.
    ``flat`` (S, t * t): the test blocks' positions in ``K.view(-1)`` (computed here when not given).
    """
    n = K.shape[0]
    A = K.clone()
    A.diagonal().add_(alpha)
    with lapack_threads(K.device):
        Ainv = torch.cholesky_inverse(torch.linalg.cholesky(A))  # (n, n)
    a1 = Ainv.sum(1)
    G = Ainv - torch.outer(a1, a1) / a1.sum()  # (n, n) block of the bordered inverse (intercept)
    c = G @ Y  # (n, C) dual coefficients of the fit on all rows
    if flat is None:
        flat = block_positions(tests, n)
    Gflat = G.reshape(-1)
    out = []
    for lo in range(0, len(tests), SPLIT_CHUNK):
        T = tests[lo:lo + SPLIT_CHUNK]  # (s, t)
        GTT = Gflat[flat[lo:lo + SPLIT_CHUNK]].reshape(len(T), T.shape[1], T.shape[1])  # (s, t, t)
        cT = c.index_select(0, T.reshape(-1)).reshape(len(T), T.shape[1], -1)  # (s, t, C)
        with lapack_threads(K.device):
            e = torch.cholesky_solve(cT, torch.linalg.cholesky(GTT))  # (s, t, C) held-out residuals
        out.append(Y.index_select(0, T.reshape(-1)).reshape(cT.shape) - e)
    return torch.cat(out)


def block_positions(tests: torch.Tensor, n: int) -> torch.Tensor:
    """(S, t * t) flat positions of each split's (t, t) test block in an (n, n) matrix."""
    return (tests[:, :, None] * n + tests[:, None, :]).reshape(len(tests), -1)


def ridge_split_predictions(X, Y: np.ndarray, tests: np.ndarray, *, alpha=None, alphas=None, groups: int = 1,
                            scale=None, device=None) -> tuple[np.ndarray, np.ndarray]:
    """Held-out ridge predictions (S, t, C) for every split and column of ``Y`` (n, C), and the
    penalties used per column group (C // groups,), in units of the Gram's mean eigenvalue.

    ``alpha`` fixed (relative units) or chosen per column group by exact LOO over all questions.
    """
    K, _ = standardized_gram(X, device, scale)
    Yt = torch.as_tensor(Y, dtype=torch.float64, device=K.device)
    # the penalties' unit: the mean eigenvalue of the centred Gram matrix (1 when the activations do
    # not vary at all, e.g. layer 0 at the readout token: every prediction is then the training mean)
    unit = float(torch.trace(K)) / K.shape[0] or 1.0
    if alpha is not None:
        chosen = np.full(Y.shape[1] // groups, float(alpha) * unit)
    else:
        grid = np.asarray(ALPHA_GRID if alphas is None else alphas, np.float64) * unit
        chosen = loo_alphas(K, Yt, grid, groups)
    T = torch.as_tensor(tests, device=K.device)
    preds = torch.empty((len(tests), tests.shape[1], Y.shape[1]), dtype=torch.float64, device=K.device)
    flat = block_positions(T, K.shape[0])
    per_column = np.repeat(chosen, groups)
    for a in np.unique(per_column):
        cols = torch.as_tensor(np.flatnonzero(per_column == a), device=K.device)
        preds[:, :, cols] = heldout_predictions(K, Yt[:, cols], T, float(a), flat)
    return preds.cpu().numpy(), chosen / unit
