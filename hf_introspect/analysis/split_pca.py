"""The reference pipeline (StandardScaler -> PCA(k) -> Ridge) on every split of one layer (``ep``).

Each split standardises with its own training rows, as the reference does, so splits cannot share
a Gram matrix; what they share is a starting subspace. Per split:

1. ``Z_R = (X_R - mean_R) / scale_R`` (training rows), ``Z_T`` the test rows with the same statistics.
2. PCA(k): with ``solver="full"`` the exact top-k eigenpairs of the (n_R, n_R) Gram ``Z_R Z_R^T``
   (float64); with ``solver="ritz"`` the Rayleigh-Ritz pairs of ``Z_R`` in the subspace spanned by
   the layer's top ``k + oversample`` principal components (left singular vectors of all questions,
   standardised layer-wide, by ``subspace_iterations`` of subspace iteration once per layer)
   restricted to the split's training rows. The projection onto that subspace is exact; the
   subspace is the approximation, as in scikit-learn's randomized PCA (which starts from a random
   block instead). Because ``X_R^T P_R = X^T P - X_T^T P_T``, a split only pays for its test rows.
   The subspace comes from every question's activations (never a label), so a split's test rows
   shape which approximation of its training PCA is used; ``solver="full"`` avoids even that.
3. Ridge(alpha) on the component scores, intercept the training mean; predictions are linear in
   ``Y``, so every column (target and permuted copies) shares steps 1-2.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import UserError
from .linear_probe import SCALE_FLOOR, lapack_threads


def orthonormalize(Y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``Y = Q R`` with Q's columns orthonormal, by Cholesky-QR twice in float64 (gemm-bound: LAPACK's
    QR of an (800, 200) block is ~4x slower here, and ~100x under load with 2 threads)."""
    Q, R = Y.double(), None
    for _ in range(2):
        with lapack_threads(Y.device):
            C = torch.linalg.cholesky(Q.T @ Q).T  # (m, m) upper
            Q = torch.linalg.solve_triangular(C, Q, upper=True, left=False)
        R = C if R is None else C @ R
    return Q, R


def layer_subspace(Xt: torch.Tensor, m: int, iterations: int = 6, seed: int = 0) -> torch.Tensor:
    """Top-``m`` left singular vectors (n, m) of the layer-wide standardised rows, approximately.

    Subspace iteration on the (n, n) Gram matrix from a seeded Gaussian start.
    """
    mean, scale = Xt.mean(0), Xt.std(0, unbiased=False).clamp_min(SCALE_FLOOR)
    Zf = (Xt - mean) / scale  # (n, d) float32
    K = Zf @ Zf.T  # (n, n)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    Q = torch.randn(K.shape[0], m, generator=gen, dtype=torch.float32).to(Xt.device)
    for _ in range(iterations):
        Q = orthonormalize(K @ Q)[0].float()
    return Q.double()


