"""make_splits / score_splits: ep equals scikit-learn per split, the shared-Gram ridge equals a fit
per split, planted signals are found, the permutation null behaves and is reproducible."""

from __future__ import annotations

import numpy as np
import pytest

from hf_introspect.analysis.linear_probe import fit_probe
from hf_introspect.analysis.split_fits import auroc, make_splits, score_splits
from hf_introspect.errors import UserError


@pytest.fixture(autouse=True)
def one_blas_thread():
    """scikit-learn's LAPACK on one thread: on a shared 2-core machine two threads made these
    small references ~10x slower (the engine itself does the same, see ``lapack_threads``)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield


def planted(n=300, d=40, r2=0.6, seed=0):
    """Activations and a target with population R^2 ``r2`` on a direction of them."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * rng.uniform(0.5, 2.0, d)
    w = rng.normal(size=d)
    signal = (X - X.mean(0)) @ w
    signal /= signal.std()
    y = signal + np.sqrt((1 - r2) / r2) * rng.normal(size=n)
    return rng, X, y


def test_make_splits_by_seed():
    splits = make_splits(50, n_splits=7, test_size=0.2, seed=3)
    assert len(splits) == 7
    for train, test in splits:
        assert len(test) == 10 and len(train) == 40
        assert np.array_equal(np.sort(np.r_[train, test]), np.arange(50))
    again = make_splits(50, n_splits=7, test_size=0.2, seed=3)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(splits, again))
    assert not np.array_equal(splits[0][1], make_splits(50, 7, 0.2, seed=4)[0][1])
    for args, message in (((3,), "at least 5"), ((50, 5, 1.5), "test_size"), ((50, 0), "n_splits")):
        with pytest.raises(UserError, match=message):
            make_splits(*args)


def test_ep_equals_sklearn_pipeline_on_the_same_splits():
    from sklearn.decomposition import PCA
    from sklearn.linear_model import Ridge
    from sklearn.metrics import r2_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng, X, y = planted(n=150, d=200, r2=0.5)
    splits = make_splits(150, n_splits=6, seed=1)
    ours = score_splits(X, y, splits, method="ep")
    ref = [r2_score(y[te], make_pipeline(StandardScaler(), PCA(100, svd_solver="full"), Ridge(alpha=1000.0))
                    .fit(X[tr], y[tr]).predict(X[te])) for tr, te in splits]
    np.testing.assert_allclose(ours.scores, ref, atol=1e-6)
    assert ours.metric == "r2"


def test_ep_ritz_solver_close_to_full():
    rng, X, y = planted(n=560, d=300, r2=0.5, seed=2)
    X = X @ (rng.normal(size=(300, 300)) / 17.0)  # a decaying spectrum, as activations have
    splits = make_splits(560, n_splits=4, seed=0)
    full = score_splits(X, y, splits, method="ep", solver="full").scores
    ritz = score_splits(X, y, splits, method="ep", solver="ritz").scores
    assert abs(full.mean() - ritz.mean()) < 2e-3 and np.abs(full - ritz).max() < 5e-3


def test_ridge_shared_gram_equals_one_fit_per_split():
    from sklearn.metrics import r2_score

    rng, X, y = planted(n=120, d=70, r2=0.5, seed=5)
    splits = make_splits(120, n_splits=5, seed=0)
    ours = score_splits(X, y, splits, alpha=0.3)
    scale = X.std(0)
    Z = (X - X.mean(0)) / scale
    unit = np.sum(Z ** 2) / len(Z)  # alpha's unit: the mean eigenvalue of the layer's Gram matrix
    ref = [r2_score(y[te], fit_probe(X[tr], y[tr], alpha=0.3 * unit, scale=scale).predict(X[te]))
           for tr, te in splits]
    np.testing.assert_allclose(ours.scores, ref, atol=1e-6)


def nested_gcv_reference(Z, y, tr, te, grid):
    """Strictly nested GCV on one split, from the training rows' own SVD: the grid penalty with the
    least ``n_R |y - yhat|^2 / (n_R - tr H)^2`` (H with the intercept; summed over y's columns),
    fitted on train; returns it and the test predictions."""
    Y = y.reshape(len(y), -1)
    Zr = Z[tr]
    mu, ybar = Zr.mean(0), Y[tr].mean(0)
    U, sv, Vt = np.linalg.svd(Zr - mu, full_matrices=False)
    best = (np.inf, None)
    for a in grid:
        shrink = sv ** 2 / (sv ** 2 + a)
        fitted = ybar + U @ (shrink[:, None] * (U.T @ (Y[tr] - ybar)))
        gcv = len(tr) * np.sum((Y[tr] - fitted) ** 2) / (len(tr) - 1.0 - shrink.sum()) ** 2
        if gcv < best[0]:
            best = (gcv, a)
    W = Vt.T @ ((sv / (sv ** 2 + best[1]))[:, None] * (U.T @ (Y[tr] - ybar)))
    pred = ybar + (Z[te] - mu) @ W
    return best[1], pred.reshape((len(te),) + y.shape[1:])


