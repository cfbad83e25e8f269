"""The per-layer probe sweep on a planted run: the planted layer wins with the planted R^2 inside its
interval, the null stays near 0, a shuffled target beats no null; classification metrics; same seed ->
same numbers; shared-question comparison."""

from __future__ import annotations

import numpy as np
import pytest

from hf_introspect.analysis.data import open_run_data
from hf_introspect.analysis.layer_sweep import probe_sweep
from hf_introspect.errors import UserError

from .conftest import PLANTED

FAST = {"n_splits": 20, "permutations": 40}


@pytest.fixture(scope="module")
def entropy_sweep(planted_run):
    return probe_sweep(open_run_data(planted_run), "mcq", "entropy", **FAST)


def test_planted_layer_wins_with_the_planted_r2(entropy_sweep):
    res = entropy_sweep
    best = res.best
    assert res.best_layer == PLANTED["planted_layer"] and res.metric == "r2" and res.n_questions == PLANTED["n"]
    assert best.ci_low <= PLANTED["r2"] <= best.ci_high and best.score > 0.7
    assert best.p_value == pytest.approx(1 / 41)                  # above every permuted copy
    for row in res.layers:
        assert abs(row.null_p95) < 0.05                           # the null sits at R^2 ~ 0
        if row.layer != PLANTED["planted_layer"]:
            assert row.score < 0.05 and row.ci_low < 0.0
    # the mean-diff direction finds the planted signal out of sample, and agrees with the probe's
    assert best.meandiff_score > 0.5 and best.cos_probe_meandiff > 0.8
    assert max(r.meandiff_score for r in res.layers if r.layer != res.best_layer) < 0.1
    assert set(res.to_json()) == {"target", "pass", "position", "method", "metric", "n_questions",
                                  "best_layer", "layers", "best_p_corrected"}
    # the best of 5 layers still beats the maximum over layers of every permuted copy
    assert res.best_p_corrected == pytest.approx(1 / 41)


def test_shuffled_target_beats_no_null(planted_run):
    rd = open_run_data(planted_run)
    real = rd.target("mcq", "entropy")
    shuffled = np.random.default_rng(1).permutation(real.values)
    rd.target = lambda pass_name, spec: type(real)(spec, real.kind, shuffled, real.valid)
    res = probe_sweep(rd, "mcq", "entropy", **FAST)
    assert all(r.score < 0.03 for r in res.layers)
    assert all(q > 0.05 for q in res.q_values)                   # nothing survives Benjamini-Hochberg
    # picking the best layer is paid for: its corrected p is at least its own, and not significant here
    assert res.best_p_corrected >= res.best.p_value and res.best_p_corrected > 0.05
    assert res.layer(PLANTED["planted_layer"]).score < res.layer(PLANTED["planted_layer"]).null_p95 + 0.02


def test_same_seed_same_numbers_and_classification(planted_run, entropy_sweep):
    rd = open_run_data(planted_run)
    again = probe_sweep(rd, "mcq", "entropy", layers=[2, 3], **FAST)
    assert again.layer(2) == entropy_sweep.layer(2) and again.layer(3) == entropy_sweep.layer(3)
    corr = probe_sweep(rd, "mcq", "is_correct", layers=[1, 2], n_splits=10, permutations=10)
    assert corr.metric == "auroc" and corr.best_layer == 2 and corr.layer(2).score > 0.8 and corr.chance == 0.5
    letters = probe_sweep(rd, "mcq", "parsed_answer", layers=[2], n_splits=10, permutations=0)
    assert letters.metric == "accuracy" and letters.chance == 0.25 and abs(letters.layer(2).score - 0.25) < 0.1
    assert np.isnan(letters.layer(2).p_value) and np.isnan(letters.layer(2).cos_probe_meandiff)


def test_cross_pass_target_and_rows(planted_run):
    rd = open_run_data(planted_run)
    # self_conf's readout at the planted layer is the mcq vector plus noise: mcq.entropy is decodable there
    res = probe_sweep(rd, "self_conf", "mcq.entropy", layers=[1, 2], n_splits=10, permutations=0)
    assert res.best_layer == 2 and 0.4 < res.layer(2).score < res.layer(2).ci_high + 0.3
    sub = probe_sweep(rd, "mcq", "entropy", layers=[2], rows=np.arange(0, 300, 2), n_splits=10, permutations=0)
    assert sub.n_questions == 150 and sub.layer(2).score > 0.6


def test_sweep_refuses_bad_input(planted_run):
    rd = open_run_data(planted_run)
    with pytest.raises(UserError, match="constant"):
        rd_target = rd.target
        real = rd_target("mcq", "entropy")
        rd.target = lambda p, s: type(real)(s, "regression", np.ones_like(real.values), real.valid)
        probe_sweep(rd, "mcq", "entropy", n_splits=2)
    rd = open_run_data(planted_run)
    with pytest.raises(UserError, match="at least 5"):
        probe_sweep(rd, "mcq", "entropy", rows=[0, 1, 2], n_splits=2)
    with pytest.raises(UserError, match="--method"):
        probe_sweep(rd, "mcq", "entropy", method="svm")
