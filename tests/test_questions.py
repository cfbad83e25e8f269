"""load_questions: local files, forms, validation messages, option rules, selection, built-in bank."""

from __future__ import annotations

import csv
import json
import logging
import sys
import types
from pathlib import Path

import datasets
import pytest

from hf_introspect.errors import UserError
from hf_introspect.questions.sources import (
    QUESTION_FEATURES,
    load_questions,
    load_questions_with_report,
    parse_question_columns,
)

TRIVIAMC = Path(__file__).resolve().parents[2] / "shared" / "data" / "TriviaMC.jsonl"
needs_triviamc = pytest.mark.skipif(not TRIVIAMC.is_file(), reason=f"TriviaMC data not found at {TRIVIAMC}")


def normalised(i, **overrides):
    record = {"question_id": f"q{i}", "question_text": f"Question {i}?",
              "options": {"A": f"a{i}", "B": f"b{i}", "C": f"c{i}", "D": f"d{i}"}, "correct_answer_letter": "B"}
    record.update(overrides)
    return record


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def user_error(fn, *args, **kwargs) -> str:
    """Run and return the UserError message, asserting it is one line."""
    with pytest.raises(UserError) as err:
        fn(*args, **kwargs)
    message = str(err.value)
    assert "\n" not in message, message
    return message


# --------------------------------------------------------------------------------------------
# TriviaMC (the real file)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def triviamc_source():
    return [json.loads(line) for line in TRIVIAMC.read_text().splitlines()]


@needs_triviamc
def test_triviamc_loads_with_counts_and_shuffled_options(triviamc_source, caplog):
    with caplog.at_level(logging.WARNING, logger="hf_introspect"):
        ds, report = load_questions_with_report(str(TRIVIAMC), seed=0)
    assert ds.features == QUESTION_FEATURES
    assert report.form == "triviamc" and report.rows == 2416
    # One row repeats a distractor ("grandson"/"Grandson"), leaving 3 distinct options: skipped.
    assert report.usable == len(ds) == 2415
    assert report.skipped == {"fewer than 4 options left after dropping duplicates/blanks": 1}
    assert report.skipped_ids == {"fewer than 4 options left after dropping duplicates/blanks": ["triviamc_1289"]}
    assert "skipped 1 of 2416 questions from file:TriviaMC.jsonl" in caplog.text
    assert ds.info.description == report.summary()

    by_id = {r["question_id"]: r for r in ds}
    assert len(by_id) == len(ds)
    source = {r["qid"]: r for r in triviamc_source}
    for qid in ("triviamc_0", "triviamc_1", "triviamc_2", "triviamc_10"):
        rec, src = by_id[qid], source[qid]
        assert rec["question_text"] == src["question"]
        assert rec["options"][rec["correct_answer_letter"]] == src["correct_answer"]
        src_list = [src["correct_answer"], *src["distractors"]]
        assert [rec["options"][k] for k in "ABCD"] == [src_list[i] for i in rec["option_source_index"]]
        assert rec["question_source"] == "file:TriviaMC.jsonl"
    # Shuffled: the correct answer (source index 0) is spread over all letters, not stuck at A.
    letters = ds["correct_answer_letter"]
    assert min(letters.count(x) for x in "ABCD") > 450
    assert by_id["triviamc_0"]["options"]["D"] == "David Seville"  # pinned: seed 0 layout must not drift


@needs_triviamc
def test_triviamc_seeded_determinism():
    a = load_questions(str(TRIVIAMC), seed=7, num_questions=50)
    b = load_questions(str(TRIVIAMC), seed=7, num_questions=50)
    c = load_questions(str(TRIVIAMC), seed=8, num_questions=50)
    assert a.to_list() == b.to_list()
    assert a["question_id"] != c["question_id"]
    # A question's layout depends only on (seed, id), not on which sample it is in.
    full = {r["question_id"]: r for r in load_questions(str(TRIVIAMC), seed=7)}
    assert all(full[r["question_id"]] == r for r in a)
    # sample kept in source order
    order = {q: i for i, q in enumerate(full)}
    assert [order[q] for q in a["question_id"]] == sorted(order[q] for q in a["question_id"])


# --------------------------------------------------------------------------------------------
# Forms and file types
# --------------------------------------------------------------------------------------------


def test_normalised_jsonl_dict_and_list_options_kept_in_order(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [normalised(1), normalised(2, options=["w", "x", "y", "z"],
                                                                        correct_answer_letter="d")])
    ds, report = load_questions_with_report(path)
    assert report.form == "normalised" and not report.shuffled
    assert ds[0]["options"] == {"A": "a1", "B": "b1", "C": "c1", "D": "d1"}
    assert ds[0]["option_source_index"] == [0, 1, 2, 3]
    assert ds[1]["options"]["D"] == "z" and ds[1]["correct_answer_letter"] == "D"
    assert ds[0]["question_source"] == "file:q.jsonl"


