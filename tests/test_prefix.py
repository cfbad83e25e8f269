"""Shared prompt prefix: computed once, then every batch runs only its own tokens on top of it."""

import numpy as np
import pytest
import torch

from hf_introspect.collection.decode import continue_batches
from hf_introspect.collection.inference import PassSpec, launch_batch, run_batch
from hf_introspect.collection.prefix import common_prefix_len, compute_shared_prefix

from .test_inference import sharp_model

PREFIX = [1, 7, 19, 4, 33, 12, 8, 25, 3, 40]  # 10 tokens every prompt starts with
SEQS = [PREFIX + [5, 9, 14, 3, 22, 7], PREFIX + [8], PREFIX + [12, 40, 41, 6, 2]]
LAYERS = [0, 1, 2]


def model():
    return sharp_model()  # attention x10: generated tokens depend on positions and the cache


def args(seqs=SEQS, **kw):
    """launch_batch's arguments: the pass's settings as one PassSpec, the rest per batch."""
    base = dict(pad_id=0, label_ids={"A": [10], "B": [11, 12]}, layers=LAYERS, act_dtype="float32",
                keep_positions=[np.arange(len(s)) for s in seqs])
    base.update(kw)
    spec = PassSpec(**{k: base.pop(k) for k in list(base) if k in PassSpec.__dataclass_fields__})
    return dict(spec=spec, **base)


def test_common_prefix_len():
    assert common_prefix_len(SEQS) == len(PREFIX)
    assert common_prefix_len([[1, 2, 3], [1, 2, 3]]) == 2  # each row keeps its last token
    assert common_prefix_len([[4, 5, 6]]) == 2
    assert common_prefix_len([[1, 2], [3, 2]]) == 0
    assert common_prefix_len([]) == 0


@pytest.mark.parametrize("positions", ["all", "mixed", "own_only"])
def test_shared_prefix_equals_whole_prompts(positions):
    net = model()
    if positions == "all":
        keep = [np.arange(len(s)) for s in SEQS]
    elif positions == "mixed":  # some prefix positions, some of the row's own, out of order of sources
        keep = [np.array([0, 4, len(PREFIX) - 1, len(s) - 1]) for s in SEQS]
    else:  # the last position only: nothing read from the prefix's hidden states
        keep = [np.array([len(s) - 1]) for s in SEQS]
    prefix = compute_shared_prefix(net, PREFIX, LAYERS)
    assert prefix.length == len(PREFIX) and prefix.hidden[2].shape == (len(PREFIX), 64)
    shared = run_batch(net, SEQS, **args(keep_positions=keep, max_new_tokens=4, prefix=prefix))
    whole = run_batch(net, SEQS, **args(keep_positions=keep, max_new_tokens=4))
    np.testing.assert_allclose(shared.stacked, whole.stacked, rtol=1e-5, atol=1e-5)  # float rounding
    np.testing.assert_allclose(shared.label_logits, whole.label_logits, rtol=1e-5, atol=1e-5)
    assert shared.generated_ids == whole.generated_ids
    assert np.abs(whole.stacked).max() > 0.03  # real values, not zeros on both sides
    for r in range(len(SEQS)):  # rows' own positions really differ, prefix positions agree
        assert shared.activations[r][0].shape == (len(keep[r]), 64)


def test_prefix_is_reused_by_many_batches_and_merged_decoding():
    net = model()
    prefix = compute_shared_prefix(net, PREFIX, LAYERS)
    more = [PREFIX + [9, 9, 30, 2, 17, 17, 5, 1], PREFIX + [6, 6]]
    kw = dict(max_new_tokens=5, defer_continuation=True, prefix=prefix)
    a = launch_batch(net, SEQS, **args(**kw))
    b = launch_batch(net, more, **args(more, **kw))
    ids = continue_batches(net, [a.decode, b.decode], max_new_tokens=5)
    assert ids == [run_batch(net, s, **args(s, max_new_tokens=5)).generated_ids for s in (SEQS, more)]
    # the prefix's own cache is untouched by the batches built on it
    again = run_batch(net, SEQS, **args(max_new_tokens=5, prefix=prefix))
    assert again.generated_ids == ids[0]


