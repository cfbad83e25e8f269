"""One batch through the model: the continuation, EOS handling, launching ahead, and merged
continuations of several batches."""

import numpy as np
import torch

from hf_introspect.collection import decode as inference  # merged decoding and row compaction live in decode.py
from hf_introspect.collection.decode import continue_batches, row_generator
from hf_introspect.collection.inference import PassSpec, launch_batch, run_batch
from hf_introspect.testing import tiny_llama

SEQS = [[5, 9, 14, 3, 22, 7], [8, 4, 31], [12, 40, 41, 6, 2]]  # different lengths: left padding


def model():
    return tiny_llama(vocab_size=64).eval()


def sharp_model():
    """Attention weights x10: with the default tiny init the next token hardly depends on attention,
    so a wrong position id or a wrongly merged cache would not change a greedy token."""
    net = model()
    with torch.no_grad():
        for layer in net.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.self_attn.o_proj):
                proj.weight.mul_(10)
    return net


def args(**kw):
    """launch_batch's arguments: the pass's settings as one PassSpec, the rest per batch."""
    base = dict(pad_id=0, label_ids={"A": [10], "B": [11]}, layers=[0, 1, 2],
                keep_positions=[np.arange(len(s)) for s in SEQS])
    base.update(kw)
    spec = PassSpec(**{k: base.pop(k) for k in list(base) if k in PassSpec.__dataclass_fields__})
    return dict(spec=spec, **base)


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


# A second batch of other widths: merging must left-pad one batch's cache to the other's.
MORE = [[17, 3, 9, 9, 21, 30, 2, 5, 11], [6, 6], [33, 1, 4, 28]]


def deferred(net, seqs, **kw):
    return launch_batch(net, seqs, **args(keep_positions=[np.arange(len(s)) for s in seqs], defer_continuation=True,
                                          **kw))


def test_merged_continuations_equal_generate_per_row():
    net = sharp_model()
    a, b = deferred(net, SEQS, max_new_tokens=5), deferred(net, MORE, max_new_tokens=5)
    assert a.result().generated_ids == [[], [], []]  # deferred: nothing decoded yet
    ids_a, ids_b = continue_batches(net, [a.decode, b.decode], max_new_tokens=5)
    assert ids_a == [greedy(net, s, 5) for s in SEQS]
    assert ids_b == [greedy(net, s, 5) for s in MORE]
    # the prompt caches were consumed by the merge (freed layer by layer, not held twice)
    assert a.decode.cache is None and b.decode.cache is None


def test_merged_continuations_stop_at_eos_per_row():
    net = sharp_model()
    plain = [greedy(net, s, 6) for s in SEQS + MORE]
    eos = plain[3][1]  # a row of the second batch ends after one token
    a, b = deferred(net, SEQS, max_new_tokens=6, eos_ids={eos}), deferred(net, MORE, max_new_tokens=6, eos_ids={eos})
    ids = sum(continue_batches(net, [a.decode, b.decode], max_new_tokens=6, eos_ids={eos}), [])
    for got, full in zip(ids, plain):
        assert got == (full[:full.index(eos)] if eos in full else full)


def test_merged_sampling_equals_sampling_per_batch():
    """Per-row generators: a row's sample does not depend on which rows it is decoded with."""
    net = sharp_model()

    def gens(seqs, tag):
        return [row_generator(7, f"{tag}{i}", "mcq") for i in range(len(seqs))]

    kw = dict(max_new_tokens=4, temperature=1.0, top_p=0.9)
    sep = [run_batch(net, s, **args(keep_positions=[np.arange(len(x)) for x in s], generators=gens(s, t), **kw))
           .generated_ids for s, t in ((SEQS, "a"), (MORE, "b"))]
    a = deferred(net, SEQS, generators=gens(SEQS, "a"), **kw)
    b = deferred(net, MORE, generators=gens(MORE, "b"), **kw)
    merged = continue_batches(net, [a.decode, b.decode], max_new_tokens=4, temperature=1.0, top_p=0.9)
    assert merged == sep


def test_unmergeable_caches_are_decoded_one_batch_at_a_time(monkeypatch):
    net = sharp_model()
    a, b = deferred(net, SEQS, max_new_tokens=3), deferred(net, MORE, max_new_tokens=3)
    from hf_introspect.collection import inference as launching

    for module in (inference, launching):  # merging (decode.py) and deferring (inference.py) both ask
        monkeypatch.setattr(module, "cache_tensors", lambda cache: None)  # e.g. a sliding-window cache
    ids_a, ids_b = continue_batches(net, [a.decode, b.decode], max_new_tokens=3)
    assert ids_a == [greedy(net, s, 3) for s in SEQS] and ids_b == [greedy(net, s, 3) for s in MORE]
    # such a batch is not deferred at all: holding its cache would gain nothing
    c = deferred(net, SEQS, max_new_tokens=3)
    assert c.decode is None and c.result().generated_ids == ids_a


