"""The runner re-runs the run's own prompts and reads out as the collector does; reusing the KV
cache of the prompt minus its readout token gives the whole-prompt forward's values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hf_introspect.analysis.causal.hooks import ABLATE, ADD, NONE, REPLACE, RowEdits
from hf_introspect.analysis.causal.patch import patch
from hf_introspect.analysis.causal.runner import readout_rows

from .causal_helpers import collect_run, open_inputs


@pytest.fixture(scope="module")
def run(tiny_model_dir, tmp_path_factory):
    return collect_run(tiny_model_dir, tmp_path_factory.mktemp("causal") / "run")


@pytest.fixture(scope="module")
def opened(run):
    return open_inputs(run)


@pytest.mark.parametrize("pass_name", ["mcq", "self_conf"])
@pytest.mark.parametrize("reuse", [True, False])
def test_no_edit_reproduces_the_stored_logits(run, pass_name, reuse):
    from hf_introspect.collection.readout import softmax_np

    _, inputs, lm = open_inputs(run, pass_name)
    logits = readout_rows(lm, inputs.seqs, np.arange(inputs.n), RowEdits.none(inputs.n, lm.hidden_size),
                          inputs.label_ids, batch_size=5, reuse_prefix=reuse)
    np.testing.assert_allclose(logits, inputs.logits, rtol=0, atol=1e-4)
    np.testing.assert_allclose(softmax_np(logits.astype(np.float64)), inputs.probs, rtol=0, atol=1e-5)


def test_cache_reuse_equals_whole_prompts_with_edits(opened):
    from hf_introspect.analysis.causal.runner import PromptBatch

    _, inputs, lm = opened
    assert PromptBatch(lm.model, inputs.seqs[:2], 0).kv is not None  # the packed path is the one tested
    rng = np.random.default_rng(0)
    n_rows = 40
    question = rng.integers(0, inputs.n, n_rows)
    edits = RowEdits(rng.integers(-1, lm.num_layers + 1, n_rows), rng.choice([NONE, ADD, ABLATE, REPLACE], n_rows),
                     rng.integers(0, 3, n_rows), rng.uniform(-3, 3, n_rows).astype(np.float32),
                     torch.nn.functional.normalize(torch.randn(3, lm.hidden_size), dim=1))
    fast = readout_rows(lm, inputs.seqs, question, edits, inputs.label_ids, batch_size=4, max_tokens=8)
    slow = readout_rows(lm, inputs.seqs, question, edits, inputs.label_ids, batch_size=5, reuse_prefix=False)
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-4)
    assert np.abs(fast - inputs.logits[question]).max() > 1e-2  # the edits did something


def test_self_patching_changes_nothing(opened):
    rd, inputs, lm = opened
    for layer in (1, lm.num_layers):
        acts = torch.from_numpy(rd.matrix("self_conf", layer, "answer"))  # (n, hidden) float32 stored
        n = inputs.n
        edits = RowEdits(np.full(n, layer), np.full(n, REPLACE), np.arange(n), np.ones(n, np.float32), acts)
        logits = readout_rows(lm, inputs.seqs, np.arange(n), edits, inputs.label_ids)
        np.testing.assert_allclose(logits, inputs.logits, rtol=0, atol=1e-4)


def test_patching_another_question_at_the_last_index_moves_the_readout_to_it(opened):
    rd, inputs, lm = opened
    L = lm.num_layers
    acts = rd.matrix("self_conf", L, "answer")
    entropy = np.asarray(rd.split("mcq")["entropy"], dtype=np.float64)
    res = patch(lm, inputs, {L: acts, 1: rd.matrix("self_conf", 1, "answer")}, entropy, controls=3,
                source_pass="self_conf", n_boot=50)
    last = {r.layer: r for r in res.layers}[L]
    assert last.normalised_shift == pytest.approx(1.0, abs=1e-4)
    assert np.allclose(last.null_shifts, 1.0, atol=1e-4)  # any donor: the readout becomes the donor's
    assert last.low_to_high["mean_shift"] == pytest.approx(last.low_to_high["mean_gap"], abs=1e-3)
    assert res.n_pairs == 6  # quartiles of 12 questions: 3 low + 3 high, paired both ways
