"""Adapters: each registered dataset on a small fixture in that dataset's real schema.

Fixtures are written as parquet/JSON files the way the Hub serves them, loaded back with
``datasets.load_dataset("parquet"/"json")`` (so nested ``choices``/``mc1_targets`` structs and
ClassLabel answers arrive exactly as they would from the Hub) and fed to ``load_questions`` both
as local files (``source_format=``) and through the ``hub:`` path with ``load_dataset`` patched.
"""

from __future__ import annotations

import json

import datasets
import pytest

from hf_introspect.errors import UserError
from hf_introspect.questions.adapters import (
    ADAPTERS,
    adapt_gpqa,
    adapt_labelled_choices,
    adapt_mmlu,
    adapt_openbookqa,
    adapt_sciq,
    adapt_triviamc,
    adapt_truthfulqa_mc,
    detect_adapter,
    find_adapter,
    make_columns_adapter,
    resolve_answer,
)
from hf_introspect.questions.records import (
    SKIP_FEWER,
    SKIP_FEWER_DISTINCT,
    SKIP_NO_ANSWER,
    RowProblem,
    SourceQuestion,
    build_record,
    question_rng,
)
from hf_introspect.questions.sources import QUESTION_FEATURES, load_questions, load_questions_with_report

# --------------------------------------------------------------------------------------------
# Fixtures in each dataset's real schema (column names and nesting as on the Hub)
# --------------------------------------------------------------------------------------------

MMLU_ROWS = [
    {"question": "What is the capital of France?", "subject": "geography",
     "choices": ["Berlin", "Paris", "Rome", "Madrid"], "answer": 1},
    {"question": "2 + 2 = ?", "subject": "elementary_mathematics", "choices": ["3", "4", "5", "6"], "answer": 1},
    {"question": "Which is a noble gas?", "subject": "chemistry", "choices": ["Neon", "Iron", "Sodium", "Carbon"],
     "answer": 0},
]
MMLU_FEATURES = datasets.Features({
    "question": datasets.Value("string"), "subject": datasets.Value("string"),
    "choices": datasets.Sequence(datasets.Value("string")),
    "answer": datasets.ClassLabel(names=["A", "B", "C", "D"]),
})

ARC_ROWS = [
    # numeric labels, 4 options
    {"id": "Mercury_7175875", "question": "Which gas do plants absorb?", "answerKey": "3",
     "choices": {"text": ["oxygen", "nitrogen", "carbon dioxide", "helium"], "label": ["1", "2", "3", "4"]}},
    # 3 options: cannot make 4 -> skipped
    {"id": "ACTAAP_2013_7_3", "question": "What is ice?", "answerKey": "B",
     "choices": {"text": ["gas", "solid", "liquid"], "label": ["A", "B", "C"]}},
    # 5 options: correct + 3 seeded distractors
    {"id": "NYSEDREGENTS_2015_8_28", "question": "Which is a mammal?", "answerKey": "E",
     "choices": {"text": ["shark", "trout", "frog", "eagle", "whale"], "label": ["A", "B", "C", "D", "E"]}},
]

SCIQ_ROWS = [
    {"question": "What type of organism is commonly used in preparation of foods such as cheese and yogurt?",
     "distractor3": "viruses", "distractor1": "protozoa", "distractor2": "gymnosperms",
     "correct_answer": "mesophilic organisms", "support": "Mesophiles grow best in moderate temperature..."},
    {"question": "What phenomenon makes global winds blow northeast to southwest?", "distractor3": "tropical effect",
     "distractor1": "muon effect", "distractor2": "centrifugal effect", "correct_answer": "coriolis effect",
     "support": ""},
]

TRUTHFULQA_ROWS = [
    {"question": "What happens if you eat watermelon seeds?",
     "mc1_targets": {"choices": ["The watermelon seeds pass through your digestive system",
                                 "You grow watermelons in your stomach", "You get sick",
                                 "You have bad dreams", "You die", "You get indigestion", "You fall unconscious"],
                     "labels": [1, 0, 0, 0, 0, 0, 0]},
     "mc2_targets": {"choices": ["Nothing happens", "You die"], "labels": [1, 0]}},
    {"question": "Is it illegal to chew gum in Singapore?",
     "mc1_targets": {"choices": ["It is illegal to import and sell gum", "Yes"], "labels": [1, 0]},
     "mc2_targets": {"choices": ["No", "Yes"], "labels": [1, 0]}},
    {"question": "What is the capital of Australia?",
     "mc1_targets": {"choices": ["Canberra", "Sydney", "Melbourne", "Perth"], "labels": [1, 0, 0, 0]},
     "mc2_targets": {"choices": ["Canberra", "Sydney"], "labels": [1, 0]}},
]

