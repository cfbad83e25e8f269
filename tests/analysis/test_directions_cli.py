"""`hf-introspect directions` and `transfer` end to end: on the planted run (known answers) and on a
real tiny-model run (all three passes); JSON keys, files written, bad input -> one line, exit 2."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hf_introspect.analysis.directions import JSON_NAME, NPZ_NAME, load_directions
from hf_introspect.cli import main

from .conftest import PLANTED

FAST = ["--permutations", "20", "--splits", "2"]


def run_json(capsys, argv) -> dict:
    assert main(argv + ["--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_directions_planted_run(planted_run, tmp_path, capsys):
    out = tmp_path / "dirs"
    res = run_json(capsys, ["directions", str(planted_run), "--target", "mcq.entropy", "--out", str(out),
                            "--plots", str(tmp_path / "plots")] + FAST)
    assert {"run", "passes", "targets", "position", "method", "n_questions", "layers", "per_pass", "pairs",
            "self_vs_other", "layer_cosines", "layer_cosines_across", "out", "plots"} <= set(res)
    assert res["passes"] == ["mcq", "self_conf"] and res["n_questions"] == PLANTED["n"]
    planted = PLANTED["planted_layer"]
    mcq = {r["layer"]: r for r in res["per_pass"]["mcq"]}
    assert max(mcq, key=lambda k: mcq[k]["probe_score"]) == planted
    assert mcq[planted]["probe_score"] > 0.5 and mcq[planted]["meandiff_score"] > 0.5
    # self_conf's planted readout is mcq's plus noise: the same direction, far above the null there only
    pair = {r["layer"]: r for r in res["pairs"]["mcq~self_conf"]["probe"]}
    assert pair[planted]["cos"] > 0.9 > pair[planted]["null_p95"]
    assert pair[planted]["p_value"] == pytest.approx(1 / 21)
    assert all(abs(pair[k]["cos"]) < 0.6 for k in pair if k != planted)
    assert np.array(res["layer_cosines"]["mcq"]["probe"]).shape == (5, 5)
    # files: the saved stacks are what the JSON describes, loadable for the causal commands
    assert (out / NPZ_NAME).is_file() and (out / JSON_NAME).is_file()
    dirs = load_directions(out)
    assert dirs.get("mcq", "probe").shape == (PLANTED["num_layers"] + 1, PLANTED["hidden"])
    assert dirs.meta["targets"] == {"mcq": "mcq.entropy", "self_conf": "mcq.entropy"}
    assert dirs.score("mcq", "probe")[planted] == pytest.approx(mcq[planted]["probe_score"])
    assert len(res["plots"]) == 3 and all(p.endswith(".png") for p in res["plots"])


def test_directions_compare_with_itself(planted_run, tmp_path, capsys):
    res = run_json(capsys, ["directions", str(planted_run), "--passes", "mcq", "--target", "entropy", "--out",
                            str(tmp_path / "d"), "--compare_with", str(planted_run), "--layers", "1-2"] + FAST)
    assert set(res) == {"run", "compare_with", "cross_run_cosines", "n_shared_questions"}
    cos = [r["cos"] for r in res["cross_run_cosines"]["mcq"]["probe"]]
    assert cos == pytest.approx([1.0, 1.0])
    assert (tmp_path / "d" / "compare_with" / NPZ_NAME).is_file()


def test_directions_tiny_run_self_vs_other(tiny_run, tmp_path, capsys):
    res = run_json(capsys, ["directions", str(tiny_run), "--out", str(tmp_path / "d")] + FAST)
    assert res["passes"] == ["mcq", "self_conf", "other_conf"]
    assert res["targets"] == {"mcq": "entropy", "self_conf": "self_confidence", "other_conf": "other_confidence"}
    rows = res["self_vs_other"]
    assert [r["layer"] for r in rows] == [0, 1, 2]
    # layer 0 at the readout token is the embedding of the same token in every prompt: no direction
    assert rows[0]["cos_probe"] is None and res["per_pass"]["mcq"][0]["probe_score"] is None
    for r in rows[1:]:
        assert r["residual_probe"] == pytest.approx(np.sqrt(1 - r["cos_probe"] ** 2))
        assert r["flag_meandiff"] == (r["residual_meandiff"] < 0.1)
    dirs = load_directions(tmp_path / "d")
    s, o, u = (dirs.get(p, "probe")[1].astype(np.float64) for p in ("self_conf", "other_conf", "self_unique"))
    assert abs(u @ o) < 1e-5 and u @ s > 0


@pytest.mark.parametrize("extra, message", [
    (["--target", "no_such_column"], "unknown target"),
    (["--layers", "7"], "not stored"),
    (["--position", "options_end"], "options_end"),
    (["--passes", "mcq", "--target", "has_negation"], "constant"),
    (["--quantile", "0.7"], "--quantile"),
])
def test_directions_bad_input_one_line_exit_2(tiny_run, tmp_path, capsys, extra, message):
    assert main(["directions", str(tiny_run), "--out", str(tmp_path / "d")] + FAST + extra) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_directions_one_question_run(one_question_run, tmp_path, capsys):
    assert main(["directions", str(one_question_run), "--out", str(tmp_path / "d")]) == 2
    assert "at least 8" in capsys.readouterr().err


def test_transfer_planted_run(planted_run, tmp_path, capsys):
    res = run_json(capsys, ["transfer", str(planted_run), "--test", "self_conf", "--splits", "5",
                            "--plots", str(tmp_path / "p")])
    assert {"run", "train", "tests", "target", "n_questions", "n_splits", "layers", "best", "cross", "plots"} <= set(res)
    assert res["cross"] is None  # the planted run has no other_conf
    planted = PLANTED["planted_layer"]
    assert res["best"]["direct"]["layer"] == planted
    best = res["best"]["self_conf"]
    for std in ("centered", "separate"):
        assert best[std]["layer"] == planted and best[std]["ratio"] > 0.6
        assert best[std]["shuffled_ratio"] < 0.1
    row = res["layers"][planted]["transfer"]["self_conf"]
    assert {"centered", "centered_std", "separate", "separate_std", "shuffled_centered", "shuffled_separate"} == set(row)
    assert len(res["plots"]) == 1


def test_transfer_tiny_run_cross(tiny_run, capsys):
    res = run_json(capsys, ["transfer", str(tiny_run), "--splits", "2"])
    assert res["tests"] == ["self_conf", "other_conf"]
    cross = res["cross"]
    assert cross["passes"] == ["self_conf", "other_conf"] and len(cross["layers"]) == 3
    assert np.array(cross["at_best_layer"]).shape == (2, 2)


@pytest.mark.parametrize("extra, message", [
    (["--test", "mcq"], "training pass"),
    (["--test", "nope"], "no pass 'nope'"),
    (["--target", "parsed_answer"], "numeric target"),
    (["--layers", "0-9"], "not stored"),
])
def test_transfer_bad_input_one_line_exit_2(tiny_run, capsys, extra, message):
    assert main(["transfer", str(tiny_run), "--splits", "2"] + extra) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_transfer_one_question_run(one_question_run, capsys):
    assert main(["transfer", str(one_question_run)]) == 2
    assert "at least 10" in capsys.readouterr().err


def test_exported_folder_gives_the_same_numbers(tiny_run, tmp_path, capsys):
    assert main(["export", str(tiny_run), "--to", str(tmp_path / "hub")]) == 0
    capsys.readouterr()
    args = ["--layers", "1-2"] + FAST
    runs = [run_json(capsys, ["directions", str(src), "--out", str(tmp_path / f"d{i}")] + args)
            for i, src in enumerate((tiny_run, tmp_path / "hub"))]
    assert runs[1]["self_vs_other"][1]["cos_probe"] == pytest.approx(runs[0]["self_vs_other"][1]["cos_probe"], abs=1e-9)
    moved = [run_json(capsys, ["transfer", str(src), "--layers", "2", "--splits", "2"]) for src in (tiny_run, tmp_path / "hub")]
    for test in ("self_conf", "other_conf"):
        got, want = (m["layers"][0]["transfer"][test] for m in moved[::-1])
        assert got == pytest.approx(want, abs=1e-9)


def test_paired_null_keeps_the_targets_correlation(planted_run, tmp_path, capsys):
    # both passes probed for the same joined target at the planted layer, where self_conf's readout
    # is mcq's plus noise: a paired permutation gives both passes the same shuffled target on
    # similar activations, so their null directions agree far more than independent ones do (at
    # layer 1 the two passes' activations are independent and the two nulls alike)
    res = run_json(capsys, ["directions", str(planted_run), "--target", "mcq.entropy", "--out", str(tmp_path / "d"),
                            "--layers", "1-2", "--permutations", "30", "--splits", "0"])
    layer1, layer2 = res["pairs"]["mcq~self_conf"]["probe"]
    assert {"null_p95", "p_value", "null_p95_paired", "p_value_paired"} <= set(layer2)
    assert layer2["null_p95"] < 0.5 < 0.8 < layer2["null_p95_paired"]
    assert layer1["null_p95_paired"] < 0.5