def test_a_sequence_without_the_prefix_is_refused():
    net = model()
    prefix = compute_shared_prefix(net, PREFIX, LAYERS)
    with pytest.raises(ValueError, match="shared prefix"):
        run_batch(net, [SEQS[0], [2] + SEQS[1][1:]], **args([SEQS[0], [2] + SEQS[1][1:]], prefix=prefix))


def test_collect_shares_the_prefix_with_the_same_values(tiny_model_dir, tmp_path, monkeypatch):
    from hf_introspect.collection import handoff, pass_context as collector
    from hf_introspect.collection.run import collect
    from hf_introspect.config import CollectConfig
    from hf_introspect.schema import layer_column
    from .test_collector import make_questions

    calls = []
    real = collector.compute_shared_prefix

    def spy(net, ids, layers):
        calls.append(len(ids))
        return real(net, ids, layers)

    monkeypatch.setattr(collector, "compute_shared_prefix", spy)
    monkeypatch.setattr(handoff, "compute_shared_prefix", spy)

    def run(name, **kw):
        cfg = CollectConfig(output_dir=str(tmp_path / name), model=str(tiny_model_dir), batch_size=3, save_every=2,
                            max_new_tokens=3, act_dtype="float32", **kw)
        return collect(cfg, questions=make_questions())

    handed = []
    real_launch = collector.launch_batch

    def launch_spy(net, seqs, *a, **kw):
        handed.append((kw["row_prefix"] is not None, kw["export"] is not None))
        return real_launch(net, seqs, *a, **kw)

    monkeypatch.setattr(collector, "launch_batch", launch_spy)
    shared = run("shared")
    # once per pass (the warm-up batch included), plus the 2-token probe of the cache before pairing passes
    assert len(calls) == 4 and calls.count(2) == 1 and sum(c >= 8 for c in calls) == 3
    # other_conf ran every batch on self_conf's exported per-question prefixes
    assert sum(r for r, _ in handed) >= 4 and sum(e for _, e in handed) >= 4
    calls.clear()
    handed.clear()
    whole = run("whole", share_prefix=False)
    assert not calls and not any(r or e for r, e in handed)
    for p in shared:
        a, b = shared[p].with_format("numpy", dtype=None), whole[p].with_format("numpy", dtype=None)
        assert a["output_text"] == b["output_text"]
        np.testing.assert_allclose(np.stack(a["logits"]), np.stack(b["logits"]), rtol=0, atol=1e-4)
        for col in (layer_column(0), layer_column(2)):
            for x, y in zip(a[col], b[col]):
                np.testing.assert_allclose(x, y, rtol=0, atol=1e-4)
    # the shared run's data equal a plain transformers forward of one whole prompt
    from hf_introspect.models.load import load_model

    lm = load_model(str(tiny_model_dir))
    row = shared["self_conf"].with_format("numpy", dtype=None)[4]
    with torch.no_grad():
        out = lm.model(torch.from_numpy(np.asarray(row["input_ids"], dtype=np.int64))[None], output_hidden_states=True)
    np.testing.assert_allclose(row[layer_column(1)], out.hidden_states[1][0].numpy(), rtol=0, atol=1e-4)


def test_plan_states_the_shared_prefix_and_the_flag_turns_it_off(tiny_model_dir, tmp_path):
    import argparse

    from hf_introspect.collection.run import collect
    from hf_introspect.commands.collect import add_arguments, config_from_args

    from .test_collector import make_questions

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    argv = ["--output_dir", str(tmp_path / "p"), "--model", str(tiny_model_dir), "--dry_run", "--passes", "mcq"]
    plan = collect(config_from_args(parser.parse_args(argv)), questions=make_questions())
    note = [n for n in plan.notes if n.startswith("shared prompt prefix")]
    assert len(note) == 1 and "mcq " in note[0] and "% of its prompt tokens" in note[0]
    assert any(n.startswith("merged decoding: continuations of up to 64 rows") for n in plan.notes)
    off = config_from_args(parser.parse_args(argv + ["--no_share_prefix"]))
    assert off.share_prefix is False
    assert not [n for n in collect(off, questions=make_questions()).notes if n.startswith("shared prompt prefix")]
    # all passes: the hand-off between the confidence passes, with the memory it holds
    argv = argv[:-2]
    plan = collect(config_from_args(parser.parse_args(argv)), questions=make_questions())
    handoff = [n for n in plan.notes if n.startswith("other_conf runs on self_conf's per-question prefixes")]
    assert len(handoff) == 1 and "tokens per question" in handoff[0] and "of host memory" in handoff[0]
    off = collect(config_from_args(parser.parse_args(argv + ["--no_share_prefix"])), questions=make_questions())
    assert not [n for n in off.notes if "per-question prefixes" in n]


