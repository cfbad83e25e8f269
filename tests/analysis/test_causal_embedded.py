"""A known causal direction on the real embedded model (SmolLM2-135M-Instruct): the difference of
the output embeddings of the "Z" (>90%) and "S" (<5%) bin tokens, added at the last residual index
(before the final norm) with positive strength, raises the expected confidence monotonically,
while random orthogonal directions of the same norm move it far less. A property of the model,
checked through the steering path (run's prompts, KV-cache reuse, collector's readout)."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def embedded(tmp_path_factory, triviamc_path):
    from hf_introspect import CollectConfig, collect
    from hf_introspect.analysis.data import open_run_data
    from hf_introspect.models.load import load_model

    lm = load_model(None)
    out = tmp_path_factory.mktemp("causal_embedded") / "run"
    collect(CollectConfig(output_dir=str(out), questions=str(triviamc_path), num_questions=6, passes=("self_conf",),
                          positions="last", max_new_tokens=0, batch_size=6), lm=lm)
    return lm, open_run_data(out)


def test_z_minus_s_output_embedding_raises_confidence_monotonically(embedded):
    from hf_introspect.analysis.causal.pass_inputs import pass_inputs, readout_norms
    from hf_introspect.analysis.causal.steer import steer

    lm, rd = embedded
    inputs = pass_inputs(rd, "self_conf")
    W = lm.model.get_output_embeddings().weight.detach().float().numpy()  # (vocab, hidden)
    d = W[inputs.label_ids["Z"][0]] - W[inputs.label_ids["S"][0]]
    last = lm.num_layers
    strengths = [0.0, 0.02, 0.05, 0.1, 0.2]  # x the mean readout norm at the last index
    res = steer(lm, inputs, {last: d / np.linalg.norm(d)}, strengths, units=readout_norms(rd, "self_conf", [last]),
                controls=6, seed=0)
    r = res.layers[0]
    conf = np.array(r.mean_confidence)
    assert np.all(np.diff(conf) > 0), conf
    rise = conf[-1] - conf[0]
    assert rise > 20, conf  # from ~30% towards the 95% bin
    control_moves = np.abs(np.array(r.control_mean_confidence)[:, -1] - conf[0])
    assert control_moves.max() < rise / 4, (control_moves, rise)
    assert r.slope > 5 * np.abs(r.control_slopes).max()
    # strength 0 is the stored readout
    assert conf[0] == pytest.approx(float(np.mean(rd.split("self_conf")["self_confidence"])), abs=1e-3)
