"""End-to-end collection on a tiny random Llama: schema, values, reloads, resume, LoRA."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from datasets import Array2D, Dataset, Features, load_dataset, load_from_disk

from hf_introspect.collection.run import collect
from hf_introspect.config import CollectConfig
from hf_introspect.errors import UserError
from hf_introspect.passes import CONFIDENCE_MIDPOINTS
from hf_introspect.schema import layer_column, question_features

N_QUESTIONS = 11  # not a multiple of the shard size: the last shard is short
# float32 logits of one model agree to ~1e-6 between a padded batch and one prompt on a CPU; CUDA's
# float32 matmuls (TF32-level, seen on an H100) move them by up to ~6e-4.
LOGIT_ATOL = 2e-3 if torch.cuda.is_available() else 1e-4


def make_questions(n: int = N_QUESTIONS) -> Dataset:
    # Varied lengths so left padding really happens inside a batch.
    rows = []
    for i in range(n):
        rows.append({
            "question_id": f"q{i:03d}",
            "question_text": "What is the capital of France" + " really" * (i % 4) + f" ({i})?",
            "options": {"A": "Paris", "B": "Berlin", "C": "Rome" + "!" * (i % 3), "D": "Madrid"},
            "correct_answer_letter": "ABCD"[i % 4],
            "question_source": "test",
            "option_source_index": [0, 1, 2, 3],
        })
    return Dataset.from_list(rows, features=Features(question_features()))


def run_cfg(tmp_path, model_dir, name="run", **kw) -> CollectConfig:
    kw.setdefault("batch_size", 3)
    kw.setdefault("save_every", 2)
    kw.setdefault("max_new_tokens", 3)
    return CollectConfig(output_dir=str(tmp_path / name), model=str(model_dir), **kw)


@pytest.fixture(scope="module")
def base_run(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("collect")
    cfg = run_cfg(out, tiny_model_dir)
    return cfg, collect(cfg, questions=make_questions())


def test_every_column_present_with_its_type(base_run):
    cfg, ds = base_run
    assert set(ds) == {"mcq", "self_conf", "other_conf"}
    seed_columns = ["question_id", "question_text", "options", "correct_answer_letter", "model_name", "checkpoint_id",
                    "prompt_type", "prompt_text", "temperature", "top_p", "max_new_tokens", "output_text",
                    "parsed_answer", "logits", "probs", "entropy", "char_length", "token_length", "question_type",
                    "has_negation", "has_ambiguity", "token_rarity_mean", "token_rarity_max", "seq_len", "input_ids",
                    "question_token_span", "option_token_spans"]
    for name, split in ds.items():
        assert len(split) == N_QUESTIONS
        for col in seed_columns:
            assert col in split.column_names, (name, col)
        # tiny model: 2 blocks -> 3 residual indices (embeddings, block 1, block 2 pre-norm)
        acts = [c for c in split.column_names if c.startswith("activations_layer_")]
        assert acts == [layer_column(i) for i in range(3)]
        assert split.features[acts[0]] == Array2D(shape=(None, 64), dtype="float16")
    mcq = ds["mcq"]
    assert {"is_correct", "logit_margin", "answer_token_index"} <= set(mcq.column_names)
    assert "self_confidence" in ds["self_conf"].column_names and "other_confidence" in ds["other_conf"].column_names
    assert "is_correct" not in ds["self_conf"].column_names
    assert mcq[0]["prompt_type"] == "mcq" and ds["self_conf"][0]["prompt_type"] == "self_confidence"
    assert mcq[0]["checkpoint_id"] == "base" and mcq[0]["model_name"] == "tiny"
    assert [r["question_id"] for r in mcq] == [f"q{i:03d}" for i in range(N_QUESTIONS)]  # question order kept


def test_distributions_and_derived_values(base_run):
    _, ds = base_run
    mcq = ds["mcq"].with_format("numpy", columns=["probs", "logits", "entropy", "logit_margin",
                                                  "correct_answer_letter", "parsed_answer", "is_correct"])[:]
    probs = mcq["probs"].astype(np.float64)
    assert probs.shape == (N_QUESTIONS, 4)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)
    np.testing.assert_allclose(-(probs * np.log(probs)).sum(1), mcq["entropy"], rtol=1e-5)
    idx = np.array(["ABCD".index(c) for c in mcq["correct_answer_letter"]])
    logits = mcq["logits"]
    best_other = np.array([np.delete(logits[r], idx[r]).max() for r in range(N_QUESTIONS)])
    np.testing.assert_allclose(mcq["logit_margin"], logits[np.arange(N_QUESTIONS), idx] - best_other, rtol=1e-5)
    np.testing.assert_array_equal(mcq["is_correct"], mcq["parsed_answer"] == mcq["correct_answer_letter"])
    for name, col in (("self_conf", "self_confidence"), ("other_conf", "other_confidence")):
        split = ds[name].with_format("numpy", columns=["probs", col])[:]
        p = split["probs"].astype(np.float64)
        assert p.shape == (N_QUESTIONS, 8)
        np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-6)
        np.testing.assert_allclose(split[col], p @ np.array(CONFIDENCE_MIDPOINTS), rtol=1e-5)


def test_row_equals_an_unbatched_forward(base_run, tiny_model_dir):
    """Stored activations and restricted logits equal a plain, unpadded transformers forward."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg, ds = base_run
    # The reference runs where the collector ran (its process device): float32 results of the
    # same model differ across devices (CPU vs CUDA kernels) by more than within one.
    device = "cuda" if torch.cuda.is_available() else "cpu"
    net = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval().to(device)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    label_ids = {L: [tok.convert_tokens_to_ids(t) for t in (L, "Ġ" + L) if tok.convert_tokens_to_ids(t) != tok.unk_token_id]
                 for L in "ABCD"}
    split = ds["mcq"].with_format("numpy", dtype=None)
    for r in (0, 5, N_QUESTIONS - 1):  # rows from different batches and shards, different pad widths
        row = split[r]
        ids = torch.tensor(row["input_ids"], dtype=torch.long, device=device)[None]
        captured = {}
        hook = net.model.layers[-1].register_forward_hook(
            lambda m, a, o: captured.setdefault("x", o[0] if isinstance(o, tuple) else o))
        with torch.no_grad():
            out = net(input_ids=ids, output_hidden_states=True)
        hook.remove()
        expected = [out.hidden_states[0][0], out.hidden_states[1][0], captured["x"][0]]
        for i, ref in enumerate(expected):
            got = row[layer_column(i)]
            assert got.dtype == np.float16 and got.shape == (row["seq_len"], 64)
            np.testing.assert_allclose(got.astype(np.float32), ref.cpu().numpy(), atol=2e-3, rtol=2e-3)
        last = out.logits[0, -1]
        ref_logits = [torch.logsumexp(last[label_ids[L]], 0).item() for L in "ABCD"]
        np.testing.assert_allclose(row["logits"], ref_logits, atol=LOGIT_ATOL)
        assert row["answer_token_index"] == row["seq_len"] - 1
        np.testing.assert_array_equal(row["activation_positions"], np.arange(row["seq_len"]))