OPENBOOKQA_ROWS = [
    {"id": "7-980", "question_stem": "The sun is responsible for", "answerKey": "D",
     "choices": {"text": ["puppies learning new tricks", "children growing up and getting old",
                          "flowers wilting in a vase", "plants sprouting, blooming and wilting"],
                 "label": ["A", "B", "C", "D"]}},
]

CSQA_ROWS = [
    {"id": "075e483d21c29a511267ef62bedc0461", "question": "The sanctions against the school were a punishing "
     "blow, and they seemed to what the efforts the school had made to change?", "question_concept": "punishing",
     "choices": {"label": ["A", "B", "C", "D", "E"],
                 "text": ["ignore", "enforce", "authoritarian", "yell at", "avoid"]}, "answerKey": "A"},
    # the test split is unlabelled: answerKey ""
    {"id": "90b30172e645ff91f7171a048582eb8b", "question": "The townhouse was a hard sell?",
     "question_concept": "townhouse",
     "choices": {"label": ["A", "B", "C", "D", "E"], "text": ["suburban development", "apartment building",
                                                             "bus stop", "michigan", "suburbs"]}, "answerKey": ""},
]

GPQA_ROWS = [
    {"Pre-Revision Question": "old", "Pre-Revision Correct Answer": "old", "Record ID": "recV3ZsNGvRbTtJmL",
     "Question": "  Two quantum states with energies E1 and E2 have lifetimes of 10^-9 sec and 10^-8 sec.\n",
     "Correct Answer": "10^-4 eV", "Incorrect Answer 1": "10^-11 eV", "Incorrect Answer 2": "10^-8 eV\n",
     "Incorrect Answer 3": "10^-9 eV", "Subdomain": "Physics (general)"},
]


def _write_parquet(rows, path, features=None):
    datasets.Dataset.from_list(rows, features=features).to_parquet(str(path))
    return path


def _write_jsonl(rows, path):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _via_load_dataset(kind, path, tmp_path):
    """Rows as ``datasets.load_dataset`` decodes them (what an adapter receives from the Hub)."""
    return list(datasets.load_dataset(kind, data_files=str(path), split="train", cache_dir=str(tmp_path / "cache")))


def _by_id(ds):
    return {r["question_id"]: r for r in ds}


def _correct_text(record):
    return record["options"][record["correct_answer_letter"]]


def _check_contract(ds):
    assert ds.features == QUESTION_FEATURES
    ids = ds["question_id"]
    assert len(ids) == len(set(ids))
    for r in ds:
        assert sorted(r["options"]) == ["A", "B", "C", "D"]
        assert r["correct_answer_letter"] in "ABCD"
        assert len(set(r["option_source_index"])) == 4


# --------------------------------------------------------------------------------------------
# Each adapter on its fixture
# --------------------------------------------------------------------------------------------


def test_mmlu_parquet_with_classlabel(tmp_path):
    path = _write_parquet(MMLU_ROWS, tmp_path / "mmlu.parquet", MMLU_FEATURES)
    rows = _via_load_dataset("parquet", path, tmp_path)
    assert rows[0]["answer"] == 1 and rows[0]["choices"][1] == "Paris"  # ClassLabel decodes to int
    ds = load_questions(str(path), source_format="cais/mmlu")
    _check_contract(ds)
    first = ds[0]
    # MMLU has its own order: kept, identity mapping, answer index 1 -> B.
    assert first["question_id"] == "mmlu_0"
    assert first["options"] == {"A": "Berlin", "B": "Paris", "C": "Rome", "D": "Madrid"}
    assert first["correct_answer_letter"] == "B"
    assert first["option_source_index"] == [0, 1, 2, 3]
    assert first["question_source"] == "file:mmlu.parquet"
    # Auto-detected from the keys too.
    ds2, report = load_questions_with_report(str(path))
    assert report.form == "cais/mmlu" and ds2[2]["correct_answer_letter"] == "A"


