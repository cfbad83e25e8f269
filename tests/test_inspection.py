"""The seed's inspection commands on a base vs LoRA pair of tiny-model runs; numbers are checked
against a recomputation straight from the saved datasets."""

from __future__ import annotations

import json
import math
import shutil
import sys

import numpy as np
import pytest
from datasets import Dataset, Features, load_from_disk

from hf_introspect.analysis.inspect import metrics as M
from hf_introspect.collection.run import collect
from hf_introspect.commands.inspect import main
from hf_introspect.config import CollectConfig
from hf_introspect.schema import question_features

N = 16
CAPITALS = ["Paris", "Berlin", "Rome", "Madrid", "London", "Vienna", "Lisbon", "Oslo"]


def questions(n: int = N) -> Dataset:
    rows = []
    for i in range(n):
        opts = [CAPITALS[(i + k) % len(CAPITALS)] for k in range(4)]
        rows.append({"question_id": f"q{i:03d}",
                     "question_text": ["What is the capital of", "Which city is the seat of", "Who governs from"][i % 3]
                     + f" country number {i}" + "?" * (1 + i % 2),
                     "options": dict(zip("ABCD", opts)), "correct_answer_letter": "ABCD"[(i * 7) % 4],
                     "question_source": "test", "option_source_index": [0, 1, 2, 3]})
    return Dataset.from_list(rows, features=Features(question_features()))


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tiny_lora_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("inspect")
    qs = questions()
    common = dict(model=str(tiny_model_dir), batch_size=4, max_new_tokens=2)
    collect(CollectConfig(output_dir=str(out / "base"), **common), questions=qs)
    collect(CollectConfig(output_dir=str(out / "ft"), model_type="finetuned", lora_checkpoint=str(tiny_lora_dir),
                          **common), questions=qs)
    return out


def run_main(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def meta(run_dir, split="mcq"):
    ds = load_from_disk(str(run_dir / split))
    cols = [c for c in ds.column_names if not c.startswith("activations_layer_") and c != "input_ids"]
    return ds.select_columns(cols).with_format("numpy", dtype=None)[:]


def wilson(k, n, z=1.959964):
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def test_seed_single_run_command(runs, capsys):
    rc, out, err = run_main(capsys, "--data_dir", runs / "base" / "mcq", "--show_examples", 3)
    assert rc == 0, err
    m = meta(runs / "base")
    k = int(m["is_correct"].sum())
    lo, hi = wilson(k, N)
    assert f"accuracy {100 * k / N:.1f}% ({k}/{N}), 95% CI [{100 * lo:.1f}%, {100 * hi:.1f}%]" in out
    parsed = [str(x) for x in m["parsed_answer"]]
    row = out.split("parsed answer", 1)[1].split("\n")[0].split()
    assert [int(x) for x in row[:4]] == [parsed.count(letter) for letter in "ABCD"]
    assert f"{np.mean(m['entropy']):.3f}" in out
    assert "model          tiny" in out and "none (checkpoint_id base)" in out
    assert "layers         0-2 (3 of 3 residual-stream indices" in out
    # three examples, in row order, with their activation shapes
    assert out.count("--- example") == 3
    for i in range(3):
        assert f"example {i + 1} of 3: {m['question_id'][i]}" in out
    assert f"3 layers x ({int(m['seq_len'][0])}, 64) float16" in out
    self_conf = meta(runs / "base", "self_conf")
    assert f"confidence {self_conf['self_confidence'][0]:.1f}" in out


def test_json_matches_recomputation(runs, capsys):
    rc, out, _ = run_main(capsys, "--data_dir", runs / "base", "--json", "--show_examples", 1)
    assert rc == 0
    r = json.loads(out)
    m, s, o = meta(runs / "base"), meta(runs / "base", "self_conf"), meta(runs / "base", "other_conf")
    correct = m["is_correct"].astype(bool)
    assert r["behaviour"]["correct"] == int(correct.sum())
    assert r["behaviour"]["accuracy_ci95"] == pytest.approx(list(wilson(int(correct.sum()), N)), abs=1e-6)
    # passes are in question order here; make sure of it before comparing element-wise
    assert (s["question_id"] == m["question_id"]).all() and (o["question_id"] == m["question_id"]).all()
    conf = s["self_confidence"].astype(np.float64) / 100
    cal = r["calibration"]
    assert cal["brier"] == pytest.approx(np.mean((conf - correct) ** 2))
    from scipy.stats import spearmanr
    from sklearn.metrics import roc_auc_score

    if correct.any() and not correct.all():
        assert cal["auroc_self_confidence"] == pytest.approx(roc_auc_score(correct, conf))
        assert cal["auroc_neg_entropy"] == pytest.approx(roc_auc_score(correct, -m["entropy"]))
    assert cal["spearman"]["self_vs_other"]["rho"] == pytest.approx(
        spearmanr(s["self_confidence"], o["other_confidence"]).statistic)
    edges = np.linspace(0, 1, 11)
    idx = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, 9)
    ece10 = sum(abs(correct[idx == b].mean() - conf[idx == b].mean()) * (idx == b).mean()
                for b in range(10) if (idx == b).any())
    assert cal["ece_10_bins"] == pytest.approx(ece10)
    assert sum(r["confidence"]["self_conf"]["argmax_bins"].values()) == N
    ex = r["examples"][0]
    assert ex["question_id"] == m["question_id"][0]
    assert ex["readouts"]["mcq"]["probs"]["A"] == pytest.approx(float(m["probs"][0][0]))
    assert r["run"]["questions_per_pass"] == {"mcq": N, "self_conf": N, "other_conf": N}
    assert r["activations"]["layers"] == [0, 1, 2] and sum(r["activations"]["nonfinite"]) == 0


