"""`probe` and `surface` end to end on a tiny-model run (JSON keys, plots, split folder, Hub-layout export,
--compare_with), and bad input -> one line on stderr, exit 2."""

from __future__ import annotations

import json

import pytest

from hf_introspect.cli import main

KEYS = {"target", "pass", "position", "method", "metric", "n_questions", "best_layer", "layers",
        "best_p_corrected"}  # the contract, plus the selection-corrected p of the best layer
LAYER_KEYS = {"layer", "score", "score_std", "ci_low", "ci_high", "null_p95", "p_value", "meandiff_score",
              "cos_probe_meandiff"}
FAST = ["--splits", "5", "--permutations", "5"]


def run_json(capsys, argv):
    assert main(argv + ["--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_probe_json_contract_and_plot(tiny_run, tmp_path, capsys):
    out = run_json(capsys, ["probe", str(tiny_run), "--target", "entropy", "--plots", str(tmp_path)] + FAST)
    assert set(out) == KEYS and out["pass"] == "mcq" and out["position"] == "answer" and out["metric"] == "r2"
    assert out["n_questions"] == 24 and [row["layer"] for row in out["layers"]] == [0, 1, 2]
    assert all(set(row) == LAYER_KEYS for row in out["layers"])
    # layer 0 at the readout token is the same token's embedding for every question: no score, no crash
    assert out["layers"][0]["score"] is None and out["best_layer"] in (1, 2)
    assert (tmp_path / "probe_mcq_answer_entropy.png").stat().st_size > 5000
    several = run_json(capsys, ["probe", str(tiny_run), "--target", "entropy,logit_gap", "--layers", "1-2",
                                "--position", "question_end"] + FAST)
    assert [r["target"] for r in several] == ["entropy", "logit_gap"]
    assert all(r["position"] == "question_end" and len(r["layers"]) == 2 for r in several)
    joined = run_json(capsys, ["probe", str(tiny_run), "--pass", "self_conf", "--target", "mcq.entropy",
                               "--layers", "2"] + FAST)
    assert joined["pass"] == "self_conf" and joined["target"] == "mcq.entropy"


def test_probe_reads_a_split_folder_and_an_export(tiny_run, tmp_path, capsys):
    direct = run_json(capsys, ["probe", str(tiny_run), "--target", "entropy", "--layers", "1"] + FAST)
    from_split = run_json(capsys, ["probe", str(tiny_run / "mcq"), "--target", "entropy", "--layers", "1"] + FAST)
    assert from_split["layers"] == direct["layers"]
    assert main(["export", str(tiny_run), "--to", str(tmp_path / "hub")]) == 0
    capsys.readouterr()
    exported = run_json(capsys, ["probe", str(tmp_path / "hub"), "--target", "entropy", "--layers", "1"] + FAST)
    assert exported["n_questions"] == 24
    assert exported["layers"][0]["score"] == pytest.approx(direct["layers"][0]["score"], abs=1e-6)


def test_compare_with_runs_both_on_shared_questions(tiny_run, capsys, tmp_path):
    out = run_json(capsys, ["probe", str(tiny_run), "--target", "entropy", "--layers", "1,2",
                            "--compare_with", str(tiny_run), "--plots", str(tmp_path)] + FAST)
    assert out["n_shared_questions"] == 24 and out["run"]["layers"] == out["compare_with"]["layers"]
    assert main(["probe", str(tiny_run), "--target", "entropy", "--layers", "1"] + FAST) == 0
    text = capsys.readouterr().out
    assert "best layer 1" in text and "null p95" in text


def test_surface_json(tiny_run, capsys):
    out = run_json(capsys, ["surface", str(tiny_run), "--target", "entropy", "--layers", "1"] + FAST)
    assert out["pass"] == "mcq" and "char_length" in out["features"] and len(out["layers"]) == 1
    row = out["layers"][0]
    assert row["unique"] == pytest.approx(row["both"] - out["surface"])


@pytest.mark.parametrize("argv, message", [
    (["--target", "entropyy"], "unknown target 'entropyy'"),
    (["--target", "entropy", "--layers", "7"], "layer 7 is not stored"),
    (["--target", "entropy", "--position", "options_end"], "--positions marks"),
    (["--target", "has_negation"], "constant"),
    (["--target", "entropy", "--pass", "nope"], "no pass 'nope'"),
    (["--target", "entropy", "--test_size", "1.5"], "test_size"),
])
def test_bad_input_is_one_line_exit_2(tiny_run, capsys, argv, message):
    assert main(["probe", str(tiny_run)] + argv + FAST) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("error: ")


def test_one_question_run_is_refused(one_question_run, capsys):
    assert main(["probe", str(one_question_run), "--target", "entropy"] + FAST) == 2
    err = capsys.readouterr().err
    assert "at least 5" in err and err.count("\n") == 1


def test_help_says_how_the_default_ridge_penalty_is_chosen(capsys):
    # score_splits picks the penalty by leave-one-out inside each training split (nested; tested
    # against RidgeCV per split in test_split_fits); the help once said "over all the questions"
    with pytest.raises(SystemExit):
        main(["probe", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "inside each training split" in text and "over all the questions" not in text