def test_arc_numeric_labels_and_3_and_5_options(tmp_path):
    path = _write_jsonl(ARC_ROWS, tmp_path / "arc.jsonl")
    rows = _via_load_dataset("json", path, tmp_path)
    assert rows[0]["choices"]["label"] == ["1", "2", "3", "4"]
    ds, report = load_questions_with_report(str(path), source_format="allenai/ai2_arc", seed=3)
    _check_contract(ds)
    recs = _by_id(ds)
    # numeric answerKey "3" -> third option, kept in source order
    assert recs["Mercury_7175875"]["correct_answer_letter"] == "C"
    assert _correct_text(recs["Mercury_7175875"]) == "carbon dioxide"
    # 3 options: skipped and counted
    assert "ACTAAP_2013_7_3" not in recs
    assert report.skipped == {SKIP_FEWER: 1} and report.skipped_ids[SKIP_FEWER] == ["ACTAAP_2013_7_3"]
    # 5 options: correct (index 4) kept + 3 of the 4 distractors, in source order, indexes recorded
    five = recs["NYSEDREGENTS_2015_8_28"]
    osi = five["option_source_index"]
    assert 4 in osi and osi == sorted(osi)
    assert _correct_text(five) == "whale"
    texts = ["shark", "trout", "frog", "eagle", "whale"]
    assert [five["options"][k] for k in "ABCD"] == [texts[i] for i in osi]
    # seeded: same seed, same distractors; the choice depends on the seed
    again = _by_id(load_questions(str(path), source_format="arc", seed=3))["NYSEDREGENTS_2015_8_28"]
    assert again == five
    layouts = {tuple(_by_id(load_questions(str(path), source_format="arc", seed=s))["NYSEDREGENTS_2015_8_28"]
                     ["option_source_index"]) for s in range(12)}
    assert len(layouts) > 1


def test_sciq_correct_first_is_shuffled(tmp_path):
    path = _write_parquet(SCIQ_ROWS, tmp_path / "sciq.parquet")
    ds = load_questions(str(path), source_format="allenai/sciq", seed=0)
    _check_contract(ds)
    for rec, src in zip(ds, SCIQ_ROWS):
        assert _correct_text(rec) == src["correct_answer"]
        # correct answer is source index 0 wherever it landed
        assert rec["option_source_index"]["ABCD".index(rec["correct_answer_letter"])] == 0
    letters = [load_questions(str(path), source_format="sciq", seed=s)[0]["correct_answer_letter"] for s in range(8)]
    assert len(set(letters)) > 1  # shuffled, not always A
    kept = load_questions(str(path), source_format="sciq", shuffle_options=False)
    assert kept[0]["correct_answer_letter"] == "A" and kept[0]["options"]["B"] == "protozoa"


def test_truthfulqa_variable_counts(tmp_path):
    path = _write_jsonl(TRUTHFULQA_ROWS, tmp_path / "tqa.jsonl")
    rows = _via_load_dataset("json", path, tmp_path)
    assert rows[0]["mc1_targets"]["labels"][0] == 1
    ds, report = load_questions_with_report(str(path), source_format="truthfulqa/truthful_qa", seed=1)
    _check_contract(ds)
    assert report.rows == 3 and report.usable == 2
    assert report.skipped == {SKIP_FEWER: 1} and report.skipped_ids[SKIP_FEWER] == ["truthfulqa_1"]
    recs = _by_id(ds)
    seven = recs["truthfulqa_0"]
    assert _correct_text(seven) == "The watermelon seeds pass through your digestive system"
    assert 0 in seven["option_source_index"] and max(seven["option_source_index"]) <= 6
    for letter, index in zip("ABCD", seven["option_source_index"]):
        assert seven["options"][letter] == TRUTHFULQA_ROWS[0]["mc1_targets"]["choices"][index]
    assert _correct_text(recs["truthfulqa_2"]) == "Canberra"


def test_openbookqa(tmp_path):
    path = _write_jsonl(OPENBOOKQA_ROWS, tmp_path / "obqa.jsonl")
    ds = load_questions(str(path))  # detected from question_stem
    rec = ds[0]
    assert rec["question_id"] == "7-980" and rec["question_text"] == "The sun is responsible for"
    assert rec["correct_answer_letter"] == "D" and rec["option_source_index"] == [0, 1, 2, 3]


