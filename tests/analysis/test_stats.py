"""stats: AUROC equal to scikit-learn (ties, batches), ranks equal to scipy, BH by hand and equal to scipy, permutation p-values and intervals on known numbers."""

from __future__ import annotations

import numpy as np
import pytest

from hf_introspect.analysis import stats


def test_auroc_matches_sklearn_with_ties_and_batches():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, (5, 200))
    s = np.round(rng.normal(size=(5, 200)) + y, 1)            # rounding makes many ties
    got = stats.auroc(s, y)
    want = [roc_auc_score(y[i], s[i]) for i in range(5)]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert stats.auroc(s[0], y[0]) == pytest.approx(want[0], rel=1e-12)
    assert np.isnan(stats.auroc(s[0], np.ones(200)))


def test_average_ranks_match_scipy():
    from scipy.stats import rankdata

    x = np.random.default_rng(1).integers(0, 6, (3, 50)).astype(float)
    np.testing.assert_array_equal(stats.average_ranks(x), rankdata(x, axis=1))


def test_benjamini_hochberg_known_values():
    p = np.array([0.001, 0.008, 0.039, 0.041, 0.042, 0.06, 0.074, 0.205, np.nan])
    q = stats.benjamini_hochberg(p)
    # by hand: p_(i) * m / i with m = 8, then the running minimum from the top
    want = [0.008, 0.032, 0.0672, 0.0672, 0.0672, 0.08, 0.0845714286, 0.205]
    np.testing.assert_allclose(q[:8], want, rtol=1e-8)
    assert np.isnan(q[8])
    from scipy.stats import false_discovery_control

    np.testing.assert_allclose(q[:8], false_discovery_control(p[:8]), rtol=1e-12)


def test_permutation_p_and_intervals():
    null = np.linspace(-0.1, 0.1, 99)
    assert stats.permutation_p(0.5, null) == pytest.approx(1 / 100)
    assert stats.permutation_p(-1.0, null) == pytest.approx(1.0)
    assert np.isnan(stats.permutation_p(0.5, np.array([])))
    assert stats.null_quantile(null) == pytest.approx(np.quantile(null, 0.95))
    lo, hi = stats.split_interval(np.r_[np.arange(100.0), np.nan])
    assert lo == pytest.approx(2.475) and hi == pytest.approx(96.525)


def test_permutation_p_ignores_undefined_null_copies():
    # NaN >= x is False: counted, a NaN copy would push p down as if it were evidence
    null = np.array([np.nan, np.nan, 0.9, 0.1])
    assert stats.permutation_p(0.5, null) == pytest.approx(2 / 3)
    assert stats.null_quantile(np.array([np.nan, 0.0, 1.0]), 0.5) == pytest.approx(0.5)
    assert np.isnan(stats.permutation_p(0.5, np.array([np.nan])))
