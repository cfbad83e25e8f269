"""Issue 17 item 5: export, push, merge and the .npy export show a byte progress bar (rate, ETA)
that reaches the data's size; off when stderr is not a terminal, forced by HF_INTROSPECT_PROGRESS."""

from __future__ import annotations

import re

import pytest

from hf_introspect import cli
from hf_introspect.runs.progress import bars_enabled


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    from datasets.utils.logging import disable_progress_bar, enable_progress_bar

    from hf_introspect.testing import write_planted_run

    disable_progress_bar()
    try:
        return write_planted_run(tmp_path_factory.mktemp("bars") / "run", n=60, hidden=16, num_layers=2)
    finally:
        enable_progress_bar()


def final_bar(err: str, desc: str) -> str:
    """The last redraw of the bar named ``desc`` (tqdm redraws with carriage returns)."""
    draws = [d for d in re.split(r"[\r\n]", err) if d.startswith(f"{desc}:")]
    assert draws, err[-2000:]
    return draws[-1]


def test_bars_follow_the_environment(monkeypatch):
    monkeypatch.setenv("HF_INTROSPECT_PROGRESS", "1")
    assert bars_enabled()
    monkeypatch.setenv("HF_INTROSPECT_PROGRESS", "0")
    assert not bars_enabled()
    monkeypatch.delenv("HF_INTROSPECT_PROGRESS")
    assert bars_enabled() is False  # pytest's captured stderr is no terminal


@pytest.mark.parametrize("fmt, desc", [("hub", "export"), ("npy", "npy export")])
def test_export_bars_reach_100_percent(planted, tmp_path, capsys, monkeypatch, fmt, desc):
    monkeypatch.setenv("HF_INTROSPECT_PROGRESS", "1")
    assert cli.main(["export", str(planted), "--to", str(tmp_path / fmt), "--format", fmt]) == 0
    last = final_bar(capsys.readouterr().err, desc)
    assert "100%" in last and "B/s" in last, last   # bytes and a rate (tqdm shows the ETA beside it)
    done, total = re.search(r"\| *([\d.]+[kMG]?)/([\d.]+[kMG]?)", last).groups()
    assert done == total


def test_merge_bar(tiny_model_dir, tmp_path, capsys, monkeypatch):
    from datasets import Dataset, Features

    from hf_introspect import CollectConfig, collect
    from hf_introspect.models.load import load_model
    from hf_introspect.schema import question_features

    lm = load_model(str(tiny_model_dir))
    for name, ids in (("a", range(0, 2)), ("b", range(2, 4))):
        rows = [{"question_id": f"b{i}", "question_text": f"What is {i}?", "options": {"A": "1", "B": "2", "C": "3", "D": "4"},
                 "correct_answer_letter": "A", "question_source": "t", "option_source_index": [0, 1, 2, 3]} for i in ids]
        collect(CollectConfig(output_dir=str(tmp_path / name), model=str(tiny_model_dir), max_new_tokens=0,
                              layers="0", positions="last", passes="mcq"),
                lm=lm, questions=Dataset.from_list(rows, features=Features(question_features())))
    capsys.readouterr()
    monkeypatch.setenv("HF_INTROSPECT_PROGRESS", "1")
    assert cli.main(["merge", str(tmp_path / "a"), str(tmp_path / "b"), "--to", str(tmp_path / "ab")]) == 0
    last = final_bar(capsys.readouterr().err, "merge")
    assert "100%" in last and "B/s" in last, last