def test_output_text_is_the_greedy_continuation(base_run, tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, ds = base_run
    device = "cuda" if torch.cuda.is_available() else "cpu"  # where the collector ran
    net = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval().to(device)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    row = ds["self_conf"][4]
    gen = net.generate(torch.tensor([row["input_ids"]], device=device), max_new_tokens=3, do_sample=False,
                       eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    new = [t for t in gen[0, len(row["input_ids"]):].tolist() if t != tok.eos_token_id]
    assert row["output_text"] == tok.decode(new, skip_special_tokens=True)
    assert row["parse_source"] in ("output_text", "argmax")


def test_reload_is_bit_exact(base_run):
    cfg, ds = base_run
    again = load_from_disk(cfg.output_dir)
    files = sorted(str(p) for p in (__import__("pathlib").Path(cfg.output_dir) / "mcq").glob("data-*.arrow"))
    arrow = load_dataset("arrow", data_files=files, split="train")
    assert arrow.features == ds["mcq"].features
    for other in (again["mcq"], arrow):
        for col in ("logits", layer_column(0), layer_column(2)):
            a = ds["mcq"].with_format("numpy", dtype=None)[col]
            b = other.with_format("numpy", dtype=None)[col]
            for x, y in zip(a, b):
                assert x.dtype == y.dtype
                np.testing.assert_array_equal(x, y)


def test_interrupted_run_resumes_to_the_same_data(base_run, tiny_model_dir, tmp_path, monkeypatch):
    from hf_introspect.collection import pass_context as collector

    cfg, reference = base_run
    calls = {"n": 0}
    real = collector.launch_batch

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 6:  # mid-way through the self_conf pass
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(collector, "launch_batch", flaky)
    resumed_cfg = run_cfg(tmp_path, tiny_model_dir)
    with pytest.raises(KeyboardInterrupt):
        collect(resumed_cfg, questions=make_questions())
    assert not list((tmp_path / "run").glob("*/tmp*"))  # map removed its temp file
    assert not (tmp_path / "run" / "dataset_dict.json").exists()
    monkeypatch.setattr(collector, "launch_batch", real)
    resumed = collect(resumed_cfg, questions=make_questions())
    for name in reference:
        a, b = reference[name].with_format("numpy", dtype=None), resumed[name].with_format("numpy", dtype=None)
        assert a.column_names == b.column_names
        for col in a.column_names:
            for x, y in zip(a[col], b[col]):
                np.testing.assert_array_equal(x, y)


def test_rerun_with_other_settings_is_refused(base_run, tiny_model_dir, tmp_path):
    cfg, _ = base_run
    other = CollectConfig(output_dir=cfg.output_dir, model=str(tiny_model_dir), batch_size=3, save_every=2,
                          max_new_tokens=5)
    with pytest.raises(UserError, match="max_new_tokens"):
        collect(other, questions=make_questions())


def test_finetuned_adapter_changes_logits(base_run, tiny_model_dir, tiny_lora_dir, tmp_path):
    _, base = base_run
    cfg = run_cfg(tmp_path, tiny_model_dir, "ft", model_type="finetuned", lora_checkpoint=str(tiny_lora_dir),
                  passes=("mcq",))
    ft = collect(cfg, questions=make_questions())
    assert ft["mcq"][0]["checkpoint_id"] == "ckpt_step_1280"
    a = np.array(base["mcq"]["logits"])
    b = np.array(ft["mcq"]["logits"])
    assert np.abs(a - b).max() > 1e-3
    # The embedding output is untouched by a q/v-projection LoRA; later layers move.
    e0 = base["mcq"].with_format("numpy", dtype=None)[0]
    e1 = ft["mcq"].with_format("numpy", dtype=None)[0]
    np.testing.assert_array_equal(e0[layer_column(0)], e1[layer_column(0)])
    assert np.abs(e0[layer_column(2)].astype(np.float32) - e1[layer_column(2)].astype(np.float32)).max() > 1e-3


def test_storage_controls_select_layers_and_positions(tiny_model_dir, tmp_path):
    cfg = run_cfg(tmp_path, tiny_model_dir, layers="0,2", positions="question+last", passes=("mcq",),
                  max_new_tokens=0)
    ds = collect(cfg, questions=make_questions(4))["mcq"].with_format("numpy", dtype=None)
    assert [c for c in ds.column_names if c.startswith("activations_")] == [layer_column(0), layer_column(2)]
    row = ds[1]
    qs, qe = row["question_token_span"]
    np.testing.assert_array_equal(row["activation_positions"], list(range(qs, qe)) + [row["seq_len"] - 1])
    assert row[layer_column(2)].shape == (qe - qs + 1, 64)
    assert row["output_text"] == ""  # max_new_tokens 0: the distribution only
    assert row["parse_source"] == "argmax"


def test_fp16_overflow_is_counted_and_warned_once(tiny_model_dir, tmp_path, caplog):
    """Residual entries beyond float16's range (65504) become inf after the cast: counted per row,
    one warning naming the layers, and float32 storage keeps them."""
    import logging

    from hf_introspect.models.load import load_model

    lm = load_model(str(tiny_model_dir))
    with torch.no_grad():
        lm.model.model.embed_tokens.weight.mul_(1e9)  # every embedding entry now overflows float16
    cfg = run_cfg(tmp_path, tiny_model_dir, passes=("mcq",), max_new_tokens=0)
    with caplog.at_level(logging.WARNING, logger="hf_introspect"):
        ds = collect(cfg, lm=lm, questions=make_questions(4))["mcq"]
    warnings = [r.getMessage() for r in caplog.records if "non-finite" in r.getMessage()]
    assert len(warnings) == 1 and "--act_dtype float32" in warnings[0] and "0" in warnings[0]
    counts = np.array(ds["fp16_overflow_count"])
    seq_lens = np.array(ds["seq_len"])
    assert (counts >= seq_lens * 64).all()  # at least the whole embedding layer of each row
    f32 = collect(run_cfg(tmp_path, tiny_model_dir, "f32", passes=("mcq",), max_new_tokens=0, act_dtype="float32"),
                  lm=lm, questions=make_questions(4))["mcq"].with_format("numpy", dtype=None)
    assert f32.features[layer_column(0)].dtype == "float32"
    assert all(c == 0 for c in f32["fp16_overflow_count"])
    assert np.isfinite(f32[0][layer_column(0)]).all() and np.abs(f32[0][layer_column(0)]).max() > 65504


def test_out_of_memory_halves_the_batch_and_finishes(base_run, tiny_model_dir, tmp_path, monkeypatch, caplog):
    import logging

    from hf_introspect.collection import pass_context as collector

    real = collector.launch_batch

    def small_memory(net, sequences, *a, **kw):
        if len(sequences) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(net, sequences, *a, **kw)

    monkeypatch.setattr(collector, "launch_batch", small_memory)
    cfg = run_cfg(tmp_path, tiny_model_dir, passes=("mcq",))
    with caplog.at_level(logging.WARNING, logger="hf_introspect"):
        ds = collect(cfg, questions=make_questions())["mcq"]
    lowered = [r.getMessage() for r in caplog.records if "batch size lowered" in r.getMessage()]
    assert lowered and lowered[-1].endswith("to 1 and retried")
    assert len(ds) == N_QUESTIONS
    # one prompt per forward: no padding at all, the same values as the batched run up to float noise
    ref = base_run[1]["mcq"]
    np.testing.assert_allclose(np.array(ds["logits"]), np.array(ref["logits"]), atol=LOGIT_ATOL)


def test_continuations_are_decoded_together_with_the_same_result(base_run, tiny_model_dir, tmp_path, monkeypatch):
    """A shard's micro-batches are decoded as one batch (2 x 3 rows here); the texts equal a run
    that decodes every micro-batch on its own."""
    from hf_introspect.collection import backoff, run as collector

    seen = []
    real = backoff.continue_batches

    def spy(net, states, **kw):
        seen.append([s.rows for s in states])
        return real(net, states, **kw)

    monkeypatch.setattr(backoff, "continue_batches", spy)
    merged = collect(run_cfg(tmp_path, tiny_model_dir, "merged", passes=("mcq",)), questions=make_questions())["mcq"]
    assert seen and all(sum(g) <= 6 for g in seen) and [3, 3] in seen
    assert merged["output_text"] == base_run[1]["mcq"]["output_text"]
    seen.clear()
    monkeypatch.setattr(collector, "DECODE_MAX_ROWS", {"cpu": 1})
    alone = collect(run_cfg(tmp_path, tiny_model_dir, "alone", passes=("mcq",)), questions=make_questions())["mcq"]
    assert not seen  # nothing deferred
    assert alone["output_text"] == merged["output_text"]
    assert any(t for t in alone["output_text"])


def raise_oom_in_decode_steps(net, min_rows: int = 2):
    """A real OutOfMemoryError from the model's forward in every decode step of >= min_rows rows."""
    def pre(_module, args, kwargs):
        ids = kwargs.get("input_ids")
        if ids is not None and ids.shape[1] == 1 and ids.shape[0] >= min_rows:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
    return net.register_forward_pre_hook(pre, with_kwargs=True)


def test_out_of_memory_in_a_merged_decode_reruns_the_rows_with_their_own_texts(tmp_path, caplog):
    """The merged decode fails; the rows run again per micro-batch, which fails too and halves the
    batch: every row still gets exactly its own continuation (rows whose texts all differ)."""
    import logging
    from types import SimpleNamespace

    from hf_introspect.collection.backoff import run_with_backoff
    from hf_introspect.collection.pass_context import PassContext

    from .test_inference import MORE, SEQS, greedy, sharp_model

    net = sharp_model()
    seqs = SEQS + MORE + [[3, 3, 9, 14], [20, 21, 22, 23, 24]]
    expected = [greedy(net, s, 4) for s in seqs]
    assert len({tuple(e) for e in expected}) == len(seqs)  # a row mix-up cannot go unnoticed
    cfg = CollectConfig(output_dir=str(tmp_path / "unused"), max_new_tokens=4)
    lm = SimpleNamespace(model=net, tokenizer=SimpleNamespace(pad_token_id=0))
    ctx = PassContext(cfg, lm, "mcq", ("A", "B"), {"A": [10], "B": [11]}, [0, 2], set(), micro_batch=3,
                      buffers=None, decode_max_rows=32, decode_kv_budget=2**30)
    handle = raise_oom_in_decode_steps(net)
    try:
        with caplog.at_level(logging.WARNING, logger="hf_introspect"):
            results = run_with_backoff(ctx, list(range(len(seqs))), seqs, [np.arange(len(s)) for s in seqs],
                                       [f"q{i}" for i in range(len(seqs))])
    finally:
        handle.remove()
    assert [results[r][0].generated_ids[results[r][1]] for r in range(len(seqs))] == expected
    messages = [r.getMessage() for r in caplog.records]
    assert sum("decoding 8 rows together" in m for m in messages) == 1
    assert any(m.endswith("lowered to 1 and retried") for m in messages)
    assert ctx.decode_max_rows == 1 and ctx.micro_batch == 1


def test_out_of_memory_in_a_merged_decode_keeps_the_run_whole(base_run, tiny_model_dir, tmp_path, caplog):
    import logging

    from hf_introspect.models.load import load_model

    lm = load_model(str(tiny_model_dir))
    handle = raise_oom_in_decode_steps(lm.model)
    try:
        with caplog.at_level(logging.WARNING, logger="hf_introspect"):
            ds = collect(run_cfg(tmp_path, tiny_model_dir, passes=("mcq",)), lm=lm, questions=make_questions())["mcq"]
    finally:
        handle.remove()
    assert any("rows together" in r.getMessage() for r in caplog.records)
    ref = base_run[1]["mcq"]
    assert ds["question_id"] == ref["question_id"] and ds["output_text"] == ref["output_text"]
    np.testing.assert_allclose(np.array(ds["logits"]), np.array(ref["logits"]), atol=LOGIT_ATOL)
    for x, y in zip(ds.with_format("numpy", dtype=None)[layer_column(2)],
                    ref.with_format("numpy", dtype=None)[layer_column(2)]):
        np.testing.assert_allclose(x.astype(np.float32), y.astype(np.float32), atol=2e-3)


def test_single_prompt_too_big_for_memory_is_a_clear_error(tiny_model_dir, tmp_path, monkeypatch):
    from hf_introspect.collection import pass_context as collector

    def no_memory(net, sequences, *a, **kw):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(collector, "launch_batch", no_memory)
    with pytest.raises(UserError, match="does not fit in memory"):
        collect(run_cfg(tmp_path, tiny_model_dir, passes=("mcq",)), questions=make_questions(3))
    assert not (tmp_path / "run").exists()


def test_overwrite_replaces_a_run_with_other_settings(base_run, tiny_model_dir, tmp_path):
    first = run_cfg(tmp_path, tiny_model_dir, passes=("mcq",), max_new_tokens=1)
    collect(first, questions=make_questions(3))
    again = run_cfg(tmp_path, tiny_model_dir, passes=("mcq",), max_new_tokens=2, overwrite=True)
    ds = collect(again, questions=make_questions(3))
    assert list(ds) == ["mcq"] and ds["mcq"][0]["max_new_tokens"] == 2
