"""load_run and layer_matrix: float16 kept, bit-exact rows, every position mode, errors in one line."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from datasets import Dataset, Features, load_from_disk

import hf_introspect
from hf_introspect.collection.run import collect
from hf_introspect.config import CollectConfig
from hf_introspect.errors import UserError
from hf_introspect.runs.read import layer_matrix, load_run, open_run
from hf_introspect.schema import layer_column, question_features

N = 11  # save_every=1 x batch 3 -> 4 shards, the last one short: layer_matrix crosses chunk borders


def make_questions(n: int = N, start: int = 0) -> Dataset:
    rows = [{"question_id": f"q{i:03d}", "question_text": "Which city is the capital" + " of it" * (i % 3) + f" ({i})?",
             "options": {"A": "Paris", "B": "Berlin", "C": "Rome", "D": "Madrid"}, "correct_answer_letter": "ABCD"[i % 4],
             "question_source": "test", "option_source_index": [0, 1, 2, 3]} for i in range(start, start + n)]
    return Dataset.from_list(rows, features=Features(question_features()))


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("loading")
    made = {}
    for name, kw in {"all": {}, "question": {"positions": "question", "layers": "0,2"}}.items():
        cfg = CollectConfig(output_dir=str(root / name), model=str(tiny_model_dir), batch_size=3, save_every=1,
                            max_new_tokens=0, **kw)
        collect(cfg, questions=make_questions())
        made[name] = root / name
    return made


def per_row(ds, column, index_of):
    """Reference: decode every row in Python and take one stored position."""
    rows = ds.with_format("numpy", dtype=None)
    return np.stack([r[column][index_of(r)] for r in rows])


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype == np.float16 and a.shape == b.shape and np.array_equal(a.view(np.uint16), b.view(np.uint16))


def test_load_run_keeps_float16_from_run_and_split_folders(runs):
    for target in (runs["all"], runs["all"] / "self_conf"):
        ds = load_run(target, split="self_conf")
        assert len(ds) == N and ds.format["type"] == "numpy"
        x = ds[0]["activations_layer_02"]
        assert x.dtype == np.float16 and x.shape == (ds[0]["seq_len"], 64)
        ref = load_from_disk(str(runs["all"] / "self_conf"))[0]["activations_layer_02"]
        assert same_bits(x, np.asarray(ref, dtype=np.float16))
    assert hf_introspect.load_run is load_run and hf_introspect.layer_matrix is layer_matrix


@pytest.mark.parametrize("split", ["mcq", "other_conf"])
def test_layer_matrix_matches_per_row_decoding(runs, split):
    ds = load_run(runs["all"], split=split)
    readout = "answer_token_index" if split == "mcq" else "confidence_token_index"
    cases = {
        "last": lambda r: -1,
        0: lambda r: 0,
        5: lambda r: 5,
        -3: lambda r: -3,
        "answer": lambda r: int(np.flatnonzero(r["activation_positions"] == r[readout])[0]),
    }
    for position, index_of in cases.items():
        for layer in (0, 2):
            got = layer_matrix(ds, layer, position)
            assert same_bits(got, per_row(ds, layer_column(layer), index_of)), (position, layer)
    # with positions=all, the readout token is the last stored row
    assert same_bits(layer_matrix(ds, 1, "answer"), layer_matrix(ds, 1, "last"))


def test_layer_accepts_int_digits_and_column_name(runs):
    ds = load_run(runs["all"], split="mcq")
    a = layer_matrix(ds, 1)
    assert same_bits(a, layer_matrix(ds, "1")) and same_bits(a, layer_matrix(ds, "activations_layer_01"))
    assert same_bits(a, layer_matrix(ds, np.int64(1)))
    assert same_bits(layer_matrix(ds, 1, "-1"), a)


def test_views_keep_their_row_order(runs):
    ds = load_run(runs["all"], split="mcq")
    full = layer_matrix(ds, 2)
    order = [7, 0, 10, 3, 3, 5]
    assert same_bits(layer_matrix(ds.select(order), 2), full[order])
    shuffled = ds.shuffle(seed=3)
    ids = list(ds["question_id"])
    perm = [ids.index(q) for q in shuffled["question_id"]]
    assert same_bits(layer_matrix(shuffled, 2), full[perm])
    plain = load_from_disk(str(runs["all"] / "mcq"))  # unformatted datasets work too
    assert same_bits(layer_matrix(plain, 2), full)


def test_rows_reads_a_subset_in_the_views_order(runs):
    ds = load_run(runs["all"], split="mcq")
    order = [7, 0, 10, 3, 3, 5]
    for position in ("last", "answer", 2, np.arange(len(ds)) % 3):
        full = layer_matrix(ds, 2, position)
        assert same_bits(layer_matrix(ds, 2, position, rows=order), full[order]), position
    shuffled = ds.shuffle(seed=3)
    assert same_bits(layer_matrix(shuffled, 1, rows=[4, 1]), layer_matrix(shuffled, 1)[[4, 1]])
    assert layer_matrix(ds, 1, rows=[]).shape == (0, 64)


def test_question_positions_run(runs):
    ds = load_run(runs["question"], split="mcq")
    spans = ds["question_token_span"]
    assert all(list(p) == list(range(s[0], s[1])) for p, s in zip(ds["activation_positions"], spans))
    last_q = layer_matrix(ds, 2)  # last stored row = last question token
    assert same_bits(last_q, per_row(ds, "activations_layer_02", lambda r: -1))
    assert same_bits(layer_matrix(ds, 2, 1), per_row(ds, "activations_layer_02", lambda r: 1))
    # the same prompt tokens as in the all-positions run (same batches, so the same values)
    full = load_run(runs["all"], split="mcq")
    ref = np.stack([r["activations_layer_02"][s[1] - 1] for r, s in zip(full, spans)])
    assert same_bits(last_q, ref)


def test_unstored_positions_and_layers_are_refused(runs):
    question = load_run(runs["question"], split="mcq")
    with pytest.raises(UserError, match="not among the .* stored positions"):
        layer_matrix(question, 2, 500)
    with pytest.raises(UserError, match="stored positions"):
        layer_matrix(question, 0, "answer")  # the readout token was not kept
    with pytest.raises(UserError, match=r"stored layer indices: \[0, 2\]"):
        layer_matrix(question, 1)
    with pytest.raises(UserError, match="position must be"):
        layer_matrix(question, 0, "first")
    with pytest.raises(UserError, match="one split"):
        layer_matrix(load_from_disk(str(runs["all"])), 0)


def test_load_run_errors_are_one_line(runs, tmp_path):
    cases = [
        (tmp_path / "missing", "no such folder"),
        ("someone/some-repo", "HF_HUB_OFFLINE"),  # conftest switches the Hub off
    ]
    unfinished = tmp_path / "unfinished"
    shutil.copytree(runs["question"], unfinished)
    (unfinished / "dataset_dict.json").unlink()
    cases.append((unfinished, "unfinished run"))
    empty = tmp_path / "empty"
    empty.mkdir()
    cases.append((empty, "neither a run folder"))
    for target, message in cases:
        with pytest.raises(UserError, match=message) as err:
            load_run(target)
        assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="no split 'nope'"):
        load_run(runs["question"], split="nope")


def test_open_run_lists_shards_in_order(runs):
    run = open_run(runs["all"])
    assert list(run.splits) == ["mcq", "self_conf", "other_conf"]
    mcq = run.splits["mcq"]
    assert [f.name for f in mcq.files] == [f"data-0000{i}-of-00004.arrow" for i in range(4)]
    assert mcq.num_rows == N and mcq.layer_columns == [layer_column(i) for i in range(3)]