def _split_stats(Xt: torch.Tensor, train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    XR = Xt[train].double()  # (n_R, d)
    return XR.mean(0), XR.std(0, unbiased=False).clamp_min(SCALE_FLOOR)


def _exact_pairs(ZR: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact top-k: left vectors (n_R, k), squared singular values (k,), right vectors (d, k)."""
    with lapack_threads(ZR.device):
        evals, evecs = torch.linalg.eigh(ZR @ ZR.T)
    evals, evecs = evals.flip(0)[:k], evecs.flip(1)[:, :k]
    keep = evals > evals[0] * 1e-10
    evals, evecs = evals[keep], evecs[:, keep]
    return evecs, evals, (ZR.T @ evecs) / evals.sqrt()


class LayerBasis:
    """What every split of one layer shares for ``solver="ritz"``: the rows shifted by the layer mean
    (float32), their per-dimension sums (float64), the layer's top-m left subspace ``P`` (n, m) and
    ``X^T P`` (d, m), so a split's projections only need its test rows (t x d x m flops, not n x d x m).
    """

    def __init__(self, Xt: torch.Tensor, m: int, iterations: int, seed: int):
        self.shift = Xt.double().mean(0)
        self.Xc = (Xt.double() - self.shift).float()  # (n, d) centred over all questions
        X64 = self.Xc.double()
        self.s1, self.s2 = X64.sum(0), (X64 * X64).sum(0)  # (d,) sums for the split statistics
        self.P = layer_subspace(self.Xc, m, iterations, seed).float()  # (n, m)
        self.XtP = self.Xc.T @ self.P  # (d, m)
        self.Pk = None

    def split_stats(self, T: torch.Tensor, n_train: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Training mean (shifted) and floored std from the layer sums minus the test rows' sums."""
        XT = self.Xc[T]  # (t, d) float32, centred over all questions: its sums lose nothing that matters
        mean = (self.s1 - XT.sum(0, dtype=torch.float64)) / n_train
        var = (self.s2 - (XT * XT).sum(0, dtype=torch.float64)) / n_train - mean * mean
        return mean, var.clamp_min(0.0).sqrt().clamp_min(SCALE_FLOOR)

    def ritz(self, R: torch.Tensor, T: torch.Tensor, mean, scale, k: int):
        """Ritz pairs of the split's standardised training rows in span(P[R]) and the test rows' scores.

        Returns ``PR`` (n_R, m) = ``Q Rf`` and ``Rf`` (m, m) (``Q`` orthonormal, never formed), ``phi``
        (m, k), squared singular values (k,) and ``Z_T W phi`` (t, k), where ``W = Z_R^T Q`` (d, m)
        is never formed either: ``W = Z_R^T P[R] Rf^-1``.
        """
        PR = self.P[R]  # (n_R, m); near-orthonormal (P is, over all n rows): one Cholesky-QR is exact enough
        PR64 = PR.double()
        G = PR64.T @ PR64
        with lapack_threads(PR.device):
            Rf = torch.linalg.cholesky(G).T  # (m, m) upper: PR = Q Rf, Q never formed
        inv_scale = (1.0 / scale).float()
        mean32 = mean.float()
        # Z_R^T P[R] = D^-1 (X_R - mean)^T P[R] = D^-1 (X^T P - X_T^T P[T] - mean 1^T P[R]), built in
        # place in one (d, m) buffer (the temporaries cost as much as the products at d = 4096)
        XT = self.Xc[T]  # (t, d)
        WP = torch.addmm(self.XtP, XT.T, self.P[T], alpha=-1.0)  # (d, m)
        WP.addr_(mean32, PR.sum(0), alpha=-1.0).mul_(inv_scale[:, None])
        WtW = (WP.T @ WP).double()
        with lapack_threads(PR.device):
            B = torch.linalg.solve_triangular(Rf, WtW, upper=True, left=False)
            B = torch.linalg.solve_triangular(Rf.T, B, upper=False)  # (m, m) = W^T W = Rf^-T WP^T WP Rf^-1
            evals, phi = torch.linalg.eigh((B + B.T) / 2)
        evals, phi = evals.flip(0)[:k], phi.flip(1)[:, :k]
        keep = evals > evals[0] * 1e-10
        evals, phi = evals[keep], phi[:, keep]
        ZTWP = (XT.sub(mean32).mul_(inv_scale) @ WP).double()  # (t, m) = Z_T W Rf
        with lapack_threads(PR.device):
            scores = torch.linalg.solve_triangular(Rf, ZTWP, upper=True, left=False) @ phi  # (t, k)
        return PR64, Rf, phi, evals, scores


def pca_ridge_split_predictions(X, Y: np.ndarray, splits, *, k: int = 100, alpha: float = 1000.0,
                                solver: str = "auto", oversample: int = 100, subspace_iterations: int = 6,
                                device=None, seed: int = 0) -> np.ndarray:
    """Held-out predictions (S, t, C) of StandardScaler -> PCA(k) -> Ridge(alpha) per split.

    ``solver``: "full" (exact), "ritz" (the layer's top ``k + oversample`` subspace, see the module
    docstring) or "auto" (ritz when ``k + oversample`` is under half the training rows, else full).
    """
    if solver not in ("auto", "full", "ritz"):
        raise UserError(f"solver must be auto, full or ritz (got {solver!r})")
    Xt = torch.as_tensor(np.asarray(X), device=device).to(torch.float32)  # (n, d)
    Yt = torch.as_tensor(Y, dtype=torch.float64, device=Xt.device)
    n_train = len(splits[0][0])
    k = min(k, n_train, Xt.shape[1])
    m = min(k + oversample, Xt.shape[0])
    use_ritz = solver == "ritz" or (solver == "auto" and 2 * m < n_train)
    basis = LayerBasis(Xt, m, subspace_iterations, seed) if use_ritz else None
    out = []
    for train, test in splits:
        R = torch.as_tensor(train, device=Xt.device)
        T = torch.as_tensor(test, device=Xt.device)
        YR = Yt[R]
        ybar = YR.mean(0)
        if use_ritz:
            mean, scale = basis.split_stats(T, len(train))
            PR, Rf, phi, s2, scores = basis.ritz(R, T, mean, scale, k)  # scores: (t, k) = Z_T W phi
            PtY = PR.T @ (YR - ybar)
            with lapack_threads(device):
                QtY = torch.linalg.solve_triangular(Rf.T, PtY, upper=False)  # (m, C) = Q^T y_c
            w = (phi.T @ QtY) / (s2 + alpha)[:, None]  # (k, C) ridge on the component scores
            out.append(scores @ w + ybar)
            continue
        mean, scale = _split_stats(Xt, R)
        ZR = (Xt[R].double() - mean) / scale  # (n_R, d)
        ZT = (Xt[T].double() - mean) / scale  # (t, d)
        U, s2, V = _exact_pairs(ZR, k)
        w = (U.T @ (YR - ybar)) * (s2.sqrt() / (s2 + alpha))[:, None]  # (k, C) ridge on the scores U s
        out.append((ZT @ V) @ w + ybar)
    return torch.stack(out).cpu().numpy()
