"""Weights a checkpoint lacks or has in excess: one line and exit 2 (random readouts are never
collected silently); --allow_missing_weights goes on and records them. Library warnings: --debug
and TRANSFORMERS_VERBOSITY."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
from safetensors.torch import load_file, save_file

from hf_introspect.cli import main, setup_logging


def damaged_model(src, folder, drop=(), add=()):
    """A copy of a saved tiny model with weights deleted from / added to its safetensors file."""
    shutil.copytree(src, folder)
    weights = load_file(folder / "model.safetensors")
    for name in drop:
        del weights[name]
    for name in add:
        weights[name] = weights["model.norm.weight"].clone()
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


@pytest.fixture
def qfile(tmp_path):
    rows = [{"question_id": f"q{i}", "question_text": f"What is {i} + 1?",
             "options": {"A": str(i + 1), "B": str(i + 2), "C": str(i + 3), "D": str(i + 4)},
             "correct_answer_letter": "A"} for i in range(3)]
    path = tmp_path / "q.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def collect_args(model, qfile, out, *extra):
    return ["collect", "--model", str(model), "--questions", str(qfile), "--output_dir", str(out),
            "--batch_size", "2", "--max_new_tokens", "1", "--passes", "mcq", *extra]


def test_missing_lm_head_is_one_line_and_nothing_is_written(capsys, tiny_model_dir, qfile, tmp_path):
    model = damaged_model(tiny_model_dir, tmp_path / "no_head", drop=["lm_head.weight"])
    out = tmp_path / "out"
    assert main(collect_args(model, qfile, out)) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "1 weight missing from the checkpoint" in lines[0] and "(lm_head.weight)" in lines[0]
    assert "--allow_missing_weights" in lines[0]
    assert not out.exists() or not any(out.iterdir())


def test_missing_layer_weight_and_unexpected_key_are_both_named(capsys, tiny_model_dir, qfile, tmp_path):
    model = damaged_model(tiny_model_dir, tmp_path / "holes", drop=["model.layers.1.mlp.up_proj.weight"],
                          add=["extra.weight", "model.layers.0.extra.weight"])
    assert main(collect_args(model, qfile, tmp_path / "out")) == 2
    line = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")][0]
    assert "1 weight missing from the checkpoint and initialised at random (model.layers.1.mlp.up_proj.weight)" in line
    assert "2 weights in the checkpoint but not in the model (unused) (extra.weight, model.layers.0.extra.weight)" in line


def test_allow_missing_weights_goes_on_and_records_them(capsys, tiny_model_dir, qfile, tmp_path):
    model = damaged_model(tiny_model_dir, tmp_path / "no_head", drop=["lm_head.weight"])
    out = tmp_path / "out"
    assert main(collect_args(model, qfile, out, "--allow_missing_weights")) == 0
    cfg = json.loads((out / "run_config.json").read_text())
    assert cfg["config"]["allow_missing_weights"] is True
    assert cfg["identity"]["model"]["weights_not_loaded"] == {"missing": ["lm_head.weight"], "unexpected": []}
    from datasets import load_from_disk

    assert len(load_from_disk(str(out))["mcq"]) == 3


def test_a_whole_checkpoint_records_nothing(tiny_model_dir):
    from hf_introspect.models.load import load_model

    assert "weights_not_loaded" not in load_model(str(tiny_model_dir)).identity


def test_library_warnings_follow_debug_and_transformers_verbosity(monkeypatch):
    from transformers.utils import logging as tf_logging

    before = tf_logging.get_verbosity()
    try:
        monkeypatch.delenv("TRANSFORMERS_VERBOSITY", raising=False)
        setup_logging(debug=False)
        assert tf_logging.get_verbosity() == logging.ERROR
        assert logging.getLogger("datasets").level == logging.ERROR
        setup_logging(debug=True)
        assert tf_logging.get_verbosity() == logging.WARNING
        assert logging.getLogger("peft").level == logging.WARNING
        monkeypatch.setenv("TRANSFORMERS_VERBOSITY", "info")
        setup_logging(debug=False)
        assert tf_logging.get_verbosity() == logging.INFO
    finally:
        tf_logging.set_verbosity(before)
        logging.getLogger("hf_introspect").setLevel(logging.INFO)