def nested_loo_reference(Z, y, tr, te, grid):
    """Strictly nested exact LOO on one split: scikit-learn's RidgeCV on the training rows alone."""
    from sklearn.linear_model import RidgeCV

    ref = RidgeCV(alphas=grid, fit_intercept=True).fit(Z[tr], y[tr])
    return ref.alpha_, ref.predict(Z[te])


@pytest.mark.parametrize("selection,reference", [("gcv", nested_gcv_reference), ("loo", nested_loo_reference)])
def test_ridge_penalty_is_chosen_inside_each_training_split(selection, reference):
    """The penalty (GCV by default; exact LOO as RidgeCV with ``selection="loo"``) equals a strictly
    nested loop: per split, the criterion over the training rows alone (same grid, same label-free
    scaling), fitted on train, scored on test; each permuted copy gets its own choice per split."""
    from sklearn.metrics import r2_score

    from hf_introspect.analysis.linear_probe import ALPHA_GRID

    rng, X, y = planted(n=80, d=120, r2=0.4, seed=11)
    splits = make_splits(80, n_splits=12, seed=2)
    ours = score_splits(X, y, splits, permutations=3, seed=4, selection=selection)
    Z = (X - X.mean(0)) / X.std(0)
    unit = np.sum(Z ** 2) / len(Z)
    perm_rng = np.random.default_rng(4)
    columns = [y] + [y[perm_rng.permutation(80)] for _ in range(3)]
    scores, chosen = np.empty((12, 4)), np.empty((12, 4))
    for s, (tr, te) in enumerate(splits):
        for c, target in enumerate(columns):
            a, pred = reference(Z, target, tr, te, ALPHA_GRID * unit)
            scores[s, c], chosen[s, c] = r2_score(target[te], pred), a / unit
    np.testing.assert_allclose(ours.extra["alpha"], chosen[:, 0], rtol=1e-9)
    np.testing.assert_allclose(ours.extra["null_alpha"], chosen[:, 1:], rtol=1e-9)
    np.testing.assert_allclose(ours.scores, scores[:, 0], atol=1e-6)
    np.testing.assert_allclose(ours.null, scores[:, 1:].mean(0), atol=1e-6)
    assert len(np.unique(chosen)) > 1  # the choice really differs between splits/copies here


def test_ridge_gcv_penalty_for_classes_sums_the_class_columns():
    from hf_introspect.analysis.linear_probe import ALPHA_GRID

    rng, X, y = planted(n=90, d=60, r2=0.5, seed=12)
    classes = np.array(list("ABC"))
    letters = classes[np.digitize(y, np.quantile(y, [0.33, 0.66]))]
    splits = make_splits(90, n_splits=6, seed=1)
    ours = score_splits(X, letters, splits, task="multiclass")
    Z = (X - X.mean(0)) / X.std(0)
    onehot = np.where(letters[:, None] == classes[None], 1.0, -1.0)  # (n, 3) +-1 columns
    accuracy, chosen = [], []
    for tr, te in splits:
        a, pred = nested_gcv_reference(Z, onehot, tr, te, ALPHA_GRID * np.sum(Z ** 2) / len(Z))
        accuracy.append(np.mean(classes[pred.argmax(1)] == letters[te]))
        chosen.append(a / (np.sum(Z ** 2) / len(Z)))
    np.testing.assert_allclose(ours.extra["alpha"], chosen, rtol=1e-9)
    np.testing.assert_allclose(ours.scores, accuracy, atol=1e-12)


def test_ridge_nested_penalty_for_classes_equals_ridgeclassifiercv():
    from sklearn.linear_model import RidgeClassifierCV

    from hf_introspect.analysis.linear_probe import ALPHA_GRID

    rng, X, y = planted(n=90, d=60, r2=0.5, seed=12)
    letters = np.array(list("ABC"))[np.digitize(y, np.quantile(y, [0.33, 0.66]))]
    splits = make_splits(90, n_splits=6, seed=1)
    ours = score_splits(X, letters, splits, task="multiclass", selection="loo")
    Z = (X - X.mean(0)) / X.std(0)
    unit = np.sum(Z ** 2) / len(Z)
    accuracy, chosen = [], []
    for tr, te in splits:
        ref = RidgeClassifierCV(alphas=ALPHA_GRID * unit).fit(Z[tr], letters[tr])
        accuracy.append(np.mean(ref.predict(Z[te]) == letters[te]))
        chosen.append(ref.alpha_ / unit)
    np.testing.assert_allclose(ours.extra["alpha"], chosen, rtol=1e-9)
    np.testing.assert_allclose(ours.scores, accuracy, atol=1e-12)


