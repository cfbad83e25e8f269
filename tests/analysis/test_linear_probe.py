"""fit_probe / LinearProbe: ep equals scikit-learn's reference pipeline, ridge equals RidgeCV's
leave-one-out choice, planted directions are recovered, bad input is one line."""

from __future__ import annotations

import numpy as np
import pytest

from hf_introspect.analysis.linear_probe import ALPHA_GRID, fit_probe
from hf_introspect.errors import UserError


@pytest.fixture(autouse=True)
def one_blas_thread():
    """scikit-learn's LAPACK on one thread: on a shared 2-core machine two threads made these
    small references ~10x slower (the engine itself does the same, see ``lapack_threads``)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield


def correlated(n, d, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) @ (rng.normal(size=(d, d)) / np.sqrt(d)) * rng.uniform(0.5, 3.0, d) + rng.normal(size=d)
    return rng, X


def reference_pipeline(components, last, scaler=True):
    from sklearn.decomposition import PCA
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    steps = ([StandardScaler()] if scaler else []) + [PCA(components, svd_solver="full"), last]
    return make_pipeline(*steps)


def test_ep_equals_sklearn_pipeline_and_direction():
    from sklearn.linear_model import Ridge

    rng, X = correlated(200, 300)
    y = X[:, :5].sum(1) + rng.normal(size=200)
    Xnew = correlated(40, 300, seed=1)[1]
    probe = fit_probe(X, y, method="ep")
    ref = reference_pipeline(100, Ridge(alpha=1000.0)).fit(X, y)
    np.testing.assert_allclose(probe.predict(Xnew), ref.predict(Xnew), atol=1e-6)
    scaler, pca, ridge = ref[0], ref[1], ref[2]
    ref_dir = (ridge.coef_ @ pca.components_) / scaler.scale_
    assert float(probe.direction @ ref_dir / np.linalg.norm(ref_dir)) > 1 - 1e-9
    assert probe.alpha == 1000.0 and probe.coef.shape == (300,)


def test_ep_letters_equal_pca_logistic():
    from sklearn.linear_model import LogisticRegression

    rng, X = correlated(160, 120)
    signal = X[:, 0] + 0.5 * rng.normal(size=160)
    letters = np.array(list("ABCD"))[np.digitize(signal, np.quantile(signal, [0.25, 0.5, 0.75]))]
    probe = fit_probe(X, letters, method="ep", task="multiclass", n_components=60)
    # the reference's letter probe: PCA(256) + LogisticRegression, no scaler in front
    ref = reference_pipeline(60, LogisticRegression(max_iter=1000), scaler=False).fit(X, letters)
    np.testing.assert_allclose(probe.decision(X), ref.decision_function(X), atol=1e-3)
    assert np.array_equal(probe.predict(X), ref.predict(X)) and probe.coef.shape == (4, 120)


def test_ridge_loo_alpha_equals_ridgecv():
    from sklearn.linear_model import RidgeCV

    rng, X = correlated(90, 150)
    y = X[:, 0] - X[:, 1] + 0.5 * rng.normal(size=90)
    probe = fit_probe(X, y)
    Z = (X - X.mean(0)) / X.std(0)
    grid = ALPHA_GRID * np.sum(Z ** 2) / len(Z)  # the grid's unit: the Gram's mean eigenvalue
    ref = RidgeCV(alphas=grid).fit(Z, y)
    assert probe.alpha == pytest.approx(ref.alpha_, rel=1e-9)
    np.testing.assert_allclose(probe.predict(X), ref.predict(Z), atol=1e-8)


def test_ridge_recovers_planted_direction_and_standardisation_modes():
    rng = np.random.default_rng(3)
    n, d = 2000, 60
    scales = rng.uniform(0.5, 4.0, d)
    X = rng.normal(size=(n, d)) * scales + rng.normal(size=d)  # independent dims, varied scales
    planted = rng.normal(size=d)
    planted /= np.linalg.norm(planted)
    y = (X - X.mean(0)) @ planted + 0.3 * rng.normal(size=n)
    for method in ("ridge", "ep"):
        probe = fit_probe(X.astype(np.float16), y, method=method)  # ep: PCA(100) clipped to the 60 dims
        cos = probe.direction @ planted  # y = X w: the raw-space direction is w itself
        assert cos > 0.95, (method, cos)
    probe = fit_probe(X, y)
    shifted = X[:50] * 3.0 + 7.0  # another pass's activations: other offset and scale
    own = probe.predict(shifted, standardize="own")
    np.testing.assert_allclose(own, probe.predict(X[:50], standardize="own"), atol=1e-9)
    assert not np.allclose(probe.predict(shifted, standardize="train"), probe.predict(X[:50]), atol=1e-3)
    np.testing.assert_allclose(probe.predict(X[:50]), probe.decision(X[:50]))


def test_binary_ridge_and_logistic():
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    rng, X = correlated(150, 40, seed=4)
    labels = np.where(X[:, 2] + 0.5 * rng.normal(size=150) > X[:, 2].mean(), "right", "wrong")
    for method in ("ridge", "logistic"):
        probe = fit_probe(X, labels, method=method, task="binary")
        assert list(probe.classes) == ["right", "wrong"] and probe.coef.shape == (40,)
        assert roc_auc_score(labels == "wrong", probe.decision(X)) > 0.9
        assert np.mean(probe.predict(X) == labels) > 0.8
    Z = (X - X.mean(0)) / X.std(0)
    ref = LogisticRegression(max_iter=1000).fit(Z, labels)
    np.testing.assert_allclose(probe.decision(X), ref.decision_function(Z), atol=1e-3)


@pytest.mark.parametrize("X, y, task, message", [
    (np.ones((20, 4)), np.full(20, 2.0), "regression", "constant"),
    (np.ones((3, 4)), np.arange(3.0), "regression", "at least 5 questions"),
    (np.full((20, 4), np.nan), np.arange(20.0), "regression", "NaN"),
    (np.ones((20, 4)), np.r_[np.arange(19.0), np.nan], "regression", "NaN"),
    (np.ones((20, 4)), np.array(["a"] * 20), "binary", "2 classes"),
    (np.ones((20, 4)), np.arange(19.0), "regression", "one value per question"),
])
def test_bad_input_is_one_line(X, y, task, message):
    with pytest.raises(UserError, match=message) as err:
        fit_probe(X, y, task=task)
    assert "\n" not in str(err.value)


def test_bad_method_and_task():
    X, y = np.random.default_rng(0).normal(size=(20, 3)), np.arange(20.0)
    for kwargs, message in (({"method": "lasso"}, "unknown probe method"), ({"task": "ranking"}, "unknown probe task"),
                            ({"method": "logistic"}, "needs a class target")):
        with pytest.raises(UserError, match=message):
            fit_probe(X, y, **kwargs)


def test_ridge_directions_equal_one_fit_probe_per_column_with_its_own_penalty():
    from hf_introspect.analysis.linear_probe import ridge_directions

    rng = np.random.default_rng(3)
    X = rng.normal(size=(120, 40)) @ rng.normal(size=(40, 60)) + rng.normal(size=(120, 60))
    y = X[:, 0] + 2 * rng.normal(size=120)
    Y = np.stack([y] + [rng.permutation(y) for _ in range(4)], 1)  # a target and 4 permuted copies
    dirs, chosen = ridge_directions(X, Y)
    unit = np.sum(((X - X.mean(0)) / X.std(0)) ** 2) / 120
    for j in range(5):
        probe = fit_probe(X, Y[:, j])
        np.testing.assert_allclose(dirs[j], probe.direction, atol=1e-12)
        assert chosen[j] == pytest.approx(probe.alpha / unit, rel=1e-9)
    assert chosen[0] < chosen[1:].min()  # the copies choose their own (heavier) penalty, not the target's
