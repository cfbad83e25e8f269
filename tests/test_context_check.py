"""Prompts longer than the model's context: refused with the question ids, or dropped with --skip_long."""

from __future__ import annotations

import json
import shutil

import pytest

from hf_introspect.cli import main

from .test_faults import assert_same_run

LIMIT = 400  # positions of the test model; a normal prompt of the tiny tokenizer is ~120-230 tokens
LONG = {"q03", "q05"}


def write_questions(path, ids):
    rows = [{"question_id": f"q{i:02d}",
             "question_text": f"What is the capital of place number {i}?" + (" very long" * 200 if f"q{i:02d}" in LONG else ""),
             "options": {"A": f"City {i}", "B": f"Town {i}", "C": f"Village {i}", "D": f"Port {i}"},
             "correct_answer_letter": "ABCD"[i % 4]} for i in ids]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def short_model(tiny_model_dir, tmp_path_factory):
    # The session's tiny model with a context of LIMIT positions (rotary: the weights do not change).
    folder = tmp_path_factory.mktemp("ctx") / "tiny400"
    shutil.copytree(tiny_model_dir, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["max_position_embeddings"] = LIMIT
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def args(model, qfile, out, *extra):
    return ["collect", "--model", str(model), "--questions", str(qfile), "--output_dir", str(out), "--batch_size", "2",
            "--save_every", "1", "--max_new_tokens", "2", *extra]


def test_long_prompts_refused_naming_ids(short_model, tmp_path, capsys):
    qfile = write_questions(tmp_path / "q.jsonl", range(8))
    out = tmp_path / "run"
    assert main(args(short_model, qfile, out)) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: 2 of 8 questions need more than the model's 400 positions: q03 (")
    assert "q05 (" in err and "--skip_long" in err and "Traceback" not in err
    assert not (out / "run_config.json").exists()  # refused before anything was written


def test_skip_long_drops_records_and_equals_a_run_without_them(short_model, tmp_path, caplog):
    out = tmp_path / "skipped"
    assert main(args(short_model, write_questions(tmp_path / "q.jsonl", range(8)), out, "--skip_long")) == 0
    assert "--skip_long: 2 of 8 questions need more than the model's 400 positions: q03 (" in caplog.text
    record = json.loads((out / "run_config.json").read_text())["skipped_long"]
    assert record["limit"] == LIMIT and record["question_ids"] == ["q03", "q05"]
    assert all(n > LIMIT for n in record["positions_needed"])
    # The same six questions collected without any long one: bit for bit the same data.
    kept = [i for i in range(8) if f"q{i:02d}" not in LONG]
    plain = tmp_path / "plain"
    (tmp_path / "kept").mkdir()  # same file name: question_source records it
    assert main(args(short_model, write_questions(tmp_path / "kept" / "q.jsonl", kept), plain)) == 0
    assert_same_run(out, plain, n=6)


def test_continuation_counts_toward_the_context(short_model, tmp_path, capsys):
    # Every prompt fits, but 400 new tokens would run past position 400.
    qfile = write_questions(tmp_path / "q.jsonl", [0, 1])
    assert main(args(short_model, qfile, tmp_path / "run")[:-2] + ["--max_new_tokens", "400"]) == 2
    assert "lower --max_new_tokens" in capsys.readouterr().err


def test_gguf_conversions_keep_the_context_length_where_it_is_read():
    # transformers converts a .gguf's context_length into the config attribute of its family; the
    # check must find it for every family (bloom records none: ALiBi has no position table).
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    from hf_introspect.collection.context_check import _CONTEXT_ATTRS

    families = {arch: m["context_length"] for arch, m in GGUF_CONFIG_MAPPING.items() if m.get("context_length")}
    assert len(families) >= 20 and families["llama"] == "max_position_embeddings"
    assert {arch: attr for arch, attr in families.items() if attr not in _CONTEXT_ATTRS} == {}
