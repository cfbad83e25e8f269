"""Transfer and the 2x2 cross-prediction on planted shared vs private directions, with the ratios
the geometry predicts; the closed-form probe equals scikit-learn's pipeline."""

from __future__ import annotations

import numpy as np
import pytest

from hf_introspect.analysis import transfer as T
from hf_introspect.errors import UserError


def splits_of(n, k=5, test=0.2, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(k):
        perm = rng.permutation(n)
        cut = int(round(n * (1 - test)))
        out.append((np.sort(perm[:cut]), np.sort(perm[cut:])))
    return out


def orthonormal(d, k, seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, k)))
    return q.T  # (k, d)


@pytest.mark.parametrize("n", [300, 120])  # covariance side (n > d) and Gram side (n <= d)
def test_reference_probe_equals_sklearn_pipeline(n):
    from sklearn.decomposition import PCA
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(n)
    X = rng.normal(size=(n, 150)) * rng.uniform(0.5, 3, size=150) + 2.0
    y = X[:, :5].sum(1) + rng.normal(size=n)
    Xnew = rng.normal(size=(40, 150))
    ref = make_pipeline(StandardScaler(), PCA(100), Ridge(alpha=1000)).fit(X, y).predict(Xnew)
    ours = T.fit_reference_probe(X, y).predict(Xnew)[:, 0]
    np.testing.assert_allclose(ours, ref, atol=1e-9)


def planted_passes(theta_deg, n=400, d=20, noise=0.1, seed=0):
    """mcq encodes y along u; self_conf along cos(theta) u + sin(theta) v (v orthogonal to u)."""
    rng = np.random.default_rng(seed)
    u, v = orthonormal(d, 2, seed)
    y = rng.normal(size=n)
    t = np.deg2rad(theta_deg)
    Xm = np.outer(y, u) + noise * rng.normal(size=(n, d))
    Xs = np.outer(y, np.cos(t) * u + np.sin(t) * v) + noise * rng.normal(size=(n, d))
    return Xm, Xs, y


@pytest.mark.parametrize("theta,expected", [(0, 1.0), (60, 0.75), (90, 0.0)])
def test_transfer_ratio_follows_the_planted_angle(theta, expected):
    # A probe reading u predicts cos(theta) * y from the self_conf activations:
    # R^2 = 1 - (1 - cos theta)^2 -> 1 (shared), 0.75 (60 degrees), 0 (private).
    Xm, Xs, y = planted_passes(theta)
    splits = splits_of(len(y))
    out = T.transfer_layer(Xm, {"self_conf": Xs}, y, splits, alpha=1.0)
    assert out["direct"].mean() > 0.98
    ratio = T.transfer_ratio([out["direct"].mean()], [out["self_conf.centered"].mean()])["ratio"]
    assert ratio == pytest.approx(expected, abs=0.05)
    # the shuffled-alignment control breaks any transfer
    assert out["self_conf.shuffled.centered"].mean() < 0.05
    assert out["self_conf.shuffled.separate"].mean() < 0.05


def test_separate_standardisation_removes_a_pass_offset():
    Xm, Xs, y = planted_passes(0)
    Xs = 3.0 * Xs + 10.0  # same direction, other offset and scale in the confidence pass
    out = T.transfer_layer(Xm, {"self_conf": Xs}, y, splits_of(len(y)), alpha=1.0)
    assert out["self_conf.separate"].mean() > 0.95
    assert out["self_conf.centered"].mean() < 0.0


def test_cross_prediction_shared_vs_private():
    rng = np.random.default_rng(4)
    n, d = 400, 24
    u, v, w = orthonormal(d, 3, 4)
    ys, yo = rng.normal(size=n), rng.normal(size=n)
    noise = lambda: 0.1 * rng.normal(size=(n, d))  # noqa: E731
    splits = splits_of(n)
    # shared: both prompts write their readout along u -> off-diagonal as high as the diagonal
    c = T.cross_layer(np.outer(ys, u) + noise(), np.outer(yo, u) + noise(), ys, yo, splits, alpha=1.0).mean(-1)
    assert c.min() > 0.95
    # private: self along u, other along v; the self prompt also carries the other target along
    # w, which the self probe must ignore -> off-diagonal near 0 or below. "centered": the
    # per-feature rescaling of "separate" would bend v off its orthogonality with u and w.
    Xs = np.outer(ys, u) + np.outer(yo, w) + noise()
    Xo = np.outer(yo, v) + noise()
    c, r = T.cross_layer(Xs, Xo, ys, yo, splits, alpha=1.0, standardisation="centered", return_r=True)
    c, r = c.mean(-1), r.mean(-1)
    assert c[0, 0] > 0.95 and c[1, 1] > 0.95 and r[0, 0] > 0.97 and abs(r[0, 1]) < 0.5
    # off-diagonal: only the probes' noise-fitted weights (~1/sqrt(n) along u and w) read anything
    assert c[0, 1] < 0.2 and c[1, 0] < 0.2


def test_cross_correlation_ignores_a_units_mismatch():
    # other_conf writes the same quantity along the same direction, in other units (x3 + 10): the
    # self probe's predictions correlate perfectly with it while R^2 charges the offset and scale
    rng = np.random.default_rng(6)
    n, d = 300, 16
    (u,) = orthonormal(d, 1, 6)
    ys = rng.normal(size=n)
    Xs, Xo = (np.outer(ys, u) + 0.05 * rng.normal(size=(n, d)) for _ in range(2))
    c, r = T.cross_layer(Xs, Xo, ys, 3 * ys + 10, splits_of(n), alpha=1.0, return_r=True)
    assert r.mean(-1).min() > 0.98
    assert c[0, 1].mean() < 0.0 < 0.95 < c[1, 1].mean()


def test_transfer_ratio_undefined_without_direct_signal():
    assert np.isnan(T.transfer_ratio([-0.1, 0.0], [0.2, 0.1])["ratio"])


def test_misaligned_rows_and_constant_targets_are_user_errors():
    Xm, Xs, y = planted_passes(0, n=50)
    with pytest.raises(UserError, match="align the passes"):
        T.transfer_layer(Xm, {"self_conf": Xs[:40]}, y, splits_of(50))
    with pytest.raises(UserError, match="constant"):
        T.r2(np.ones(5), np.zeros(5))