def test_seed_compare_command(runs, capsys):
    rc, out, err = run_main(capsys, "--data_dir", runs / "base" / "mcq", "--compare_with", runs / "ft" / "mcq",
                            "--show_examples", 5)
    assert rc == 0, err
    a, b = meta(runs / "base"), meta(runs / "ft")
    ca, cb = a["is_correct"].astype(bool), b["is_correct"].astype(bool)
    only_a, only_b = int((ca & ~cb).sum()), int((~ca & cb).sum())
    assert f"only A right {only_a}, only B right {only_b}, p = " in out
    assert f"{100 * ca.mean():.1f}%" in out and f"{100 * cb.mean():.1f}%" in out
    assert "A = base, B = ckpt_step_1280" in out
    agree = (a["parsed_answer"] == b["parsed_answer"]).mean()
    assert f"same parsed answer on {100 * agree:.1f}%" in out
    assert min(5, N) == out.count("--- example")
    assert "B mcq" in out and "A self" in out


def test_compare_json_layer_similarity_matches_numpy(runs, capsys):
    rc, out, _ = run_main(capsys, "--data_dir", runs / "base", "--compare_with", runs / "ft", "--json")
    assert rc == 0
    r = json.loads(out)
    sim = r["layer_similarity"]["mcq"]
    assert sim["layers"] == [0, 1, 2] and sim["n"] == N
    for layer in (0, 2):
        col = f"activations_layer_{layer:02d}"
        xa = load_from_disk(str(runs / "base" / "mcq")).select_columns([col]).with_format("numpy", dtype=None)[col]
        xb = load_from_disk(str(runs / "ft" / "mcq")).select_columns([col]).with_format("numpy", dtype=None)[col]
        assert xa[0].dtype == np.float16
        va = np.stack([x[-1] for x in xa]).astype(np.float64)
        vb = np.stack([x[-1] for x in xb]).astype(np.float64)
        cos = (va * vb).sum(1) / np.linalg.norm(va, axis=1) / np.linalg.norm(vb, axis=1)
        assert sim["mean"][layer] == pytest.approx(cos.mean(), abs=1e-9)
    assert sim["mean"][0] == pytest.approx(1.0)  # LoRA leaves the embeddings alone
    assert sim["mean"][2] < 0.999
    m = r["mcq"]
    a, b = meta(runs / "base"), meta(runs / "ft")
    ca, cb = a["is_correct"].astype(bool), b["is_correct"].astype(bool)
    assert m["mcnemar"] == M.mcnemar(int((ca & ~cb).sum()), int((~ca & cb).sum()))
    assert m["flips"]["lost"] + m["flips"]["gained"] == int((ca != cb).sum())
    shift = r["shifts"]["self_confidence"]
    sa, sb = meta(runs / "base", "self_conf"), meta(runs / "ft", "self_conf")
    assert shift["mean_diff"] == pytest.approx(float(np.mean(sb["self_confidence"].astype(np.float64)
                                                             - sa["self_confidence"])), abs=1e-5)
    assert set(r["calibration"]["a"]) >= {"ece_native_bins", "ece_10_bins", "brier", "auroc_self_confidence"}