def test_shared_prefix_ids_scan_in_blocks_equals_the_plain_definition(tiny_model_dir, tmp_path, monkeypatch):
    from hf_introspect.collection import handoff as collector
    from hf_introspect.config import CollectConfig
    from hf_introspect.models.load import load_model
    from hf_introspect.collection.prompt_dataset import build_prompt_dataset
    from hf_introspect.collection.prompts import load_templates

    from .test_collector import make_questions

    lm = load_model(str(tiny_model_dir))
    prompts = build_prompt_dataset(make_questions(), "mcq", load_templates(None)["mcq"], lm.tokenizer, True, "t")
    cfg = CollectConfig(output_dir=str(tmp_path / "x"))
    plain = prompts["input_ids"]
    expected = plain[0][:common_prefix_len(plain)]
    assert len(expected) >= 8
    for rows in (3, 4096):  # several blocks, one block
        monkeypatch.setattr(collector, "PREFIX_SCAN_ROWS", rows)
        assert collector.shared_prefix_ids(cfg, prompts) == expected
        # an indices mapping (select) and a slice not starting at row 0 read the right tokens
        for view in (prompts.select(range(len(prompts) - 1, -1, -1)), prompts.select(range(5, len(prompts)))):
            ids = view["input_ids"]
            assert collector.shared_prefix_ids(cfg, view) == ids[0][:common_prefix_len(ids)]
    # one prompt that differs early ends the sharing
    odd = prompts.map(lambda r, i: {"input_ids": r["input_ids"][:3] + [5] + r["input_ids"][4:]} if i == 7 else {},
                      with_indices=True)
    assert collector.shared_prefix_ids(cfg, odd) is None
    assert collector.shared_prefix_ids(CollectConfig(output_dir=str(tmp_path / "x"), share_prefix=False), prompts) is None


def test_a_model_whose_cache_cannot_be_shared_runs_whole_prompts(tiny_model_dir, tmp_path, monkeypatch):
    from hf_introspect.collection import handoff, pass_context
    from hf_introspect.collection.run import collect
    from hf_introspect.config import CollectConfig

    from .test_collector import make_questions

    for module in (pass_context, handoff):  # the pass's prefix and the probe before pairing passes
        monkeypatch.setattr(module, "compute_shared_prefix", lambda net, ids, layers: None)  # e.g. sliding windows
    cfg = CollectConfig(output_dir=str(tmp_path / "r"), model=str(tiny_model_dir), dry_run=True)
    plan = collect(cfg, questions=make_questions())
    assert not [n for n in plan.notes if n.startswith("shared prompt prefix")]  # the plan does not claim it
    assert not [n for n in plan.notes if "per-question prefixes" in n]  # nor a hand-off between passes


def test_resuming_with_the_other_prefix_setting_is_refused(tiny_model_dir, tmp_path):
    from hf_introspect.collection.run import collect
    from hf_introspect.config import CollectConfig
    from hf_introspect.errors import UserError

    from .test_collector import make_questions

    kw = dict(output_dir=str(tmp_path / "r"), model=str(tiny_model_dir), passes=("mcq",), batch_size=3,
              save_every=2, max_new_tokens=1)
    collect(CollectConfig(**kw), questions=make_questions(3))
    with pytest.raises(UserError, match="share_prefix"):
        collect(CollectConfig(**kw, share_prefix=False), questions=make_questions(3))


