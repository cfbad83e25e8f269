"""Bad input: one clear line on stderr, exit status 2, no traceback, nothing written."""

from __future__ import annotations

import json
import logging

import pytest

from hf_introspect.commands.collect import main as collect_main
from hf_introspect.errors import UserError
from hf_introspect.collection.readout import resolve_label_token_ids


def write_questions(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def good_row(i):
    return {"question_id": f"q{i}", "question_text": f"What is {i} + 1?",
            "options": {"A": str(i + 1), "B": str(i + 2), "C": str(i + 3), "D": str(i + 4)},
            "correct_answer_letter": "A"}


@pytest.fixture
def qfile(tmp_path):
    return write_questions(tmp_path / "q.jsonl", [good_row(i) for i in range(5)])


def run_cli(capsys, args):
    rc = collect_main(args)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    return rc, lines, err


def assert_one_line_error(capsys, args, *needles, out_dir=None):
    rc, lines, err = run_cli(capsys, args)
    assert rc == 2, err
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]
    if out_dir is not None:
        assert not out_dir.exists() or not any(out_dir.iterdir())
    return lines[0]


def base_args(model_dir, qfile, out):
    return ["--model", str(model_dir), "--questions", str(qfile), "--output_dir", str(out), "--batch_size", "2",
            "--max_new_tokens", "1"]


def test_missing_lora_checkpoint(capsys, tiny_model_dir, qfile, tmp_path):
    out = tmp_path / "out"
    assert_one_line_error(capsys, base_args(tiny_model_dir, qfile, out) + ["--model_type", "finetuned",
                          "--lora_checkpoint", str(tmp_path / "nope")], "does not exist", out_dir=out)


def test_folder_that_is_not_an_adapter(capsys, tiny_model_dir, qfile, tmp_path):
    out = tmp_path / "out"
    (tmp_path / "notpeft").mkdir()
    (tmp_path / "notpeft" / "weights.bin").write_bytes(b"x")
    assert_one_line_error(capsys, base_args(tiny_model_dir, qfile, out) + ["--model_type", "finetuned",
                          "--lora_checkpoint", str(tmp_path / "notpeft")], "not a PEFT adapter", out_dir=out)


def test_adapter_for_another_base_model(capsys, tiny_model_dir, qfile, tmp_path):
    from hf_introspect.testing import save_tiny_lora, save_tiny_model

    other = save_tiny_model(tmp_path / "other", hidden=32)
    adapter = save_tiny_lora(other, tmp_path / "other_lora")
    out = tmp_path / "out"
    assert_one_line_error(capsys, base_args(tiny_model_dir, qfile, out) + ["--model_type", "finetuned",
                          "--lora_checkpoint", str(adapter)], "different base model", out_dir=out)


def test_finetuned_without_adapter_and_adapter_without_finetuned(capsys, tiny_model_dir, qfile, tmp_path):
    out = tmp_path / "out"
    assert_one_line_error(capsys, base_args(tiny_model_dir, qfile, out) + ["--model_type", "finetuned"],
                          "--lora_checkpoint", out_dir=out)
    assert_one_line_error(capsys, base_args(tiny_model_dir, qfile, out) + ["--lora_checkpoint", str(tmp_path)],
                          "--model_type finetuned", out_dir=out)


def test_hub_model_while_offline(capsys, qfile, tmp_path):
    out = tmp_path / "out"
    assert_one_line_error(capsys, ["--model", "no-such-org/no-such-model", "--questions", str(qfile),
                                   "--output_dir", str(out)], "cannot load model", "network", out_dir=out)


def test_malformed_questions_file_names_file_and_line(capsys, tiny_model_dir, tmp_path):
    q = tmp_path / "bad.jsonl"
    q.write_text(json.dumps(good_row(0)) + "\n{not json\n")
    out = tmp_path / "out"
    line = assert_one_line_error(capsys, base_args(tiny_model_dir, q, out), "bad.jsonl", out_dir=out)
    assert ":2" in line or "line 2" in line