def test_normalised_shuffle_forced_and_export_round_trip(tmp_path):
    rows = [normalised(i) for i in range(20)]
    shuffled = load_questions(write_jsonl(tmp_path / "q.jsonl", rows), shuffle_options=True, seed=2)
    assert any(r["option_source_index"] != [0, 1, 2, 3] for r in shuffled)
    for r in shuffled:
        assert r["options"][r["correct_answer_letter"]] == r["options"]["ABCD"[r["option_source_index"].index(1)]]
    # Re-loading an export keeps its provenance and composes the mapping.
    export = tmp_path / "export.jsonl"
    write_jsonl(export, shuffled.to_list())
    again = load_questions(str(export), shuffle_options=True, seed=5)
    for before, after in zip(shuffled, again):
        assert after["question_source"] == "file:q.jsonl"
        assert after["options"][after["correct_answer_letter"]] == before["options"][before["correct_answer_letter"]]
        for letter, src_index in zip("ABCD", after["option_source_index"]):
            assert after["options"][letter] == f"{'abcd'[src_index]}{before['question_id'][1:]}"


def test_json_list_and_json_lines(tmp_path):
    (tmp_path / "list.json").write_text(json.dumps([normalised(1), normalised(2)]))
    assert load_questions(str(tmp_path / "list.json"))["question_id"] == ["q1", "q2"]
    write_jsonl(tmp_path / "lines.json", [normalised(1), normalised(2)])
    assert load_questions(str(tmp_path / "lines.json"))["question_id"] == ["q1", "q2"]


def test_csv_normalised_with_letter_columns(tmp_path):
    path = tmp_path / "q.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["question_id", "question_text", "A", "B", "C", "D", "correct_answer_letter"])
        w.writerow(["c1", "Largest planet?", "Mars", "Jupiter", "Venus", "Earth", "B"])
        w.writerow(["c2", "Smallest prime, with, commas?", "1", "2", "3", "4", "B"])
    ds = load_questions(str(path))
    assert ds[0]["options"]["B"] == "Jupiter" and ds[1]["question_text"] == "Smallest prime, with, commas?"


def test_parquet_triviamc_form(tmp_path):
    rows = [{"qid": f"t{i}", "question": f"Q{i}?", "correct_answer": f"right{i}",
             "distractors": [f"x{i}", f"y{i}", f"z{i}"]} for i in range(10)]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "t.parquet"))
    ds = load_questions(str(tmp_path / "t.parquet"))
    assert [r["options"][r["correct_answer_letter"]] for r in ds] == [f"right{i}" for i in range(10)]
    assert len(set(ds["correct_answer_letter"])) > 1


def test_columns_mapping_list_column_letter_index_text(tmp_path):
    rows = [
        {"Q": "Capital of Italy?", "choices": ["Rome", "Milan", "Turin", "Naples"], "ans": "Rome", "key": "k1"},
        {"Q": "3*3?", "choices": ["6", "9", "12", "3"], "ans": "B", "key": "k2"},
        {"Q": "Red planet?", "choices": ["Venus", "Mars", "Earth", "Mercury"], "ans": 1, "key": "k3"},
    ]
    path = write_jsonl(tmp_path / "mine.jsonl", rows)
    ds = load_questions(path, columns={"question": "Q", "answer": "ans", "options": "choices", "id": "key"})
    assert ds["question_id"] == ["k1", "k2", "k3"]
    assert [r["options"][r["correct_answer_letter"]] for r in ds] == ["Rome", "9", "Mars"]


def test_columns_mapping_option_columns_from_csv(tmp_path):
    path = tmp_path / "sheet.csv"
    path.write_text("Question,Right,W1,W2,W3,W4\nSky colour?,blue,green,red,pink,grey\nGrass?,green,blue,red,,\n")
    mapping = parse_question_columns("question=Question,answer=Right,options=Right,W1,W2,W3,W4")
    assert mapping == {"question": "Question", "answer": "Right", "options": "Right,W1,W2,W3,W4"}
    ds, report = load_questions_with_report(str(path), columns=mapping, seed=0)
    # no id column: rows are numbered from the file stem; 5 options -> 4; the blank-heavy row is skipped
    assert ds["question_id"] == ["sheet_0"]
    assert ds[0]["options"][ds[0]["correct_answer_letter"]] == "blue"
    assert report.skipped_total == 1 and report.skipped_ids[next(iter(report.skipped))] == ["sheet_1"]