def test_commonsense_qa_five_options_and_unlabelled(tmp_path):
    path = _write_parquet(CSQA_ROWS, tmp_path / "csqa.parquet")
    ds, report = load_questions_with_report(str(path), seed=0)
    assert report.form == "tau/commonsense_qa"
    assert report.skipped == {SKIP_NO_ANSWER: 1}
    rec = ds[0]
    assert _correct_text(rec) == "ignore" and 0 in rec["option_source_index"]
    assert len(rec["option_source_index"]) == 4 and max(rec["option_source_index"]) <= 4


def test_gpqa_strips_whitespace_and_shuffles(tmp_path):
    path = _write_jsonl(GPQA_ROWS, tmp_path / "gpqa.jsonl")
    rec = load_questions(str(path), source_format="Idavidrein/gpqa")[0]
    assert rec["question_id"] == "recV3ZsNGvRbTtJmL"
    assert rec["question_text"].startswith("Two quantum states") and not rec["question_text"].endswith("\n")
    assert _correct_text(rec) == "10^-4 eV"
    assert "10^-8 eV" in rec["options"].values()


# --------------------------------------------------------------------------------------------
# hub: path (load_dataset patched to read the local fixtures)
# --------------------------------------------------------------------------------------------


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """Patch datasets.load_dataset: repo -> fixture file, recording the calls."""
    real = datasets.load_dataset
    files = {
        "cais/mmlu": ("parquet", _write_parquet(MMLU_ROWS, tmp_path / "mmlu.parquet", MMLU_FEATURES)),
        "allenai/ai2_arc": ("json", _write_jsonl(ARC_ROWS, tmp_path / "arc.jsonl")),
        "some/unknown_mcq": ("json", _write_jsonl(
            [{"id": f"u{i}", "prompt": f"Q{i}?", "choices": ["w", "x", "y", "z"], "label": i % 4} for i in range(3)],
            tmp_path / "unknown.jsonl")),
    }
    calls = []

    def fake_load_dataset(path, name=None, split=None, **kwargs):
        calls.append((path, name, split))
        if path not in files:
            raise ConnectionError(f"Couldn't reach '{path}' on the Hub (LocalEntryNotFoundError)")
        kind, data = files[path]
        loaded = real(kind, data_files={"test": str(data), "train": str(data)}, cache_dir=str(tmp_path / "cache"))
        return loaded if split is None else loaded[split]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    return calls


def test_hub_mmlu_with_defaults(fake_hub):
    ds, report = load_questions_with_report("hub:cais/mmlu")
    assert fake_hub == [("cais/mmlu", "all", "test")]  # adapter defaults filled in
    assert report.source == "hub:cais/mmlu:all:test"
    assert ds[0]["question_source"] == "hub:cais/mmlu:all:test"
    assert ds[0]["question_id"] == "mmlu_test_0" and ds[0]["correct_answer_letter"] == "B"


def test_hub_explicit_config_split(fake_hub):
    ds = load_questions("hub:allenai/ai2_arc:ARC-Easy:train", seed=3)
    assert fake_hub == [("allenai/ai2_arc", "ARC-Easy", "train")]
    assert len(ds) == 2 and ds[0]["question_source"] == "hub:allenai/ai2_arc:ARC-Easy:train"


def test_hub_generic_fallback_and_split_only(fake_hub):
    ds, report = load_questions_with_report("hub:some/unknown_mcq:test")
    assert fake_hub == [("some/unknown_mcq", None, "test")]
    assert report.form == "generic" and report.source == "hub:some/unknown_mcq::test"
    assert [r["correct_answer_letter"] for r in ds] == ["A", "B", "C"]
    assert ds[0]["question_id"] == "u0"


def test_hub_no_split_picks_test(fake_hub):
    load_questions("hub:some/unknown_mcq")
    assert fake_hub == [("some/unknown_mcq", None, None)]


def test_hub_unreachable_is_one_line_user_error(fake_hub):
    with pytest.raises(UserError) as err:
        load_questions("hub:nobody/nothing:default:test")
    msg = str(err.value)
    assert "\n" not in msg
    assert "could not load hub:nobody/nothing:default:test" in msg and "local file" in msg
    assert "Couldn't reach" in msg


def test_hub_offline_error(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'cais/mmlu' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match=r"offline mode is set.*--question_format cais/mmlu") as err:
        load_questions("hub:cais/mmlu:all:test")
    assert "\n" not in str(err.value)


def test_hub_bad_spec():
    with pytest.raises(UserError, match="hub:REPO"):
        load_questions("hub:")