def test_ridge_free_columns_equal_a_primal_fit_with_them_unpenalised():
    from hf_introspect.analysis.split_ridge import FREE_PENALTY

    rng, X, y = planted(n=70, d=90, r2=0.5, seed=13)
    F = rng.normal(size=(70, 3))
    y = y + F @ np.array([2.0, -1.0, 0.5])
    splits = make_splits(70, n_splits=4, seed=0)
    ours = score_splits(X, y, splits, alpha=3.0, free=F)
    Z = (X - X.mean(0)) / X.std(0)
    a = 3.0 * np.sum(Z ** 2) / len(Z)
    A = np.column_stack([Z, np.ones(70), F])  # (n, d + 1 + f)
    penalty = np.r_[np.full(90, a), 0.0, np.full(3, FREE_PENALTY * a)]
    ref = []
    for tr, te in splits:
        w = np.linalg.solve(A[tr].T @ A[tr] + np.diag(penalty), A[tr].T @ y[tr])
        pred = A[te] @ w
        ref.append(1 - np.sum((y[te] - pred) ** 2) / np.sum((y[te] - y[te].mean()) ** 2))
    np.testing.assert_allclose(ours.scores, ref, atol=1e-6)


def test_free_one_hot_absent_from_a_training_split_gets_weight_zero():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 30))
    y = X[:, 0] + rng.normal(size=60)
    F = np.zeros((60, 1))
    F[7, 0] = 1.0  # a question_type level held by one question
    splits = make_splits(60, 10, seed=0)
    held = [i for i, (_, te) in enumerate(splits) if 7 in te]
    assert held  # the level is missing from these training splits: an unpenalised fit would be singular
    with_f = score_splits(X, y, splits, alpha=1.0, free=F).scores
    without = score_splits(X, y, splits, alpha=1.0).scores
    np.testing.assert_allclose(with_f[held], without[held], atol=1e-6)  # its weight is ~0 there


def test_unpenalised_surface_columns_never_lose_to_the_surface_alone():
    """The review's case: a target mostly from a dozen surface columns plus a little of one activation
    dimension among 1,000; penalised like activations, the surface columns scored 0.23 vs 0.69 alone."""
    rng = np.random.default_rng(0)
    n, d = 400, 1000
    X = rng.normal(size=(n, d))
    S = rng.normal(size=(n, 12))
    y = S @ rng.normal(size=12) / np.sqrt(12) + 0.5 * X[:, 0] + 0.5 * rng.normal(size=n)
    splits = make_splits(n, n_splits=10, seed=0)
    surface = score_splits(S, y, splits).mean
    Sz = (S - S.mean(0)) / S.std(0)
    both = score_splits(X, y, splits, free=Sz).mean
    mixed = score_splits(np.hstack([X, Sz]), y, splits).mean  # the old way: surface penalised
    assert surface > 0.5 and both >= surface - 0.01 and mixed < surface - 0.1
    assert both - surface > 0.0  # the unique share of x0 (measured 0.715 vs 0.686; mixed 0.241)


def test_planted_signal_null_and_shuffled_target():
    rng, X, y = planted(n=300, d=40, r2=0.6)
    splits = make_splits(300, n_splits=30, seed=0)
    res = score_splits(X, y, splits, permutations=40, seed=0)
    assert 0.5 < res.mean < 0.65  # the planted 0.6, less a little estimation loss
    assert np.quantile(res.null, 0.95) < 0.05 and res.p_value == pytest.approx(1 / 41)
    shuffled = score_splits(X, rng.permutation(y), splits, permutations=40, seed=0)
    assert abs(shuffled.mean) < 0.05 and shuffled.p_value > 0.05
    again = score_splits(X, y, splits, permutations=40, seed=0)
    np.testing.assert_array_equal(again.null, res.null)
    assert not np.array_equal(score_splits(X, y, splits, permutations=40, seed=1).null, res.null)