def test_a_lora_model_shares_the_prefix_with_the_same_values(tiny_model_dir, tiny_lora_dir, tmp_path):
    """The PEFT wrapper passes the prefix cache through: shared == whole prompts for an adapter too."""
    from hf_introspect.collection.run import collect
    from hf_introspect.config import CollectConfig
    from hf_introspect.schema import layer_column

    from .test_collector import make_questions

    def run(name, share):
        cfg = CollectConfig(output_dir=str(tmp_path / name), model=str(tiny_model_dir), model_type="finetuned",
                            lora_checkpoint=str(tiny_lora_dir), passes=("self_conf",), batch_size=3, save_every=2,
                            max_new_tokens=3, act_dtype="float32", share_prefix=share)
        return collect(cfg, questions=make_questions())["self_conf"].with_format("numpy", dtype=None)

    a, b = run("shared", True), run("whole", False)
    assert a["output_text"] == b["output_text"]
    np.testing.assert_allclose(np.stack(a["logits"]), np.stack(b["logits"]), rtol=0, atol=1e-4)
    for x, y in zip(a[layer_column(2)], b[layer_column(2)]):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)


# Two passes over the same questions: a shared start, each question's block, then a pass's own tail.
QUESTIONS = [[5, 9, 14, 3], [8], [12, 40, 41, 6, 2, 30, 30], [17, 3]]
SEQS_A = [PREFIX + q + [50, 51, 52] for q in QUESTIONS]
SEQS_B = [PREFIX + q + [50, 53, 54, 55] for q in QUESTIONS]  # shares the question and token 50


