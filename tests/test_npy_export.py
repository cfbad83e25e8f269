"""export --format npy: the seed's metadata.json + activations_layer_NN.npy, right-padded, bit-exact."""

from __future__ import annotations

import json

import numpy as np
import pytest
from datasets import Dataset, Features, load_from_disk

from hf_introspect import cli
from hf_introspect.collection.run import collect
from hf_introspect.config import CollectConfig
from hf_introspect.errors import UserError
from hf_introspect.runs.npy_export import export_npy
from hf_introspect.runs.publish import public_run_config
from hf_introspect.schema import question_features

SPLITS = ("mcq", "self_conf", "other_conf")
N = 9


def make_questions(n: int = N) -> Dataset:
    rows = [{"question_id": f"n{i}", "question_text": "Name the colour" + " of the sky" * (i % 4) + f" #{i}?",
             "options": {"A": "blue", "B": "red", "C": "green", "D": "grey"}, "correct_answer_letter": "ABCD"[i % 4],
             "question_source": "test", "option_source_index": [0, 1, 2, 3]} for i in range(n)]
    return Dataset.from_list(rows, features=Features(question_features()))


@pytest.fixture(scope="module")
def run(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("npy") / "run"
    collect(CollectConfig(output_dir=str(out), model=str(tiny_model_dir), batch_size=2, save_every=2, max_new_tokens=2),
            questions=make_questions())
    return out


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    to = tmp_path_factory.mktemp("npy_out") / "seed_layout"
    return to, export_npy(run, to)


def test_files_and_shapes(run, exported):
    to, report = exported
    assert sorted(p.name for p in to.iterdir()) == ["mcq", "other_conf", "run_config.json", "self_conf"]
    # the shared copy: the run's settings with local paths reduced to names (runs.publish)
    assert json.loads((to / "run_config.json").read_text()) == public_run_config(json.loads((run / "run_config.json").read_text()))
    for split in SPLITS:
        names = sorted(p.name for p in (to / split).iterdir())
        assert names == ["activations_layer_00.npy", "activations_layer_01.npy", "activations_layer_02.npy", "metadata.json"]
        ds = load_from_disk(str(run / split))
        longest = max(ds["seq_len"])
        assert report[split]["max_positions"] == longest
        arr = np.load(to / split / "activations_layer_01.npy", mmap_mode="r")
        assert arr.shape == (N, longest, 64) and arr.dtype == np.float16


def test_activations_bit_exact_and_zero_padded(run, exported):
    to, _ = exported
    for split in SPLITS:
        ds = load_from_disk(str(run / split)).with_format("numpy", dtype=None)
        for layer in ("00", "02"):
            arr = np.load(to / split / f"activations_layer_{layer}.npy", mmap_mode="r")
            for i in range(N):
                x = ds[i][f"activations_layer_{layer}"]
                n = len(x)
                assert np.array_equal(arr[i, :n].view(np.uint16), x.view(np.uint16)), (split, layer, i)
                assert not arr[i, n:].view(np.uint16).any()  # right padding is +0.0 bits
    lens = load_from_disk(str(run / "mcq"))["seq_len"]
    assert len(set(lens)) > 1  # really padded


def test_metadata_has_every_other_column_in_row_order(run, exported):
    to, _ = exported
    for split in SPLITS:
        meta = json.loads((to / split / "metadata.json").read_text())
        ds = load_from_disk(str(run / split))
        columns = [c for c in ds.column_names if not c.startswith("activations_layer_")]
        assert len(meta) == N and [m["question_id"] for m in meta] == [f"n{i}" for i in range(N)]
        assert set(meta[0]) == set(columns) | {"num_positions"}
        for i, row in enumerate(ds.select_columns(columns)):
            assert {k: meta[i][k] for k in columns} == row  # floats survive JSON exactly (repr round trip)
            assert meta[i]["num_positions"] == len(row["activation_positions"]) == row["seq_len"]
    assert "is_correct" in json.loads((to / "mcq" / "metadata.json").read_text())[0]


def test_subset_and_refusals(run, tmp_path):
    report = export_npy(run, tmp_path / "sub", passes=["self_conf"], layers=[2])
    assert list(report) == ["self_conf"]
    assert sorted(p.name for p in (tmp_path / "sub" / "self_conf").iterdir()) == ["activations_layer_02.npy", "metadata.json"]
    with pytest.raises(UserError, match="not empty"):
        export_npy(run, tmp_path / "sub")
    with pytest.raises(UserError, match="pass 'nope'"):
        export_npy(run, tmp_path / "x1", passes=["nope"])
    with pytest.raises(UserError, match="activations_layer_07 is not stored"):
        export_npy(run, tmp_path / "x2", layers=[7])


def test_cli_npy(run, tmp_path, capsys):
    assert cli.main(["export", str(run), "--format", "npy", "--to", str(tmp_path / "c"), "--passes", "mcq",
                     "--layers", "0"]) == 0
    out = capsys.readouterr().out
    assert "mcq: 9 questions, 1 layer file(s)" in out and "right-padded" in out
    assert (tmp_path / "c" / "mcq" / "activations_layer_00.npy").is_file()
    assert cli.main(["export", str(run), "--format", "npy", "--to", str(tmp_path / "d"), "--layers", "x"]) == 2
    assert capsys.readouterr().err.startswith("error: --layers x")
