"""Session fixtures of the analysis tests: a planted synthetic run and a tiny-model run.

- ``planted_run``: :func:`hf_introspect.testing.write_planted_run` (300 questions, residual
  indices 0-4, hidden 32, every position stored): mcq ``entropy`` is a linear function of layer 2's
  readout token with population R^2 0.8; ``is_correct`` is planted at the same layer; everything
  else is noise. ``PLANTED`` holds its parameters.
- ``tiny_run``: a real collect with the tiny random model (24 questions, positions question+last,
  residual indices 0-2): the CLI end to end, positions that were (not) stored.
- ``one_question_run``: the same with a single question (analysis must refuse it in one line).
"""

from __future__ import annotations

import pytest

PLANTED = {"n": 300, "hidden": 32, "num_layers": 4, "planted_layer": 2, "r2": 0.8, "seed": 0}
TINY_QUESTIONS = 24


def make_questions(n: int):
    from datasets import Dataset, Features

    from hf_introspect.schema import question_features

    rows = [{"question_id": f"q{i:03d}",
             "question_text": "Which city is the capital" + " of it" * (i % 3) + f" ({i})?",
             "options": {"A": "Paris", "B": "Berlin", "C": "Rome", "D": "Madrid"},
             "correct_answer_letter": "ABCD"[i % 4], "question_source": "test",
             "option_source_index": [0, 1, 2, 3]} for i in range(n)]
    return Dataset.from_list(rows, features=Features(question_features()))


@pytest.fixture(scope="session")
def planted_run(tmp_path_factory):
    from datasets.utils.logging import disable_progress_bar, enable_progress_bar

    from hf_introspect.testing import write_planted_run

    disable_progress_bar()
    try:
        return write_planted_run(tmp_path_factory.mktemp("planted") / "run", **PLANTED)
    finally:
        enable_progress_bar()


def _collect(tiny_model_dir, folder, n: int):
    from hf_introspect import CollectConfig, collect

    cfg = CollectConfig(output_dir=str(folder), model=str(tiny_model_dir), batch_size=8, save_every=2,
                        max_new_tokens=0, positions="question+last")
    collect(cfg, questions=make_questions(n))
    return folder


@pytest.fixture(scope="session")
def tiny_run(tiny_model_dir, tmp_path_factory):
    return _collect(tiny_model_dir, tmp_path_factory.mktemp("tiny_run") / "run", TINY_QUESTIONS)


@pytest.fixture(scope="session")
def one_question_run(tiny_model_dir, tmp_path_factory):
    return _collect(tiny_model_dir, tmp_path_factory.mktemp("one_q") / "run", 1)