@pytest.mark.parametrize("mutate,needle", [
    (lambda r: r["options"].pop("D"), "option"),
    (lambda r: r["options"].update(D=r["options"]["A"]), "duplicate"),
    (lambda r: r.update(question_text=""), "empty"),
    (lambda r: r.update(correct_answer_letter="E"), "E"),
])
def test_bad_question_rows(capsys, tiny_model_dir, tmp_path, mutate, needle):
    rows = [good_row(i) for i in range(3)]
    mutate(rows[1])
    q = write_questions(tmp_path / "q.jsonl", rows)
    out = tmp_path / "out"
    line = assert_one_line_error(capsys, base_args(tiny_model_dir, q, out), out_dir=out)
    assert needle.lower() in line.lower()


def test_duplicate_question_ids(capsys, tiny_model_dir, tmp_path):
    rows = [good_row(0), good_row(1)]
    rows[1]["question_id"] = "q0"
    q = write_questions(tmp_path / "q.jsonl", rows)
    assert_one_line_error(capsys, base_args(tiny_model_dir, q, tmp_path / "out"), "q0")


@pytest.mark.parametrize("n,needle", [("0", ">= 1"), ("-3", ">= 1"), ("99", "5")])
def test_num_questions_out_of_range(capsys, tiny_model_dir, qfile, tmp_path, n, needle):
    out = tmp_path / "out"
    assert_one_line_error(capsys, base_args(tiny_model_dir, qfile, out) + ["--num_questions", n], needle, out_dir=out)


def test_batch_size_zero(capsys, tiny_model_dir, qfile, tmp_path):
    assert_one_line_error(capsys, base_args(tiny_model_dir, qfile, tmp_path / "o") + ["--batch_size", "0"],
                          "--batch_size")


def test_output_dir_that_is_a_file(capsys, tiny_model_dir, qfile, tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("keep me")
    assert_one_line_error(capsys, base_args(tiny_model_dir, qfile, f), "is a file")
    assert f.read_text() == "keep me"


def test_non_run_folder_is_never_touched(capsys, tiny_model_dir, qfile, tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.tex").write_text("draft")
    assert_one_line_error(capsys, base_args(tiny_model_dir, qfile, out) + ["--overwrite"], "holds no hf_introspect run")
    assert (out / "thesis.tex").read_text() == "draft"


def test_bad_layers_and_positions(capsys, tiny_model_dir, qfile, tmp_path):
    assert_one_line_error(capsys, base_args(tiny_model_dir, qfile, tmp_path / "o") + ["--layers", "0,7"],
                          "out of range", "0-2")
    assert_one_line_error(capsys, base_args(tiny_model_dir, qfile, tmp_path / "o") + ["--positions", "middle"],
                          "--positions")


def test_debug_shows_the_traceback(tiny_model_dir, qfile, tmp_path):
    with pytest.raises(UserError):
        collect_main(base_args(tiny_model_dir, qfile, tmp_path / "o") + ["--batch_size", "0", "--debug"])


def test_tokenizer_without_chat_template_uses_plain_prompt(capsys, qfile, tmp_path, caplog):
    from datasets import load_from_disk

    from hf_introspect.testing import save_tiny_model

    model = save_tiny_model(tmp_path / "plain", chat_template=False)
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="hf_introspect"):
        rc = collect_main(base_args(model, qfile, out) + ["--passes", "mcq"])
    assert rc == 0
    warnings = [r for r in caplog.records if "no chat template" in r.getMessage()]
    assert len(warnings) == 1
    row = load_from_disk(str(out / "mcq"))[0]
    assert row["prompt_text"].endswith("only.\nAnswer:")
    assert "<|im_start|>" not in row["prompt_text"]


def test_label_missing_from_vocabulary():
    class WordTokenizer:  # a vocabulary where "Z" is two tokens
        unk_token_id = 0
        vocab = {"A": 1, "B": 2, "C": 3, "D": 4, "S": 5, "T": 6, "U": 7, "V": 8, "W": 9, "X": 10, "Y": 11}

        def encode(self, text, add_special_tokens=False):
            t = text.strip()
            return [self.vocab[t]] if t in self.vocab else [12, 13]

    assert resolve_label_token_ids(WordTokenizer(), ("A", "B")) == {"A": [1], "B": [2]}
    with pytest.raises(UserError, match="label 'Z' is not a single token"):
        resolve_label_token_ids(WordTokenizer(), tuple("STUVWXYZ"))
