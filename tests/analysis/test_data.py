"""RunData, targets and positions: values against row-by-row references, joins, masks, one-line errors;
layer_matrix on select/shuffle views (issue 17 item 13) and with per-row stored-row indices."""

from __future__ import annotations

import numpy as np
import pytest

from hf_introspect import layer_matrix, load_run
from hf_introspect.analysis.data import align, open_run_data
from hf_introspect.errors import UserError


def rows_of(ds, column):
    return [np.asarray(r[column]) for r in ds.with_format("numpy", dtype=None)]


def test_matrix_is_float32_of_the_stored_rows(planted_run):
    rd = open_run_data(planted_run)
    assert rd.passes == ["mcq", "self_conf"] and rd.layers("mcq") == [0, 1, 2, 3, 4]
    ds = rd.split("mcq")
    acts, aps, spans = rows_of(ds, "activations_layer_02"), rows_of(ds, "activation_positions"), rows_of(ds, "option_token_spans")
    qspan, readout = rows_of(ds, "question_token_span"), rows_of(ds, "answer_token_index")

    def ref(prompt_index):
        return np.stack([a[int(np.flatnonzero(p == prompt_index(i))[0])] for i, (a, p) in enumerate(zip(acts, aps))])

    X = rd.matrix("mcq", 2)
    assert X.dtype == np.float32 and X.shape == (300, 32)
    np.testing.assert_array_equal(X, ref(lambda i: int(readout[i])).astype(np.float32))
    np.testing.assert_array_equal(rd.matrix("mcq", 2, "question_end"), ref(lambda i: int(qspan[i][1]) - 1))
    np.testing.assert_array_equal(rd.matrix("mcq", 2, "options_end"), ref(lambda i: int(spans[i][3][1]) - 1))
    np.testing.assert_array_equal(rd.matrix("mcq", 2, 1), np.stack([a[1] for a in acts]).astype(np.float32))
    means = np.stack([a[int(s[0]):int(s[1])].astype(np.float32).mean(0) for a, s in zip(acts, qspan)])
    np.testing.assert_allclose(rd.matrix("mcq", 2, "mean:question"), means, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(rd.matrix("mcq", 2, rows=[5, 0]), X[[5, 0]])


def test_targets_columns_derived_and_joined(planted_run):
    rd = open_run_data(planted_run)
    ds = rd.split("mcq")
    ent = rd.target("mcq", "entropy")
    assert ent.kind == "regression" and ent.metric == "r2" and ent.n_missing == 0
    np.testing.assert_allclose(ent.values, np.array([r["entropy"] for r in ds]), rtol=1e-6)
    z = np.stack(rows_of(ds, "logits")).astype(np.float64)
    zs = np.sort(z, axis=1)
    np.testing.assert_allclose(rd.target("mcq", "logit_gap").values, zs[:, -1] - zs[:, -2], rtol=1e-9)
    np.testing.assert_allclose(rd.target("mcq", "top_logit").values, zs[:, -1] - z.mean(1), rtol=1e-9)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    np.testing.assert_allclose(rd.target("mcq", "top_prob").values, p.max(1), rtol=1e-9)
    corr = rd.target("mcq", "is_correct")
    assert corr.kind == "binary" and corr.metric == "auroc" and set(np.unique(corr.values)) == {0.0, 1.0}
    letters = rd.target("mcq", "parsed_answer")
    assert letters.kind == "multiclass" and letters.classes.tolist() == list("ABCD")
    # self_conf holds the questions in reverse order: the join must follow question_id, not row order
    joined = rd.target("self_conf", "mcq.entropy")
    np.testing.assert_allclose(joined.values, ent.values[::-1])
    assert joined.valid.all() and joined.name == "mcq.entropy"


def test_masks_and_alignment():
    from hf_introspect.analysis.targets import from_column

    t = from_column("parsed_answer", np.array(["B", None, "E", "D"], dtype=object))
    assert t.valid.tolist() == [True, False, False, True] and t.n_missing == 2
    t = from_column("entropy", np.array([0.5, np.nan, 1.0]))
    assert t.valid.tolist() == [True, False, True]
    ia, ib = align(np.array(["c", "a", "b"]), np.array(["b", "z", "c"]))
    assert ia.tolist() == [0, 2] and ib.tolist() == [2, 0]
    with pytest.raises(UserError, match="more than once"):
        align(["a", "a"], ["a"])


def test_one_line_errors(planted_run, tiny_run):
    rd = open_run_data(planted_run)
    with pytest.raises(UserError, match="unknown target 'entropyy'"):
        rd.target("mcq", "entropyy")
    with pytest.raises(UserError, match="no pass 'other_conf'"):
        rd.target("other_conf", "entropy")
    with pytest.raises(UserError, match="layer 9 is not stored.*0-4"):
        rd.matrix("mcq", 9)
    with pytest.raises(UserError, match="unknown position"):
        rd.matrix("mcq", 0, "middle")
    with pytest.raises(UserError, match="out of range"):
        rd.matrix("mcq", 0, 99)
    from hf_introspect.analysis.targets import from_column

    with pytest.raises(UserError, match="constant"):
        from_column("x", np.ones(5)).require_variation()
    tiny = open_run_data(tiny_run)
    assert tiny.collected_positions == "question+last"
    assert tiny.matrix("mcq", 1, "question_end").shape[0] == 24
    with pytest.raises(UserError, match="options_end.*--positions question\\+last.*--positions marks") as info:
        tiny.matrix("mcq", 1, "options_end")
    assert "\n" not in str(info.value)


def test_split_folder_opens_as_its_pass(planted_run):
    rd = open_run_data(planted_run / "self_conf")
    assert rd.passes == ["self_conf"] and rd.target("self_conf", "self_confidence").kind == "regression"


@pytest.mark.parametrize("position", ["answer", "last", 2, -1, "array"])
def test_layer_matrix_on_select_and_shuffle_views(tiny_run, position):
    """Issue 17 item 13: views must give the rows of the whole split, reindexed."""
    ds = load_run(tiny_run, split="self_conf")
    n = len(ds)
    order = np.random.default_rng(0).permutation(n)
    pos_full = np.arange(n) % 3 if position == "array" else position
    whole = layer_matrix(ds, 1, pos_full)
    for view, idx in ((ds.shuffle(seed=3), None), (ds.select(order[:10]), order[:10]),
                      (ds.select(order).select(range(5, 15)), order[5:15])):
        if idx is None:
            idx = np.asarray(view._indices.column(0).to_numpy())
        pos = pos_full[idx] if position == "array" else position
        np.testing.assert_array_equal(layer_matrix(view, 1, pos), whole[idx])