@pytest.mark.parametrize("shared", [True, False])
def test_row_prefixes_handed_to_another_pass_equal_whole_prompts(shared):
    from hf_introspect.collection.prefix import HandoffStore, handoff_lengths

    net = model()
    prefix = compute_shared_prefix(net, PREFIX, LAYERS) if shared else None
    P = len(PREFIX) if shared else 0
    q = handoff_lengths(SEQS_A, SEQS_B, P)
    assert q == [len(x) + 1 + (0 if shared else len(PREFIX)) for x in QUESTIONS]
    store = HandoffStore()
    for rows in ([0, 1], [2, 3]):  # exported by two batches of pass A
        a = launch_batch(net, [SEQS_A[r] for r in rows], **args([SEQS_A[r] for r in rows], max_new_tokens=3,
                                                                  prefix=prefix, export=[q[r] for r in rows],
                                                                  export_hidden=True))
        assert a.handoff.lengths == [q[r] for r in rows]
        store.add(rows, a.handoff)
    # pass B batches the rows its own way: parts of both exports, in another order
    for rows in ([3, 0, 2], [1], [0, 1]):
        seqs = [SEQS_B[r] for r in rows]
        handed = run_batch(net, seqs, **args(seqs, max_new_tokens=4, prefix=prefix, row_prefix=store.for_rows(rows)))
        whole = run_batch(net, seqs, **args(seqs, max_new_tokens=4))
        np.testing.assert_allclose(handed.stacked, whole.stacked, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(handed.label_logits, whole.label_logits, rtol=1e-5, atol=1e-5)
        assert handed.generated_ids == whole.generated_ids
        assert np.abs(whole.stacked).max() > 0.03


def test_row_prefix_checks_its_tokens_and_needs_hidden_states_for_kept_positions():
    from hf_introspect.collection.prefix import HandoffStore, handoff_lengths

    net = model()
    q = handoff_lengths(SEQS_A, SEQS_B, 0)
    store = HandoffStore()
    a = launch_batch(net, SEQS_A, **args(SEQS_A, export=q))  # keys/values only
    assert a.handoff.hidden is None
    store.add([0, 1, 2, 3], a.handoff)
    last = [np.array([len(s) - 1]) for s in SEQS_B]  # the last position is never in the row prefix
    out = run_batch(net, SEQS_B, **args(SEQS_B, keep_positions=last, row_prefix=store.for_rows([0, 1, 2, 3])))
    whole = run_batch(net, SEQS_B, **args(SEQS_B, keep_positions=last))
    np.testing.assert_allclose(out.stacked, whole.stacked, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="without hidden states"):
        run_batch(net, SEQS_B, **args(SEQS_B, row_prefix=store.for_rows([0, 1, 2, 3])))
    other = [[2] + s[1:] for s in SEQS_B]
    with pytest.raises(ValueError, match="row prefix's tokens"):
        run_batch(net, other, **args(other, keep_positions=last, row_prefix=store.for_rows([0, 1, 2, 3])))
    assert store.for_rows([0, 7]) is None  # a row nothing was exported for: run whole


def test_a_resumed_pass_gets_its_handed_prefixes_again_bit_exactly(tiny_model_dir, tmp_path, monkeypatch):
    """Interrupted after self_conf's shard 0 is stored but before other_conf's: the resumed run runs
    self_conf's prompt forwards of that shard again (nothing stored) and equals an uninterrupted run."""
    from hf_introspect.collection import pass_context as collector, run
    from hf_introspect.collection.run import collect
    from hf_introspect.config import CollectConfig

    from .test_collector import make_questions

    def cfg(name):
        return CollectConfig(output_dir=str(tmp_path / name), model=str(tiny_model_dir), batch_size=3, save_every=2,
                             max_new_tokens=3)

    reference = collect(cfg("reference"), questions=make_questions())
    real_launch = collector.launch_batch

    def interrupt_on_handed(net, seqs, *a, **kw):
        if kw["row_prefix"] is not None:
            raise KeyboardInterrupt
        return real_launch(net, seqs, *a, **kw)

    monkeypatch.setattr(collector, "launch_batch", interrupt_on_handed)
    with pytest.raises(KeyboardInterrupt):
        collect(cfg("run"), questions=make_questions())
    shards = tmp_path / "run"
    assert any((shards / "self_conf").glob("*00000-of-*")) and not any((shards / "other_conf").glob("*00000-of-*"))
    monkeypatch.setattr(collector, "launch_batch", real_launch)
    again = []
    real_again = run.export_again
    monkeypatch.setattr(run, "export_again", lambda *a: again.append(a[-2].index) or real_again(*a))
    resumed = collect(cfg("run"), questions=make_questions())
    assert again == [0]  # only the shard whose source was stored before the interruption
    for name in reference:
        a, b = reference[name].with_format("numpy", dtype=None), resumed[name].with_format("numpy", dtype=None)
        for col in a.column_names:
            for x, y in zip(a[col], b[col]):
                np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("positions,batch_size,act_dtype", [("all", 3, "float16"), ("last", 3, "float16"),
                                                              ("question", 5, "float32")])
def test_plan_states_the_exact_memory_the_handed_prefixes_hold(tiny_model_dir, tmp_path, monkeypatch, positions,
                                                               batch_size, act_dtype):
    """The plan's "up to X of host memory" is the largest HandoffStore of the run, to the byte:
    padding inside each micro-batch included, hidden states only where the later pass stores them."""
    from hf_introspect.collection import estimate as collector, prefix
    from hf_introspect.collection.run import collect
    from hf_introspect.config import CollectConfig
    from hf_introspect.collection.planning import fmt_bytes

    from .test_collector import make_questions

    stated, handed, peak = [], [], [0]
    real_held, real_add = collector.handoff_held_bytes, prefix.HandoffStore.add

    def held(run, src, dst, lengths, P):
        handed.append(lengths)
        stated.append(real_held(run, src, dst, lengths, P))
        return stated[-1]

    monkeypatch.setattr(collector, "handoff_held_bytes", held)

    def add(store, rows, part):
        real_add(store, rows, part)
        peak[0] = max(peak[0], store.nbytes())

    monkeypatch.setattr(prefix.HandoffStore, "add", add)
    cfg = CollectConfig(output_dir=str(tmp_path / "run"), model=str(tiny_model_dir), batch_size=batch_size,
                        save_every=2, max_new_tokens=0, positions=positions, act_dtype=act_dtype)
    plan = collect(CollectConfig(**{**cfg.__dict__, "dry_run": True}), questions=make_questions())
    note = next(n for n in plan.notes if "per-question prefixes" in n)
    collect(cfg, questions=make_questions())
    assert len(stated) == 2 and stated[0] == stated[1] and peak[0] == stated[0]
    assert f"up to {fmt_bytes(stated[0])} of host memory" in note
    # The handed question blocks differ in length, so the micro-batches pad (counted above).
    assert len(set(handed[0].tolist())) > 1
