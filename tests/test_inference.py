"""One batch through the model: the continuation, EOS handling, and launching ahead."""

import numpy as np
import torch

from hf_introspect.inference import launch_batch, run_batch
from hf_introspect.testing import tiny_llama

SEQS = [[5, 9, 14, 3, 22, 7], [8, 4, 31], [12, 40, 41, 6, 2]]  # different lengths: left padding


def model():
    return tiny_llama(vocab_size=64).eval()


def args(**kw):
    base = dict(pad_id=0, label_ids={"A": [10], "B": [11]}, layers=[0, 1, 2],
                keep_positions=[np.arange(len(s)) for s in SEQS])
    base.update(kw)
    return base


def greedy(net, seq, steps):
    with torch.no_grad():
        out = net.generate(torch.tensor([seq]), max_new_tokens=steps, do_sample=False, min_new_tokens=steps,
                           pad_token_id=0, eos_token_id=None)
    return out[0, len(seq):].tolist()


def test_continuation_equals_generate_per_row():
    net = model()
    out = run_batch(net, SEQS, **args(max_new_tokens=5))
    for r, seq in enumerate(SEQS):
        assert out.generated_ids[r] == greedy(net, seq, 5)


def test_eos_ends_a_row_and_the_batch_stops_when_all_ended():
    net = model()
    plain = [greedy(net, s, 6) for s in SEQS]
    eos = plain[0][2]  # row 0's third token becomes its end
    out = run_batch(net, SEQS, **args(max_new_tokens=6, eos_ids={eos}))
    for r in range(len(SEQS)):
        expected = plain[r][:plain[r].index(eos)] if eos in plain[r] else plain[r]
        assert out.generated_ids[r] == expected  # EOS itself and everything after it dropped
    # Every row's first token as EOS: one step only, nothing generated.
    firsts = {p[0] for p in plain}
    out = run_batch(net, SEQS, **args(max_new_tokens=6, eos_ids=firsts))
    assert out.generated_ids == [[], [], []]


def test_launching_ahead_gives_the_same_results():
    """Two batches in flight (the collector's pattern) equal one at a time, with reused buffers."""
    net = model()
    bufs = {}

    def alloc(which):
        def get(shape, dtype):
            n = int(np.prod(shape))
            if which not in bufs or bufs[which].numel() < n:
                bufs[which] = torch.empty(n, dtype=dtype)
            return bufs[which][:n].view(shape)
        return get

    a = launch_batch(net, SEQS, **args(max_new_tokens=3, host_alloc=alloc(0)))
    b = launch_batch(net, SEQS[::-1], **args(max_new_tokens=3, host_alloc=alloc(1),
                                             keep_positions=[np.arange(len(s)) for s in SEQS[::-1]]))
    ra, rb = a.result(), b.result()
    ref = run_batch(net, SEQS, **args(max_new_tokens=3))
    np.testing.assert_array_equal(ra.stacked, ref.stacked)
    np.testing.assert_array_equal(ra.label_logits, ref.label_logits)
    assert ra.generated_ids == ref.generated_ids == rb.generated_ids[::-1]
    for r in range(3):
        for j in range(3):
            np.testing.assert_array_equal(ra.activations[r][j], rb.activations[2 - r][j])
    assert ra.overflow_counts.shape == (3, 3) and not ra.overflow_counts.any()