def test_columns_mapping_missing_column(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [{"Q": "x", "opts": ["a", "b", "c", "d"], "ans": 0}])
    msg = user_error(load_questions, path, columns={"question": "Q", "answer": "answer", "options": "opts"})
    assert "m.jsonl" in msg and "answer" in msg and "columns found: Q, opts, ans" in msg


def test_position_warning_when_not_shuffled(tmp_path, caplog):
    path = write_jsonl(tmp_path / "m.jsonl", [{"Q": f"q{i}", "opts": ["r", "w1", "w2", "w3"], "ans": 0}
                                              for i in range(10)])
    with caplog.at_level(logging.WARNING, logger="hf_introspect"):
        ds, report = load_questions_with_report(path, columns={"question": "Q", "answer": "ans", "options": "opts"})
    assert "correct answer at A" in caplog.text and report.warnings
    ds = load_questions(path, columns={"question": "Q", "answer": "ans", "options": "opts"}, shuffle_options=True)
    assert len(set(ds["correct_answer_letter"])) > 1


# --------------------------------------------------------------------------------------------
# Validation: one-line UserErrors naming file and line
# --------------------------------------------------------------------------------------------


def test_malformed_json_line(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [normalised(1), '{"question_id": "q2", oops}'])
    msg = user_error(load_questions, path)
    assert "bad.jsonl:2: malformed JSON" in msg


def test_malformed_json_file(tmp_path):
    (tmp_path / "bad.json").write_text('[\n{"a": 1},\n{"a": 2\n')
    assert "bad.json:" in user_error(load_questions, str(tmp_path / "bad.json"))


@pytest.mark.parametrize("override, expected", [
    ({"options": {"A": "a", "B": "b", "C": "c"}}, "exactly 4 options A, B, C, D"),
    ({"options": ["a", "b", "c", "d", "e"]}, "'options' has 5 entries; exactly 4"),
    ({"options": ["a", "b", "c"]}, "'options' has 3 entries; exactly 4"),
    ({"options": ["Paris", "Rome", " paris", "Oslo"]}, "duplicate options A and C"),
    ({"question_text": "   "}, "empty question_text"),
    ({"options": ["a", "", "c", "d"]}, "empty option B"),
    ({"correct_answer_letter": "E"}, "it must be one of A, B, C, D"),
])
def test_normalised_row_errors(tmp_path, override, expected):
    path = write_jsonl(tmp_path / "q.jsonl", [normalised(1), normalised(2, **override)])
    msg = user_error(load_questions, path)
    assert msg.startswith(f"{path}:2: "), msg
    assert expected in msg


def test_missing_required_key(tmp_path):
    row = normalised(2)
    del row["question_id"]
    msg = user_error(load_questions, write_jsonl(tmp_path / "q.jsonl", [normalised(1), row]))
    assert "q.jsonl:2: missing required key 'question_id'" in msg


def test_triviamc_missing_key_and_bad_answer_rows(tmp_path):
    good = {"qid": "t1", "question": "Q?", "correct_answer": "a", "distractors": ["b", "c", "d"]}
    path = write_jsonl(tmp_path / "t.jsonl", [good, {"qid": "t2", "question": "Q?", "correct_answer": "a",
                                                     "distractors": "b"}])
    assert "t.jsonl:2: 'distractors' must be a list" in user_error(load_questions, path)
    path = write_jsonl(tmp_path / "t.jsonl", [good, {**good, "qid": "t2", "question": ""}])
    assert "t.jsonl:2: empty question text" in user_error(load_questions, path)


def test_correct_answer_not_among_options(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [{"Q": "x", "opts": ["a", "b", "c", "d"], "ans": "zebra"}])
    msg = user_error(load_questions, path, columns={"question": "Q", "answer": "ans", "options": "opts"})
    assert "m.jsonl:1: answer 'zebra' is not one of the options" in msg


def test_duplicate_question_ids(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [normalised(1), normalised(2), normalised(1)])
    msg = user_error(load_questions, path)
    assert "q.jsonl:3: duplicate question id 'q1'" in msg and "q.jsonl:1" in msg


def test_unknown_form_names_keys(tmp_path):
    path = write_jsonl(tmp_path / "odd.jsonl", [{"foo": 1, "bar": 2}])
    msg = user_error(load_questions, path)
    assert "unrecognised question format (keys found: foo, bar)" in msg and "TriviaMC" in msg