def test_merging_frees_each_source_layer_as_it_goes(monkeypatch):
    """The peak of a merge is the merged cache plus about one layer, not the group's caches twice."""
    import weakref

    from transformers.cache_utils import DynamicCache

    net = sharp_model()
    a, b = deferred(net, SEQS, max_new_tokens=3), deferred(net, MORE, max_new_tokens=3)
    sources = [[weakref.ref(layer.keys) for layer in s.decode.cache.layers] for s in (a, b)]
    alive_at = []
    real_update = DynamicCache.update

    def update(self, keys, values, layer_idx, *args, **kw):
        # when merged layer i is stored, the sources of layers < i must be gone
        alive_at.append(sum(ref() is not None for per in sources for ref in per[:layer_idx]))
        return real_update(self, keys, values, layer_idx, *args, **kw)

    monkeypatch.setattr(DynamicCache, "update", update)
    inference.merge_decode_states([a.decode, b.decode])
    assert len(alive_at) == 2 and alive_at == [0, 0]
    assert all(ref() is None for per in sources for ref in per)


def _decode_rows(monkeypatch, net) -> list[int]:
    """Records the rows of every decode-step forward (input_ids of width 1)."""
    rows = []
    real = type(net).forward

    def forward(self, *a, **kw):
        ids = kw.get("input_ids")
        if ids is not None and ids.shape[1] == 1:
            rows.append(ids.shape[0])
        return real(self, *a, **kw)

    monkeypatch.setattr(type(net), "forward", forward)
    return rows


def test_ended_rows_leave_the_decode_batch_with_the_same_tokens(monkeypatch):
    """Rows that reached EOS are dropped from the batch (cache, mask, positions, generators); every
    row's text equals the one decoded without dropping, greedy and sampled."""
    net = sharp_model()
    seqs = SEQS + MORE
    plain = [greedy(net, s, 8) for s in seqs]
    # the EOS that ends the most rows early while leaving at least one running
    counts = {t: sum(t in p[:7] for p in plain) for p in plain for t in p[:7]}
    eos = max((t for t, c in counts.items() if c < len(seqs)), key=lambda t: counts[t])
    assert counts[eos] >= 2
    kw = dict(keep_positions=[np.arange(len(s)) for s in seqs], max_new_tokens=8, eos_ids={eos})
    for sampling in ({}, dict(temperature=1.0, top_p=0.9)):
        gens = lambda: [row_generator(3, f"q{i}", "mcq") for i in range(len(seqs))]  # noqa: E731
        monkeypatch.setattr(inference, "COMPACT_SHARE", 2.0)  # never drops rows
        whole = run_batch(net, seqs, **args(generators=gens(), **kw, **sampling)).generated_ids
        monkeypatch.setattr(inference, "COMPACT_SHARE", 0.01)  # drops ended rows after every step
        rows = _decode_rows(monkeypatch, net)
        compacted = run_batch(net, seqs, **args(generators=gens(), **kw, **sampling)).generated_ids
        monkeypatch.undo()
        assert compacted == whole
        if not sampling:
            assert whole == [p[:p.index(eos)] if eos in p else p for p in plain]
        # Decode forward k (after token k) runs exactly the rows with no EOS among tokens 0..k.
        ends = [len(w) if len(w) < 8 else 99 for w in whole]
        expected = [sum(e > k for e in ends) for k in range(7)]
        expected = expected[:next((k for k, n in enumerate(expected) if n == 0), 7)]
        assert rows == expected and rows[-1] < len(seqs)


def test_merged_continuations_drop_ended_rows(monkeypatch):
    net = sharp_model()
    plain = [greedy(net, s, 6) for s in SEQS + MORE]
    eos = plain[3][1]
    a, b = deferred(net, SEQS, max_new_tokens=6, eos_ids={eos}), deferred(net, MORE, max_new_tokens=6, eos_ids={eos})
    monkeypatch.setattr(inference, "COMPACT_SHARE", 0.01)
    rows = _decode_rows(monkeypatch, net)
    ids = sum(continue_batches(net, [a.decode, b.decode], max_new_tokens=6, eos_ids={eos}), [])
    for got, full in zip(ids, plain):
        assert got == (full[:full.index(eos)] if eos in full else full)
    ended_early = sum(eos in p[:5] for p in plain)
    assert ended_early and rows[-1] <= len(plain) - ended_early
