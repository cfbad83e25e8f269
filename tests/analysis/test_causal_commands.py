"""The steer / ablate / patch commands end to end on a tiny run and a LoRA run: the JSON contract,
and one-line refusals (exit 2, nothing written) on bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from hf_introspect.cli import main

from .causal_helpers import collect_run

CONTRACT = {"pass", "n_questions", "strength_unit", "layers"}
LAYER_CONTRACT = {"layer", "strengths", "mean_confidence", "slope", "control_slopes", "p_value", "p_fdr"}


@pytest.fixture(scope="module")
def run(tiny_model_dir, tmp_path_factory):
    return collect_run(tiny_model_dir, tmp_path_factory.mktemp("causal_cli") / "run")


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir, tiny_lora_dir, tmp_path_factory):
    return collect_run(tiny_model_dir, tmp_path_factory.mktemp("causal_lora") / "run", lora=tiny_lora_dir)


@pytest.fixture(scope="module")
def direction(tmp_path_factory):
    path = tmp_path_factory.mktemp("dirs") / "d.npy"
    np.save(path, np.random.default_rng(0).standard_normal(64).astype(np.float32))
    return path


def _json(capsys, argv) -> dict:
    capsys.readouterr()
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("which", ["run", "lora_run"])
def test_steer_json_contract_and_plot(request, which, direction, tmp_path, capsys):
    run = request.getfixturevalue(which)
    out = _json(capsys, ["steer", str(run), "--directions", str(direction), "--layers", "1,2", "--strengths",
                         "-2,0,2", "--controls", "4", "--num_questions", "6", "--json", "--plots", str(tmp_path / "p")])
    assert set(out) == CONTRACT and out["pass"] == "self_conf" and out["n_questions"] == 6
    assert out["strength_unit"] == "mean_norm"
    assert [r["layer"] for r in out["layers"]] == [1, 2]
    for r in out["layers"]:
        assert set(r) == LAYER_CONTRACT and r["strengths"] == [-2.0, 0.0, 2.0] and len(r["control_slopes"]) == 4
        assert 0 < r["p_value"] <= 1 and r["p_fdr"] >= r["p_value"] - 1e-12
        assert all(0 <= c <= 100 for c in r["mean_confidence"])
    # strength 0 is the unedited readout: the stored mean expected confidence of those 6 questions
    from hf_introspect.analysis.data import column_values, open_run_data

    stored = column_values(open_run_data(run).split("self_conf"), "self_confidence")[:6].mean()
    assert out["layers"][0]["mean_confidence"][1] == pytest.approx(stored, abs=1e-3)
    assert (tmp_path / "p" / "steer_self_conf.png").stat().st_size > 1000


def test_lora_run_reads_out_with_its_adapter(lora_run, run, direction, capsys):
    argv = ["--directions", str(direction), "--layers", "2", "--strengths=-1,0,1", "--controls", "2", "--json"]
    with_adapter = _json(capsys, ["steer", str(lora_run), *argv])["layers"][0]["mean_confidence"]
    base = _json(capsys, ["steer", str(run), *argv])["layers"][0]["mean_confidence"]
    assert abs(with_adapter[1] - base[1]) > 1e-3  # the adapter changes the readout


def test_mcq_pass_reads_the_chosen_letter(run, direction, capsys):
    out = _json(capsys, ["steer", str(run), "--pass", "mcq", "--directions", str(direction), "--layers", "2",
                         "--strengths", "0,1", "--controls", "2", "--json"])
    from hf_introspect.analysis.data import column_values, open_run_data

    probs = column_values(open_run_data(run).split("mcq"), "probs")[:12]
    assert out["layers"][0]["mean_confidence"][0] == pytest.approx(100 * probs.max(axis=1).mean(), abs=1e-3)


def test_ablate_and_patch_commands(run, lora_run, direction, tmp_path, capsys):
    out = _json(capsys, ["ablate", str(run), "--directions", str(direction), "--layers", "0,2", "--controls", "3", "--json"])
    assert [r["layer"] for r in out["layers"]] == [0, 2] and len(out["layers"][0]["control_delta_corrs"]) == 3
    out = _json(capsys, ["patch", str(lora_run), "--layers", "1,2", "--controls", "3", "--json", "--plots", str(tmp_path)])
    assert out["source_pass"] == "mcq" and out["target_pass"] == "self_conf" and out["n_pairs"] == 6
    assert all(len(r["interval"]) == 2 and len(r["null_shifts"]) == 3 for r in out["layers"])
    assert (tmp_path / "patch_mcq_to_self_conf.png").is_file()


def _refused(capsys, argv, tmp_path, needle):
    plots = tmp_path / "plots"
    capsys.readouterr()
    assert main([*argv, "--plots", str(plots)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after transformers' weight-loading bar, if any
    assert err.startswith("error: ") and needle in err, err
    assert not plots.exists()  # nothing written


def test_bad_input_is_refused_in_one_line(run, direction, tmp_path, capsys):
    base = ["steer", str(run), "--layers", "1"]
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.ones(10, np.float32))
    _refused(capsys, [*base, "--directions", str(wrong)], tmp_path, "hidden size 10")
    rows = tmp_path / "rows.npy"
    np.save(rows, np.ones((7, 64), np.float32))
    _refused(capsys, [*base, "--directions", str(rows)], tmp_path, "7 rows")
    _refused(capsys, ["steer", str(run), "--layers", "3", "--directions", str(direction)], tmp_path, "outside the model")
    _refused(capsys, ["patch", str(run), "--layers", "5"], tmp_path, "outside the model")
    _refused(capsys, [*base, "--directions", str(direction), "--strengths", "1,two"], tmp_path, "not a comma-separated list")
    _refused(capsys, [*base, "--directions", str(tmp_path / "none.npy")], tmp_path, "no such directions file")


def test_a_run_whose_model_is_gone_or_changed_is_refused(tiny_model_dir, direction, tmp_path, capsys):
    from hf_introspect.testing import save_tiny_model

    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    run = collect_run(model, tmp_path / "run", n=8)
    argv = ["steer", str(run), "--layers", "1", "--directions", str(direction), "--controls", "1"]
    other = save_tiny_model(tmp_path / "other", seed=5)  # same shapes, other weights
    _refused(capsys, [*argv, "--model", str(other)], tmp_path, "fingerprint")
    shutil.rmtree(model)
    _refused(capsys, argv, tmp_path, "cannot be found")
    shutil.copytree(tiny_model_dir, tmp_path / "moved")
    capsys.readouterr()
    assert main([*argv, "--model", str(tmp_path / "moved"), "--json"]) == 0  # pointed to it: same fingerprint


def test_directions_written_by_the_directions_command(run, tmp_path, capsys):
    from hf_introspect.analysis.directions import DirectionSet, save_directions

    rng = np.random.default_rng(1)
    rows = rng.standard_normal((3, 64)).astype(np.float32)
    rows[0] = np.nan  # layer 0 not computed
    save_directions(tmp_path / "dirs", DirectionSet({("self_conf", "meandiff"): rows, ("mcq", "probe"): -rows}))
    argv = ["steer", str(run), "--directions", str(tmp_path / "dirs"), "--layers", "2", "--strengths=-1,0,1",
            "--controls", "2", "--json"]
    a = _json(capsys, [*argv, "--direction_pass", "self_conf"])["layers"][0]
    b = _json(capsys, [*argv, "--direction_pass", "mcq"])["layers"][0]
    assert a["slope"] == pytest.approx(-b["slope"], rel=1e-3, abs=1e-4)  # the opposite direction
    _refused(capsys, argv, tmp_path, "pick one")  # two entries and none chosen
    _refused(capsys, [*argv[:4], "--layers", "0", *argv[6:], "--direction_pass", "self_conf"], tmp_path,
             "no direction for layer 0")