def test_planted_layer_is_the_best_layer():
    rng, X, y = planted(n=200, d=30, r2=0.7, seed=7)
    layers = [rng.normal(size=X.shape), X, rng.normal(size=X.shape)]  # the signal lives in layer 1 only
    splits = make_splits(200, n_splits=20, seed=0)
    results = [score_splits(L, y, splits, permutations=30) for L in layers]
    assert int(np.argmax([r.mean for r in results])) == 1
    assert results[1].p_value < 0.05 and results[0].p_value > 0.05 and results[2].p_value > 0.05


def test_binary_auroc_matches_sklearn_and_multiclass_accuracy():
    from sklearn.metrics import roc_auc_score

    rng, X, y = planted(n=160, d=30, r2=0.6, seed=8)
    labels = y > np.median(y)
    splits = make_splits(160, n_splits=5, seed=0)
    res = score_splits(X, labels, splits, task="binary", method="logistic")
    ref = [roc_auc_score(labels[te], fit_probe(X[tr], labels[tr], method="logistic", task="binary").decision(X[te]))
           for tr, te in splits]
    np.testing.assert_allclose(res.scores, ref, atol=1e-9)
    assert res.metric == "auroc" and res.extra["accuracy"].shape == (5,) and res.mean > 0.7
    ridge = score_splits(X, labels, splits, task="binary", permutations=10)
    assert ridge.mean > 0.8 and 0.35 < ridge.null.mean() < 0.65 and ridge.extra["accuracy"].mean() > 0.7
    letters = np.array(list("ABCD"))[np.digitize(y, np.quantile(y, [0.25, 0.5, 0.75]))]
    multi = score_splits(X, letters, splits, task="multiclass", permutations=10)
    # chance is 0.25, but a null of balanced classes sits below it (a class frequent in a training set
    # is rare in its test set): hence the null, not 0.25, as the reference
    assert multi.metric == "accuracy" and multi.mean > np.quantile(multi.null, 0.95) + 0.1 and multi.null.mean() < 0.3


def test_auroc_with_ties_equals_sklearn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=(3, 30, 2)).astype(float)  # many ties
    positive = rng.random((3, 30, 2)) > 0.5
    ours = auroc(scores, positive)
    for s in range(3):
        for c in range(2):
            assert ours[s, c] == pytest.approx(roc_auc_score(positive[s, :, c], scores[s, :, c]))


def test_score_splits_bad_input():
    X = np.random.default_rng(0).normal(size=(30, 5))
    splits = make_splits(30, 3)
    with pytest.raises(UserError, match="constant"):
        score_splits(X, np.ones(30), splits)
    with pytest.raises(UserError, match="permutations"):
        score_splits(X, np.arange(30.0), splits, permutations=-1)


def test_binary_null_skips_splits_with_one_class():
    """A rare class leaves some test sets with no positive (AUROC undefined there): the null must
    average the other splits, as the observed score does, not turn NaN and count as 'below' the score
    (which gave p = 1/(1 + P) for a target with no signal at all)."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(100, 20))
    y = np.zeros(100)
    y[rng.choice(100, 10, replace=False)] = 1.0  # 10% positives, unrelated to X (before the fix: p = 1/31)
    res = score_splits(X, y, make_splits(100, 50, seed=0), task="binary", permutations=30)
    assert np.isnan(res.scores).sum() > 0  # the case: some test sets hold no positive
    assert np.isfinite(res.null).all() and np.isfinite(res.mean)
    assert res.p_value > 0.2  # here 0.52 (rank 16 of 31)


def test_letter_probe_when_a_training_split_lacks_a_class():
    """A rare letter missing from one split's training rows: ep/logistic used to stack decisions of
    different widths (ValueError); now that class is never predicted there and the rest score as usual."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 30))
    letters = np.array(list("ABC"))[rng.integers(0, 3, 60)]
    letters[:2] = "D"  # two D's: split 0..19 below has both in its test rows once
    X[:, 0] += 3.0 * (letters == "A")  # A is decodable
    splits = make_splits(60, n_splits=20, seed=0)
    assert any("D" not in set(letters[train]) for train, _ in splits)
    for method in ("ep", "logistic"):
        res = score_splits(X, letters, splits, method=method, task="multiclass")
        assert res.scores.shape == (20,) and 0.4 < res.mean < 1.0
    # a split with every class present gives the same accuracy as one fit_probe on it
    train, test = next(s for s in splits if "D" in set(letters[s[0]]))
    probe = fit_probe(X[train], letters[train], method="logistic", task="multiclass")
    one = score_splits(X, letters, [(train, test)], method="logistic", task="multiclass")
    assert one.scores[0] == pytest.approx(np.mean(probe.predict(X[test]) == letters[test]))