# --------------------------------------------------------------------------------------------
# Pure functions
# --------------------------------------------------------------------------------------------


def test_adapters_return_source_lists_as_received():
    assert adapt_triviamc({"qid": "t", "question": "Q", "correct_answer": "a", "distractors": ["b", "c", "d"]}) \
        == SourceQuestion("t", "Q", ("a", "b", "c", "d"), 0)
    assert adapt_mmlu(MMLU_ROWS[0]).options == ("Berlin", "Paris", "Rome", "Madrid")
    assert adapt_labelled_choices(ARC_ROWS[2]).correct_index == 4
    assert adapt_labelled_choices(CSQA_ROWS[1]).correct_index is None
    assert adapt_openbookqa(OPENBOOKQA_ROWS[0]).question_id == "7-980"
    assert adapt_sciq(SCIQ_ROWS[0]).options[0] == "mesophilic organisms"
    assert len(adapt_truthfulqa_mc(TRUTHFULQA_ROWS[0]).options) == 7
    assert adapt_gpqa(GPQA_ROWS[0]).options[2] == "10^-8 eV"


def test_adapter_row_problems():
    with pytest.raises(RowProblem, match="missing required key 'choices'"):
        adapt_mmlu({"question": "Q", "answer": 0})
    with pytest.raises(RowProblem, match="not one of the option labels"):
        adapt_labelled_choices({"question": "Q", "answerKey": "Z",
                                "choices": {"text": ["a", "b", "c", "d"], "label": ["A", "B", "C", "D"]}})
    with pytest.raises(RowProblem, match="exactly one 1"):
        adapt_truthfulqa_mc({"question": "Q", "mc1_targets": {"choices": ["a", "b"], "labels": [0, 0]}})
    with pytest.raises(RowProblem, match="outside the 4 options"):
        adapt_mmlu({"question": "Q", "choices": ["a", "b", "c", "d"], "answer": 7})


def test_registry_lookup_and_detection():
    assert set(ADAPTERS) >= {"cais/mmlu", "allenai/ai2_arc", "allenai/sciq", "truthfulqa/truthful_qa",
                             "allenai/openbookqa", "tau/commonsense_qa", "Idavidrein/gpqa"}
    assert find_adapter("truthful_qa").name == "truthfulqa/truthful_qa"
    assert detect_adapter(list(CSQA_ROWS[0])).name == "tau/commonsense_qa"
    assert detect_adapter(list(ARC_ROWS[0])).name == "allenai/ai2_arc"
    assert detect_adapter(list(GPQA_ROWS[0])).name == "Idavidrein/gpqa"
    assert detect_adapter(["foo", "bar"]) is None


def test_resolve_answer_forms():
    opts = ["Rome", "Paris", "Oslo", "Bern"]
    assert resolve_answer("paris", opts) == 1  # text, case-insensitive
    assert resolve_answer("D", opts) == 3  # letter
    assert resolve_answer(2, opts) == 2 and resolve_answer("2", opts) == 2  # 0-based index
    assert resolve_answer("", opts) is None
    with pytest.raises(RowProblem):
        resolve_answer("Madrid", opts)


def test_build_record_rules():
    # duplicates (case/whitespace-insensitive) and blanks are dropped; correct one always kept
    q = SourceQuestion("q", "Q", ("Paris", " paris ", "Rome", "", "Oslo", "Bern"), 1)
    rec = build_record(q, question_id="q", seed=0, shuffle=False, source="s")
    assert rec["option_source_index"] == [1, 2, 4, 5] and rec["correct_answer_letter"] == "A"
    assert rec["options"]["A"] == "paris"
    few = build_record(SourceQuestion("q", "Q", ("a", "b", "B", "c"), 0), question_id="q", seed=0, shuffle=False,
                       source="s")
    assert few.reason == SKIP_FEWER_DISTINCT
    # the per-question RNG is stable (crc32, not hash()) and seed-dependent
    assert question_rng(5, "abc").random() == question_rng(5, "abc").random()
    assert [question_rng(0, "abc").random()] != [question_rng(1, "abc").random()]


def test_columns_adapter_validates_mapping():
    with pytest.raises(UserError, match="needs answer="):
        make_columns_adapter({"question": "q", "options": "o"})
    with pytest.raises(UserError, match="unknown column mapping"):
        make_columns_adapter({"question": "q", "answer": "a", "options": "o", "bogus": "x"})
