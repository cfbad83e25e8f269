"""Directions: planted directions recovered, Gram-Schmidt on known vectors, the reference probe
direction equal to scikit-learn's pipeline, the permuted null, save/load bit-exact."""

from __future__ import annotations

import numpy as np
import pytest

from hf_introspect.analysis import directions as D
from hf_introspect.errors import UserError


def planted(n=400, d=64, strength=3.0, seed=0, spread=(0.5, 2.0)):
    """Noise (axis std drawn from ``spread``) plus y along a known unit direction u -> X (n, d), y (n,), u (d,)."""
    rng = np.random.default_rng(seed)
    u = rng.normal(size=d)
    u /= np.linalg.norm(u)
    noise = rng.normal(size=(n, d)) * rng.uniform(*spread, size=d)
    y = rng.normal(size=n)
    return (noise + strength * y[:, None] * u + 5.0).astype(np.float32), y, u


def test_meandiff_recovers_planted_direction():
    X, y, u = planted()
    d = D.meandiff_direction(X, y)
    assert D.cosine(d, u) > 0.95
    assert np.linalg.norm(d) == pytest.approx(1.0)
    assert D.projection_r2(X, y, d) > 0.6
    # sign: the direction points towards high targets
    assert D.cosine(D.meandiff_direction(X, -y), u) < -0.95


def test_probe_direction_recovers_planted_direction():
    # A probe's weights are a decoding filter (~ noise covariance^-1 u): equal to the planted
    # (encoding) direction only when the noise is isotropic; with unequal axis variances the
    # cosine drops (0.78 with spread 0.5-2), which is why probe and mean-diff directions differ.
    X, y, u = planted(spread=(1.0, 1.0))
    assert D.cosine(D.probe_direction(X, y), u) > 0.95
    X, y, u = planted()
    assert D.cosine(D.probe_direction(X, y), u) < 0.9 < D.cosine(D.meandiff_direction(X, y), u)


def test_probe_direction_equals_sklearn_pipeline():
    from sklearn.decomposition import PCA
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y, _ = planted(n=300, d=150, seed=3)
    pipe = make_pipeline(StandardScaler(), PCA(100), Ridge(alpha=1000)).fit(X.astype(np.float64), y)
    scaler, pca, ridge = pipe.steps[0][1], pipe.steps[1][1], pipe.steps[2][1]
    ref = pca.components_.T @ ridge.coef_ / scaler.scale_
    ours = D.probe_direction(X, y)
    assert D.cosine(ours, ref) > 1 - 1e-9


def test_batched_directions_match_one_at_a_time():
    X, y, _ = planted(seed=5)
    Y = np.stack([y, y**2, -y], axis=1)
    md, pr = D.meandiff_directions(X, Y), D.probe_directions(X, Y)
    for j in range(3):
        np.testing.assert_allclose(md[j], D.meandiff_direction(X, Y[:, j]), atol=1e-12)
        np.testing.assert_allclose(pr[j], D.probe_direction(X, Y[:, j]), atol=1e-12)


def test_unique_part_known_vectors():
    u, norm = D.unique_part([3.0, 4.0, 0.0], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(u, [0.0, 1.0, 0.0])
    assert norm == pytest.approx(0.8)  # sqrt(1 - 0.6^2)
    u, norm = D.unique_part([1.0, 0.0], [-2.0, 0.0])  # parallel: nothing unique
    assert norm == 0.0 and not u.any()
    a, b = np.array([1.0, 0.05, 0.0]), np.array([1.0, 0.0, 0.0])
    _, norm = D.unique_part(a, b)
    assert norm < D.RESIDUAL_FLAG and norm == pytest.approx(np.sqrt(1 - D.cosine(a, b) ** 2))


def test_cosine_matrices_and_nan_rows():
    A = np.array([[1.0, 0.0], [np.nan, np.nan], [1.0, 1.0]])
    B = np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    np.testing.assert_allclose(D.layer_cosines(A, B), [0.0, np.nan, 1.0])
    M = D.cosine_matrix(A, B)
    assert M.shape == (3, 3) and np.isnan(M[1]).all()
    assert M[2, 0] == pytest.approx(np.sqrt(0.5))


def test_permuted_null_is_low_while_shared_signal_is_high():
    X, y, u = planted(n=300, d=64, seed=7)
    Xb = X + np.random.default_rng(8).normal(size=X.shape)  # another pass carrying the same signal
    real = D.cosine(D.meandiff_direction(X, y), D.meandiff_direction(Xb, y))
    null = D.permuted_cosine_null(X, y, Xb, y, kind="meandiff", permutations=50, seed=0)
    assert null.shape == (50,)
    assert real > 0.9 and np.quantile(null, 0.95) < 0.6
    probe_null = D.permuted_cosine_null(X, y, Xb, y, kind="probe", permutations=20)
    assert np.quantile(probe_null, 0.95) < 0.6
    within = D.permuted_cosine_null(X, y, permutations=10)  # mean-diff vs probe on one shuffled target
    assert within.shape == (10,)


def test_constant_target_is_a_user_error():
    X, _, _ = planted(n=40, d=8)
    with pytest.raises(UserError, match="constant"):
        D.meandiff_direction(X, np.ones(40))


def test_save_load_round_trip_bit_exact(tmp_path):
    rng = np.random.default_rng(0)
    vec = np.full((5, 16), np.nan, np.float32)
    vec[[1, 3]] = rng.normal(size=(2, 16)).astype(np.float32)
    score = np.array([np.nan, 0.123456789, np.nan, -0.5, np.nan])
    dirs = D.DirectionSet({("self_conf", "probe"): vec, ("other_conf", "meandiff"): vec[::-1].copy()},
                          {("self_conf", "probe"): score}, {"run": "r1", "target": "self_confidence",
                                                              "position": "answer"})
    D.save_directions(tmp_path / "dirs", dirs)
    back = D.load_directions(tmp_path / "dirs")
    assert back.keys == dirs.keys and back.meta == dirs.meta
    for k in dirs.keys:
        assert back.vectors[k].dtype == np.float32
        assert back.vectors[k].tobytes() == dirs.vectors[k].tobytes()
    assert back.score("self_conf", "probe").tobytes() == score.tobytes()
    assert back.layers == [1, 3] and back.num_layers == 4 and back.hidden == 16
    assert back.layer(3, "self_conf", "probe").tobytes() == vec[3].tobytes()
    with pytest.raises(UserError, match="computed layers: \\[1, 3\\]"):
        back.layer(2, "self_conf", "probe")
    with pytest.raises(UserError, match="pick one"):
        back.get()
    import json

    sidecar = json.loads((tmp_path / "dirs" / D.JSON_NAME).read_text())
    assert sidecar["entries"][0]["score"][1] == 0.123456789 and sidecar["entries"][0]["score"][0] is None


def test_load_plain_npy(tmp_path):
    v = np.arange(8, dtype=np.float32)
    np.save(tmp_path / "one.npy", v)
    one = D.load_directions(tmp_path / "one.npy")
    assert one.layer(17).tobytes() == v.tobytes()  # a (hidden,) vector serves any layer
    stack = np.arange(24, dtype=np.float32).reshape(3, 8)
    np.save(tmp_path / "stack.npy", stack)
    assert D.load_directions(tmp_path / "stack.npy").layer(2).tobytes() == stack[2].tobytes()
    with pytest.raises(UserError, match="no such directions file"):
        D.load_directions(tmp_path / "missing")
