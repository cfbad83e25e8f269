"""Metrics against values computed by hand (and, where one exists, against scipy/sklearn)."""

from __future__ import annotations

import doctest
import math
import sys

import numpy as np
import pytest

from hf_introspect.analysis.inspect import metrics as M
from hf_introspect.errors import UserError

# Small fixture used throughout: 4 answers with their stated confidence (as a probability).
CONF = [0.1, 0.3, 0.8, 0.9]
CORRECT = [False, True, True, True]


def test_docstring_examples_hold():
    result = doctest.testmod(M, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 15 and result.failed == 0


def test_wilson_interval_by_hand():
    # p = .7, n = 10, z^2 = 3.8415: centre = (.7 + .19207) / 1.38415, half = z * sqrt(.021 + .0096037) / 1.38415
    lo, hi = M.wilson_interval(7, 10)
    assert lo == pytest.approx(0.396775, abs=1e-5) and hi == pytest.approx(0.892207, abs=1e-5)
    # 0/10: lower bound exactly 0, upper = 2 * (z^2 / 20) / (1 + z^2 / 10) = 0.27753
    lo, hi = M.wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.277533, abs=1e-5)
    lo, hi = M.wilson_interval(10, 10)
    assert hi == 1.0 and lo == pytest.approx(1 - 0.277533, abs=1e-5)
    assert all(math.isnan(x) for x in M.wilson_interval(0, 0))


def test_ece_by_hand():
    # 2 bins: [0, .5) -> {.1: wrong, .3: right}: |.5 - .2| = .3;  [.5, 1] -> {.8, .9 right}: |1 - .85| = .15
    assert M.ece(CONF, CORRECT, bins=2) == pytest.approx(0.5 * 0.3 + 0.5 * 0.15)
    # 10 bins: every answer alone in its bin: (.1 + .7 + .2 + .1) / 4
    assert M.ece(CONF, CORRECT, bins=10) == pytest.approx(0.275)
    # native bins group .85 and .82 in [80, 90): acc .5, conf .835 -> .335 * 2/4; .95 -> .05/4; .03 -> .03/4
    conf, ok = [0.85, 0.82, 0.95, 0.03], [True, False, True, False]
    assert M.ece(conf, ok, M.NATIVE_BIN_EDGES) == pytest.approx(0.335 / 2 + 0.05 / 4 + 0.03 / 4)
    # confidence 1.0 falls in the last bin, 0.5 in the upper of two
    rows = M.reliability_table([1.0, 0.5, 0.0], [True, True, False], bins=2)
    assert [r["count"] for r in rows] == [1, 2]
    assert math.isnan(M.ece([], [], 10))
    assert M.ece([0.7, float("nan")], [True, False], 10) == pytest.approx(0.3)  # nan confidence dropped


def test_reliability_table_shape():
    rows = M.reliability_table(CONF, CORRECT, M.NATIVE_BIN_EDGES)
    assert len(rows) == 8 and sum(r["count"] for r in rows) == 4
    assert rows[0]["lo"] == 0.0 and rows[-1]["hi"] == 1.0
    assert math.isnan(rows[0]["accuracy"])  # nothing below 5%


def test_brier_by_hand():
    assert M.brier(CONF, CORRECT) == pytest.approx((0.01 + 0.49 + 0.04 + 0.01) / 4)
    assert M.brier([1.0, 0.0], [True, False]) == 0.0


def test_auroc_by_hand_and_against_pairs():
    # positives .35 and .8 vs negatives .1 and .4: 3 of 4 pairs ordered right
    assert M.auroc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == pytest.approx(0.75)
    assert M.auroc([0.5, 0.5], [False, True]) == pytest.approx(0.5)  # a tie counts half
    assert math.isnan(M.auroc([0.1, 0.9], [True, True]))  # one class: undefined
    rng = np.random.default_rng(0)
    s, y = rng.normal(size=40), rng.random(40) < 0.4
    pairs = [(a > b) + 0.5 * (a == b) for a in s[y] for b in s[~y]]
    assert M.auroc(s, y) == pytest.approx(np.mean(pairs))


def test_mcnemar_exact_and_chi2():
    from scipy.stats import binomtest, chi2

    assert M.mcnemar(1, 7)["p_value"] == pytest.approx(2 * (1 + 8) / 256)
    assert M.mcnemar(0, 5)["p_value"] == pytest.approx(2 / 32)
    assert M.mcnemar(3, 3)["p_value"] == 1.0  # 2 * 42/64 capped
    assert M.mcnemar(0, 0) == {"b": 0, "c": 0, "method": "none", "statistic": 0.0, "p_value": 1.0}
    for b, c in [(2, 9), (12, 5), (0, 24)]:
        r = M.mcnemar(b, c)
        assert r["method"] == "exact_binomial"
        assert r["p_value"] == pytest.approx(binomtest(b, b + c, 0.5).pvalue)
    r = M.mcnemar(10, 30)
    assert r["method"] == "chi2_cc" and r["statistic"] == pytest.approx((20 - 1) ** 2 / 40)
    assert r["p_value"] == pytest.approx(chi2.sf(9.025, 1))


def test_spearman_by_hand():
    # ranks of y = 5 6 7 8 7 -> 1 2 3.5 5 3.5; Pearson of ranks with 1..5
    ry = np.array([1, 2, 3.5, 5, 3.5])
    expected = np.corrcoef(np.arange(1, 6), ry)[0, 1]
    rho, p = M.spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7])
    assert rho == pytest.approx(expected) and 0 < p < 1
    assert all(math.isnan(x) for x in M.spearman([1, 2, 3], [4, 4, 4]))  # constant input
    assert all(math.isnan(x) for x in M.spearman([1, 2], [3, 4]))


def test_row_cosine_and_summary():
    a = np.array([[1, 0], [3, 4], [0, 0]], dtype=np.float16)
    b = np.array([[0, 2], [-3, -4], [1, 1]], dtype=np.float16)
    cos = M.row_cosine(a, b)
    assert cos[:2].tolist() == [0.0, -1.0] and math.isnan(cos[2])
    s = M.summarise_similarity(cos)
    assert s["n"] == 2 and s["mean"] == -0.5 and s["q25"] == pytest.approx(-0.75)
    with pytest.raises(ValueError):
        M.row_cosine(np.ones((2, 3)), np.ones((3, 3)))


def test_describe_counts_wilcoxon():
    d = M.describe([1.0, 2.0, 3.0, 10.0])
    assert d == {"n": 4, "mean": 4.0, "std": pytest.approx(np.std([1, 2, 3, 10])), "median": 2.5, "min": 1.0, "max": 10.0}
    assert M.describe([])["n"] == 0
    assert M.label_counts(list("AABZ"), "ABCD") == {"A": 2, "B": 1, "C": 0, "D": 0, "other": 1}
    assert math.isnan(M.wilcoxon_p([0.0, 0.0]))
    assert 0 < M.wilcoxon_p([1.0, 2.0, 3.0, -0.5, 4.0]) < 1


def test_missing_optional_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)  # makes `import sklearn` raise ImportError
    with pytest.raises(UserError, match=r"scikit-learn.*pip install hf_introspect\[analysis\]"):
        M.require_analysis("sklearn", "scipy")