def test_file_errors(tmp_path):
    assert "not found" in user_error(load_questions, str(tmp_path / "nope.jsonl"))
    (tmp_path / "q.txt").write_text("hello")
    assert "unsupported file type '.txt'" in user_error(load_questions, str(tmp_path / "q.txt"))
    (tmp_path / "empty.jsonl").write_text("\n")
    assert "contains no questions" in user_error(load_questions, str(tmp_path / "empty.jsonl"))
    (tmp_path / "bin.jsonl").write_bytes(b"\xff\xfe\x00garbage")
    assert "not UTF-8" in user_error(load_questions, str(tmp_path / "bin.jsonl"))
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    assert "cannot read" in user_error(load_questions, str(tmp_path / "bad.parquet"))
    assert "unknown question format 'nope'" in user_error(load_questions, str(tmp_path / "x.jsonl"),
                                                          source_format="nope")


def test_argument_errors(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [normalised(1)])
    assert "--num_questions must be >= 1" in user_error(load_questions, path, num_questions=0)
    assert "--num_questions must be >= 1" in user_error(load_questions, path, num_questions=-3)
    assert "use one of them" in user_error(load_questions, path, num_questions=1, question_ids=["q1"])


# --------------------------------------------------------------------------------------------
# Selection
# --------------------------------------------------------------------------------------------


@pytest.fixture
def twenty(tmp_path):
    return write_jsonl(tmp_path / "twenty.jsonl", [normalised(i) for i in range(20)])


def test_num_questions_sampling(twenty):
    a = load_questions(twenty, num_questions=5, seed=1)["question_id"]
    assert a == load_questions(twenty, num_questions=5, seed=1)["question_id"]
    assert len(a) == 5 and a == sorted(a, key=lambda q: int(q[1:]))  # source order
    assert a != load_questions(twenty, num_questions=5, seed=2)["question_id"]
    assert len(load_questions(twenty, num_questions=20)) == 20
    msg = user_error(load_questions, twenty, num_questions=21)
    assert "more than the 20 usable questions" in msg


def test_question_ids_list_and_files(twenty, tmp_path):
    assert load_questions(twenty, question_ids=["q7", "q2", "q11"])["question_id"] == ["q7", "q2", "q11"]
    txt = tmp_path / "ids.txt"
    txt.write_text("# my pick\nq3\n\nq1\n")
    assert load_questions(twenty, question_ids=str(txt))["question_id"] == ["q3", "q1"]
    jl = write_jsonl(tmp_path / "ids.jsonl", [{"question_id": "q5"}, {"question_id": "q4", "extra": 1}])
    assert load_questions(twenty, question_ids=jl)["question_id"] == ["q5", "q4"]
    msg = user_error(load_questions, twenty, question_ids=["q1", "nope1", "nope2"])
    assert "2 id(s)" in msg and "nope1, nope2" in msg
    txt.write_text("q1\nq1\n")
    assert "listed twice" in user_error(load_questions, twenty, question_ids=str(txt))
    assert "file not found" in user_error(load_questions, twenty, question_ids=str(tmp_path / "missing.txt"))


def test_question_ids_names_skipped_reason(tmp_path):
    rows = [{"qid": "t1", "question": "Q?", "correct_answer": "a", "distractors": ["b", "c", "d"]},
            {"qid": "t2", "question": "Q?", "correct_answer": "a", "distractors": ["b", "B", "c"]}]
    msg = user_error(load_questions, write_jsonl(tmp_path / "t.jsonl", rows), question_ids=["t2"])
    assert "t2 (skipped: fewer than 4 options" in msg


# --------------------------------------------------------------------------------------------
# Built-in bank
# --------------------------------------------------------------------------------------------


def test_builtin_bank_through_validation(monkeypatch):
    calls = []

    def fake_bank(seed=0):
        calls.append(seed)
        return [{**normalised(i), "question_source": "builtin", "option_source_index": [0, 1, 2, 3]}
                for i in range(6)]

    fake = types.ModuleType("hf_introspect.questions.bank")
    fake.build_question_bank, fake.BANK_SOURCE = fake_bank, "builtin"
    monkeypatch.setitem(sys.modules, "hf_introspect.questions.bank", fake)
    ds, report = load_questions_with_report(None, seed=4, num_questions=3)
    assert calls == [4] and len(ds) == 3 and report.source == "builtin"
    assert set(ds["question_source"]) == {"builtin"}
    assert load_questions("builtin", seed=4)["question_id"] == [f"q{i}" for i in range(6)]


def test_real_builtin_bank():
    ds = load_questions(seed=0)
    assert ds.features == QUESTION_FEATURES and len(ds) > 0
    assert len(set(ds["question_id"])) == len(ds)
