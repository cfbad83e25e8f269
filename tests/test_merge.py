"""merge: disjoint question subsets of one model+settings -> one valid run; everything else refused."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from datasets import Dataset, Features, load_from_disk

from hf_introspect import cli
from hf_introspect.collection.run import collect
from hf_introspect.config import CollectConfig
from hf_introspect.errors import UserError
from hf_introspect.runs.hub import export_hub_layout
from hf_introspect.runs.read import layer_matrix, load_run
from hf_introspect.runs.merge import merge_runs
from hf_introspect.models.load import load_model
from hf_introspect.schema import question_features

SPLITS = ("mcq", "self_conf", "other_conf")


def make_questions(ids) -> Dataset:
    rows = [{"question_id": f"m{i:02d}", "question_text": f"What is {i} plus {i}" + "?" * (1 + i % 2),
             "options": {"A": str(2 * i), "B": str(i), "C": str(3 * i), "D": "0"}, "correct_answer_letter": "A",
             "question_source": "arith" if i % 2 else "test", "option_source_index": [0, 1, 2, 3]} for i in ids]
    return Dataset.from_list(rows, features=Features(question_features()))


@pytest.fixture(scope="module")
def parts(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("merge")
    lm = load_model(str(tiny_model_dir))
    out = {}
    # Different batch sizes / shard sizes on purpose: layout settings may differ between parts.
    for name, ids, kw in (("a", range(0, 5), {"batch_size": 2}), ("b", range(5, 11), {"batch_size": 3})):
        cfg = CollectConfig(output_dir=str(root / name), model=str(tiny_model_dir), save_every=1, max_new_tokens=1,
                            layers="0,2", **kw)
        collect(cfg, lm=lm, questions=make_questions(ids))
        out[name] = root / name
    return out


@pytest.fixture(scope="module")
def merged(parts, tmp_path_factory):
    to = tmp_path_factory.mktemp("merged") / "ab"
    merge_runs([parts["a"], parts["b"]], to)
    return to


def test_merged_run_is_the_concatenation(parts, merged):
    dd = load_from_disk(str(merged))
    assert list(dd) == list(SPLITS)
    for split in SPLITS:
        a, b = (load_from_disk(str(parts[p] / split)) for p in "ab")
        m = dd[split]
        assert list(m["question_id"]) == [f"m{i:02d}" for i in range(11)]
        assert m.features == a.features
        for col in ("prompt_text", "logits", "entropy", "parsed_answer", "activation_positions"):
            assert list(m[col]) == list(a[col]) + list(b[col]), col
        for layer in (0, 2):
            want = np.concatenate([layer_matrix(a, layer, "answer"), layer_matrix(b, layer, "answer")])
            assert np.array_equal(layer_matrix(m, layer, "answer").view(np.uint16), want.view(np.uint16))
        mm = m.with_format("numpy", dtype=None)
        bb = b.with_format("numpy", dtype=None)
        assert np.array_equal(mm[7]["activations_layer_02"].view(np.uint16), bb[2]["activations_layer_02"].view(np.uint16))


def test_merged_run_config_and_hardlinks(parts, merged):
    cfg = json.loads((merged / "run_config.json").read_text())
    a = json.loads((parts["a"] / "run_config.json").read_text())
    b = json.loads((parts["b"] / "run_config.json").read_text())
    assert cfg["num_questions"] == 11 and cfg["question_sources"] == ["arith", "test"]
    assert [m["run_id"] for m in cfg["merged_from"]] == [a["run_id"], b["run_id"]]
    assert [m["num_questions"] for m in cfg["merged_from"]] == [5, 6]
    assert cfg["run_id"] not in (a["run_id"], b["run_id"])
    assert cfg["identity"]["question_ids_hash"] != a["identity"]["question_ids_hash"]
    assert cfg["layers_stored"] == [0, 2] and cfg["model_name"] == a["model_name"]
    shards = sorted((merged / "mcq").glob("data-*.arrow"))
    sources = sorted((parts["a"] / "mcq").glob("data-*.arrow")) + sorted((parts["b"] / "mcq").glob("data-*.arrow"))
    assert [p.name for p in shards] == [f"data-{i:05d}-of-{len(sources):05d}.arrow" for i in range(len(sources))]
    assert [p.stat().st_ino for p in shards] == [p.stat().st_ino for p in sources]  # hard links, no copy


def test_merged_run_loads_exports_and_merges_again(parts, merged, tmp_path, tiny_model_dir):
    ds = load_run(merged, split="other_conf")
    assert len(ds) == 11 and ds[10]["activations_layer_02"].dtype == np.float16
    report = export_hub_layout(merged, tmp_path / "hub")
    assert report.splits["mcq"].num_rows == 11
    assert "merged from 2 runs" in (tmp_path / "hub" / "README.md").read_text()
    c = tmp_path / "c"
    collect(CollectConfig(output_dir=str(c), model=str(tiny_model_dir), save_every=1, max_new_tokens=1, layers="0,2",
                          batch_size=4), questions=make_questions([11, 12]))
    again = merge_runs([merged, c], tmp_path / "abc", copy_files=True)
    assert again.splits["mcq"].num_rows == 13
    copied = sorted((tmp_path / "abc" / "mcq").glob("*.arrow"))[0]
    assert copied.stat().st_ino != sorted((parts["a"] / "mcq").glob("*.arrow"))[0].stat().st_ino


def _variant(src, dst, edit):
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "run_config.json").read_text())
    edit(cfg)
    (dst / "run_config.json").write_text(json.dumps(cfg))
    return dst


def test_refusals_are_one_line(parts, tmp_path):
    def refused(runs, match, to=None):
        with pytest.raises(UserError, match=match) as err:
            merge_runs(runs, to or tmp_path / "out")
        assert "\n" not in str(err.value)
        assert not (tmp_path / "out").exists()  # nothing half-written

    refused([parts["a"], parts["a"]], "is one of the runs|question id 'm00' is in both")
    overlap = _variant(parts["a"], tmp_path / "a_copy", lambda c: None)
    refused([parts["a"], overlap], "question id 'm00' is in both")
    refused([parts["a"], _variant(parts["b"], tmp_path / "b_layers", lambda c: c["identity"]["config"].update(layers="0,1"))],
            r"other settings .*config\.layers")
    refused([parts["a"], _variant(parts["b"], tmp_path / "b_tok", lambda c: c["identity"]["config"].update(max_new_tokens=5))],
            r"config\.max_new_tokens")
    refused([parts["a"], _variant(parts["b"], tmp_path / "b_model",
                                  lambda c: c["identity"]["model"].update(model_fingerprint="0123"))],
            r"model\.model_fingerprint")
    refused([parts["a"], _variant(parts["b"], tmp_path / "b_tpl",
                                  lambda c: c["identity"]["templates"].update(mcq="Answer: {question}"))],
            r"templates\.mcq")
    refused([parts["a"]], "at least two runs")
    nonempty = tmp_path / "full"
    nonempty.mkdir()
    (nonempty / "x").write_text("x")
    refused([parts["a"], parts["b"]], "not empty", to=nonempty)


def test_paths_and_selection_may_differ(parts, tmp_path):
    moved = _variant(parts["b"], tmp_path / "b_moved", lambda c: (
        c["identity"]["config"].update(model="/elsewhere/tiny", questions="other.jsonl", num_questions=6, seed=3),
        c["identity"]["model"].update(model="/elsewhere/tiny")))
    run = merge_runs([parts["a"], moved], tmp_path / "ok")
    assert run.splits["self_conf"].num_rows == 11


def test_cli_merge(parts, tmp_path, capsys):
    assert cli.main(["merge", str(parts["b"]), str(parts["a"]), "--to", str(tmp_path / "ba")]) == 0
    assert "merged 2 runs" in capsys.readouterr().out
    assert list(load_from_disk(str(tmp_path / "ba" / "mcq"))["question_id"])[:6] == [f"m{i:02d}" for i in range(5, 11)]
    assert cli.main(["merge", str(parts["a"]), str(parts["a"]), "--to", str(tmp_path / "aa")]) == 2
    assert capsys.readouterr().err.startswith("error: question id")
