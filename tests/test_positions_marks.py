"""`collect --positions marks`: exactly the question end, options end and readout rows are stored,
equal to those rows of an all-positions run, and the analysis reads them by name."""

from __future__ import annotations

import json

import numpy as np
import pytest
from datasets import load_from_disk

from hf_introspect.cli import main

from .test_faults import write_questions


def collect(model, qfile, out, positions):
    assert main(["collect", "--model", str(model), "--questions", str(qfile), "--output_dir", str(out),
                 "--batch_size", "4", "--save_every", "3", "--max_new_tokens", "1", "--passes", "mcq,self_conf",
                 "--positions", positions]) == 0
    return load_from_disk(str(out))


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("marks")
    qfile = write_questions(root / "q.jsonl")
    return root / "marks", collect(tiny_model_dir, qfile, root / "marks", "marks"), \
        collect(tiny_model_dir, qfile, root / "all", "all")


def test_marks_store_the_three_named_tokens_equal_to_the_all_positions_run(runs):
    _, marks, full = runs
    for split in ("mcq", "self_conf"):
        m, a = marks[split].with_format("numpy", dtype=None), full[split].with_format("numpy", dtype=None)
        for i in range(len(m)):
            qs, qe = m[i]["question_token_span"]
            expected = [qe - 1, m[i]["option_token_spans"][3][1] - 1, m[i]["seq_len"] - 1]
            assert m[i]["activation_positions"].tolist() == expected
            assert expected[0] < expected[1] < expected[2]
            for layer in ("activations_layer_00", "activations_layer_02"):
                np.testing.assert_array_equal(m[i][layer], a[i][layer][expected])


def test_probe_reads_options_end_and_question_end_from_a_marks_run(runs, capsys):
    path, _, _ = runs
    for position in ("options_end", "question_end", "answer"):
        assert main(["probe", str(path), "--target", "entropy", "--position", position, "--splits", "5",
                     "--permutations", "0", "--json"]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["position"] == position and result["n_questions"] == 24
        assert [row["layer"] for row in result["layers"]] == [0, 1, 2]
    # A token marks does not store: one line naming the --positions that would.
    assert main(["probe", str(path), "--target", "entropy", "--position", "mean:question", "--splits", "5"]) == 2
    assert "--positions" in capsys.readouterr().err.strip().splitlines()[-1]