def test_plots_written(runs, capsys, tmp_path):
    rc, out, err = run_main(capsys, "--data_dir", runs / "base" / "mcq", "--compare_with", runs / "ft" / "mcq",
                            "--plots", tmp_path / "plots")
    assert rc == 0, err
    names = {"reliability.png", "confidence_bins.png", "entropy_vs_confidence.png", "layer_similarity.png"}
    assert {p.name for p in (tmp_path / "plots").iterdir()} == names
    for name in names:
        data = (tmp_path / "plots" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
        assert str(tmp_path / "plots" / name) in out
    rc, _, err = run_main(capsys, "--data_dir", runs / "base", "--plots", tmp_path / "one")
    assert rc == 0, err
    assert {p.name for p in (tmp_path / "one").iterdir()} == names - {"layer_similarity.png"}


def test_other_pass_and_root_folder(runs, capsys):
    rc, out, _ = run_main(capsys, "--data_dir", runs / "base" / "self_conf", "--show_examples", 1)
    assert rc == 0
    assert "(row 0 of self_conf)" in out and "== MCQ behaviour" in out  # siblings are still read
    rc, out2, _ = run_main(capsys, "--data_dir", runs / "base", "--split", "other_conf", "--show_examples", 1)
    assert rc == 0 and "(row 0 of other_conf)" in out2


@pytest.fixture(scope="module")
def altered(runs, tmp_path_factory):
    """Standalone split folders (no run_config.json): disjoint question ids, and disjoint layers."""
    out = tmp_path_factory.mktemp("altered")
    ds = load_from_disk(str(runs / "base" / "mcq"))
    ds.map(lambda r: {"question_id": "other-" + r["question_id"]}).save_to_disk(str(out / "disjoint" / "mcq"))
    ds.remove_columns(["activations_layer_00", "activations_layer_01"]).save_to_disk(str(out / "top" / "mcq"))
    ds.remove_columns(["activations_layer_01", "activations_layer_02"]).save_to_disk(str(out / "bottom" / "mcq"))
    return out


def test_disjoint_runs_are_a_user_error(runs, altered, capsys):
    rc, out, err = run_main(capsys, "--data_dir", runs / "base" / "mcq", "--compare_with", altered / "disjoint" / "mcq")
    assert rc == 2 and out == ""
    assert err.startswith("error: the runs share no questions") and err.count("\n") == 1
    rc, _, err = run_main(capsys, "--data_dir", altered / "top" / "mcq", "--compare_with", altered / "bottom" / "mcq")
    assert rc == 2 and "share no stored layer (2 vs 0)" in err


def test_standalone_split_folder(altered, capsys):
    rc, out, err = run_main(capsys, "--data_dir", altered / "top" / "mcq", "--show_examples", 1)
    assert rc == 0, err
    assert "layers         2 (1 columns" in out and "1 layers x" in out
    assert "== confidence" not in out  # no sibling passes to join


def test_bad_locations(runs, tmp_path, capsys):
    rc, _, err = run_main(capsys, "--data_dir", tmp_path / "nope")
    assert rc == 2 and "does not exist" in err
    rc, _, err = run_main(capsys, "--data_dir", runs / "base", "--config", "tiny")
    assert rc == 2 and "drop --config" in err
    unfinished = tmp_path / "unfinished"
    (unfinished / "mcq").mkdir(parents=True)
    shutil.copy(runs / "base" / "run_config.json", unfinished / "run_config.json")
    rc, _, err = run_main(capsys, "--data_dir", unfinished / "mcq")
    assert rc == 2 and "unfinished" in err
    rc, _, err = run_main(capsys, "--data_dir", unfinished)
    assert rc == 2 and "no finished pass" in err and "rerun the same collect command" in err
    rc, _, err = run_main(capsys, "--data_dir", runs / "base", "--show_examples", "-1")
    assert rc == 2 and "--show_examples" in err


def test_missing_analysis_packages(runs, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "scipy", None)
    rc, _, err = run_main(capsys, "--data_dir", runs / "base")
    assert rc == 2 and "pip install hf_introspect[analysis]" in err


def test_exported_folder_with_config(runs, tmp_path, capsys):
    from hf_introspect.cli import main as cli_main

    for name in ("base", "ft"):
        assert cli_main(["export", str(runs / name), "--to", str(tmp_path / "exp")]) == 0
    capsys.readouterr()
    configs = sorted(p.name for p in (tmp_path / "exp").iterdir() if p.is_dir())
    assert len(configs) == 2
    rc, out, err = run_main(capsys, "--data_dir", tmp_path / "exp", "--json")
    assert rc == 2 and "--config" in err  # two configs: say which
    rc, out, err = run_main(capsys, "--data_dir", tmp_path / "exp", "--config", configs[0], "--compare_with",
                            tmp_path / "exp", "--compare_config", configs[1], "--json")
    assert rc == 0, err
    r = json.loads(out)
    assert r["mcq"]["n"] == N and r["layer_similarity"]["mcq"]["layers"] == [0, 1, 2]
    a = meta(runs / "base") if r["runs"][0]["checkpoint_id"] == "base" else meta(runs / "ft")
    assert r["mcq"]["a"]["correct"] == int(a["is_correct"].sum())
