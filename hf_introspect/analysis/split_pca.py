"""The reference pipeline (StandardScaler -> PCA(k) -> Ridge) on every split of one layer (``ep``).

Each split standardises with its own training rows, as the reference does, so splits cannot share
a Gram matrix; what they share is a starting subspace. Per split:

1. ``Z_R = (X_R - mean_R) / scale_R`` (training rows), ``Z_T`` the test rows with the same statistics.
2. PCA(k): with ``solver="full"`` the exact top-k eigenpairs of the (n_R, n_R) Gram ``Z_R Z_R^T``
   (float64); with ``solver="ritz"`` the Rayleigh-Ritz pairs of ``Z_R`` in the row subspace spanned
   by the top ``k + oversample`` principal components of the whole layer (computed once per layer,
   by subspace iteration) restricted to the split's training rows, refined by ``power_iterations``
   exact power steps. This is scikit-learn's randomized SVD with a warm start instead of a random
   one: the projection onto the subspace is exact, the subspace is the approximation.
3. Ridge(alpha) on the component scores, intercept the training mean; predictions are linear in
   ``Y``, so every column (target and permuted copies) shares steps 1-2.
"""

from __future__ import annotations

import numpy as np
import torch

from .linear_probe import SCALE_FLOOR


def layer_subspace(Xt: torch.Tensor, m: int, iterations: int = 3, seed: int = 0) -> torch.Tensor:
    """Top-``m`` left singular vectors (n, m) of the layer-wide standardised rows, approximately.

    Subspace iteration on the (n, n) Gram matrix from a seeded Gaussian start.
    """
    mean, scale = Xt.mean(0), Xt.std(0, unbiased=False).clamp_min(SCALE_FLOOR)
    Zf = (Xt - mean) / scale  # (n, d) float32
    K = Zf @ Zf.T  # (n, n)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    Q = torch.randn(K.shape[0], m, generator=gen, dtype=torch.float32).to(Xt.device)
    for _ in range(iterations):
        Q, _ = torch.linalg.qr(K @ Q)
    return Q.double()


def _split_stats(Xt: torch.Tensor, train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    XR = Xt[train].double()  # (n_R, d)
    return XR.mean(0), XR.std(0, unbiased=False).clamp_min(SCALE_FLOOR)


def _exact_pairs(ZR: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact top-k: left vectors (n_R, k), squared singular values (k,), right vectors (d, k)."""
    evals, evecs = torch.linalg.eigh(ZR @ ZR.T)
    evals, evecs = evals.flip(0)[:k], evecs.flip(1)[:, :k]
    keep = evals > evals[0] * 1e-10
    evals, evecs = evals[keep], evecs[:, keep]
    return evecs, evals, (ZR.T @ evecs) / evals.sqrt()


def _ritz_pairs(ZR: torch.Tensor, Q: torch.Tensor, k: int, power_iterations: int):
    """Rayleigh-Ritz top-k of ``ZR`` in span(Q) (n_R, m); same outputs as :func:`_exact_pairs`."""
    Zf = ZR.float()
    Q, _ = torch.linalg.qr(Q)
    for _ in range(power_iterations):
        Q, _ = torch.linalg.qr((Zf @ (Zf.T @ Q.float())).double())
    W = (Zf.T @ Q.float()).double()  # (d, m) = Z_R^T Q
    evals, phi = torch.linalg.eigh(W.T @ W)  # (m,), (m, m)
    evals, phi = evals.flip(0)[:k], phi.flip(1)[:, :k]
    keep = evals > evals[0] * 1e-10
    evals, phi = evals[keep], phi[:, keep]
    return Q @ phi, evals, (W @ phi) / evals.sqrt()


def pca_ridge_split_predictions(X, Y: np.ndarray, splits, *, k: int = 100, alpha: float = 1000.0,
                                solver: str = "auto", oversample: int = 50, power_iterations: int = 0,
                                device=None, seed: int = 0) -> np.ndarray:
    """Held-out predictions (S, t, C) of StandardScaler -> PCA(k) -> Ridge(alpha) per split.

    ``solver``: "full" (exact), "ritz" (warm-started subspace, see the module docstring) or "auto"
    (ritz when ``k + oversample`` is under half the training rows, else full).
    """
    Xt = torch.as_tensor(np.asarray(X), device=device).to(torch.float32)  # (n, d)
    Yt = torch.as_tensor(Y, dtype=torch.float64, device=Xt.device)
    n_train = len(splits[0][0])
    k = min(k, n_train, Xt.shape[1])
    m = k + oversample
    use_ritz = solver == "ritz" or (solver == "auto" and 2 * m < n_train)
    P0 = layer_subspace(Xt, m, seed=seed) if use_ritz else None
    out = []
    for train, test in splits:
        R = torch.as_tensor(train, device=Xt.device)
        T = torch.as_tensor(test, device=Xt.device)
        mean, scale = _split_stats(Xt, R)
        ZR = (Xt[R].double() - mean) / scale  # (n_R, d)
        ZT = (Xt[T].double() - mean) / scale  # (t, d)
        if use_ritz:
            U, s2, V = _ritz_pairs(ZR, P0[R], k, power_iterations)
        else:
            U, s2, V = _exact_pairs(ZR, k)
        YR = Yt[R]
        ybar = YR.mean(0)
        w = (U.T @ (YR - ybar)) * (s2.sqrt() / (s2 + alpha))[:, None]  # (k, C) ridge on the scores U s
        out.append((ZT @ V) @ w + ybar)
    return torch.stack(out).cpu().numpy()
