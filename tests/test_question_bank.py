"""Properties of the built-in question bank (hf_introspect.questions.bank)."""

from __future__ import annotations

import doctest
import hashlib
import json
import os
import subprocess
import sys
import time
from collections import Counter
from importlib.resources import files

import pytest

from hf_introspect.questions import bank as question_bank
from hf_introspect.questions.bank import BANK_SOURCE, bank_size, build_question_bank, topic_counts

LETTERS = ["A", "B", "C", "D"]


@pytest.fixture(scope="module")
def bank():
    return build_question_bank(0)


@pytest.fixture(scope="module")
def by_id(bank):
    return {q["question_id"]: q for q in bank}


def facts(name):
    return json.loads(files("hf_introspect.questions.data.facts").joinpath(name).read_text(encoding="utf-8"))


def correct(q):
    return q["options"][q["correct_answer_letter"]]


def distractors(q):
    return [text for letter, text in q["options"].items() if letter != q["correct_answer_letter"]]


def fingerprint(rows):
    return hashlib.sha256(json.dumps(rows, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def test_size(bank):
    assert len(bank) >= 1000
    assert bank_size() == len(bank) == sum(topic_counts().values())
    assert len(topic_counts()) >= 10
    assert all(n >= 40 for n in topic_counts().values()), topic_counts()


def test_ids_and_texts_unique(bank):
    ids = [q["question_id"] for q in bank]
    assert len(set(ids)) == len(ids)
    assert all(i.startswith("builtin-") and i == i.lower() and " " not in i for i in ids)
    texts = [" ".join(q["question_text"].split()).casefold() for q in bank]
    assert len(set(texts)) == len(texts)


def test_record_shape(bank):
    for q in bank:
        assert set(q) == {"question_id", "question_text", "options", "correct_answer_letter", "question_source",
                          "option_source_index"}
        assert q["question_source"] == BANK_SOURCE == "builtin"
        assert q["question_text"].strip() and q["question_text"].endswith("?")
        assert list(q["options"]) == LETTERS
        values = list(q["options"].values())
        assert all(isinstance(v, str) and v.strip() == v and v for v in values), q
        assert len({" ".join(v.split()).casefold() for v in values}) == 4, q


def test_option_source_index_marks_the_correct_option(bank):
    for q in bank:
        index = q["option_source_index"]
        assert sorted(index) == [0, 1, 2, 3], q
        assert q["correct_answer_letter"] in LETTERS
        assert index[LETTERS.index(q["correct_answer_letter"])] == 0, q


@pytest.mark.parametrize(
    "question_id, text, answer",
    [
        ("builtin-capital-of-france", "What is the capital of France?", "Paris"),
        ("builtin-symbol-of-gold", "What is the chemical symbol for gold?", "Au"),
        ("builtin-author-of-pride-and-prejudice", 'Who wrote the novel "Pride and Prejudice"?', "Jane Austen"),
        ("builtin-atomic-number-of-oxygen", "What is the atomic number of oxygen?", "8"),
        ("builtin-country-with-capital-canberra", "Which country has Canberra as its capital?", "Australia"),
        ("builtin-year-of-berlin-wall-falls", "When did the Berlin Wall fall?", "1989"),
        ("builtin-how-many-legs-spider", "How many legs does a spider have?", "8"),
        ("builtin-landmark-city-the-eiffel-tower", "In which city is the Eiffel Tower located?", "Paris"),
        ("builtin-si-unit-of-force", "What is the SI unit of force?", "newton"),
    ],
)
def test_known_questions(by_id, question_id, text, answer):
    q = by_id[question_id]
    assert q["question_text"] == text
    assert correct(q) == answer


def test_answers_match_the_fact_tables(by_id):
    # Recompute every answer of three whole topics from the shipped tables.
    checked = 0
    for c in facts("countries.json")["countries"]:
        if c.get("capital"):
            assert correct(by_id[f"builtin-capital-of-{question_bank.slugify(c['name'])}"]) == c["capital"]
            checked += 1
    for e in facts("elements.json")["elements"]:
        slug = question_bank.slugify(e["name"])
        assert correct(by_id[f"builtin-symbol-of-{slug}"]) == e["symbol"]
        assert correct(by_id[f"builtin-atomic-number-of-{slug}"]) == str(e["number"])
        checked += 2
    for w in facts("books.json")["works"]:
        assert correct(by_id[f"builtin-author-of-{question_bank.slugify(w['title'])}"]) == w["author"]
        checked += 1
    assert checked > 500


def test_elements_table_is_complete():
    elements = facts("elements.json")["elements"]
    assert [e["number"] for e in elements] == list(range(1, 119))
    assert {e["symbol"] for e in elements} >= {"H", "He", "C", "N", "O", "Na", "Fe", "Au", "Ag", "Pb", "Hg", "U", "Og"}
    assert len({e["symbol"].casefold() for e in elements}) == 118


def test_letter_balance(bank):
    counts = Counter(q["correct_answer_letter"] for q in bank)
    for letter in LETTERS:
        assert 0.20 <= counts[letter] / len(bank) <= 0.30, counts


@pytest.mark.parametrize("seed", [1, 12345])
def test_letter_balance_other_seeds(seed):
    counts = Counter(q["correct_answer_letter"] for q in build_question_bank(seed))
    assert max(counts.values()) - min(counts.values()) <= 1, counts


def test_same_seed_is_identical(bank):
    again = build_question_bank(0)
    assert again == bank
    assert fingerprint(again) == fingerprint(bank)


def test_identical_across_processes(bank):
    # A fresh interpreter with a different string-hash salt must produce the same bytes: nothing may
    # depend on Python's salted hash() or on set iteration order.
    code = ("import hashlib, json; from hf_introspect.questions.bank import build_question_bank; "
            "print(hashlib.sha256(json.dumps(build_question_bank(0), sort_keys=True, ensure_ascii=False)"
            ".encode()).hexdigest())")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": root}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == fingerprint(bank)


def test_other_seed_changes_layout_not_questions(bank):
    other = build_question_bank(1)
    assert [q["question_id"] for q in other] == [q["question_id"] for q in bank]
    assert [q["question_text"] for q in other] == [q["question_text"] for q in bank]
    assert [correct(q) for q in other] == [correct(q) for q in bank]
    moved = sum(a["option_source_index"] != b["option_source_index"] for a, b in zip(bank, other))
    assert moved > 0.5 * len(bank)
    letters_moved = sum(a["correct_answer_letter"] != b["correct_answer_letter"] for a, b in zip(bank, other))
    assert letters_moved > 0.5 * len(bank)


def test_question_words_are_varied(bank):
    words = Counter(q["question_text"].split()[0].lower() for q in bank)
    wh = {"what", "which", "who", "where", "when", "how"}
    assert wh <= set(words), words
    assert all(words[w] >= 40 for w in wh), words
    assert words["in"] > 0 and words["on"] > 0  # "In which ...", "On which continent ..."


def test_numeric_distractors_are_near_and_unbiased(bank):
    years = [q for q in bank if q["question_id"].startswith("builtin-year-of-")]
    assert len(years) >= 80
    extreme = 0
    for q in years:
        values = [int(v) for v in q["options"].values()]
        answer = int(correct(q))
        assert all(0 < abs(v - answer) <= 25 and v <= 2024 for v in map(int, distractors(q))), q
        extreme += answer in (min(values), max(values))
    # The answer's rank among the 4 values is drawn uniformly, so it is the smallest or largest
    # about half the time (symmetric offsets would make that ~25%: a cue a model could learn).
    assert 0.35 <= extreme / len(years) <= 0.65
    for q in bank:
        if q["question_id"].startswith("builtin-atomic-number-of-"):
            assert all(1 <= int(v) <= 118 and abs(int(v) - int(correct(q))) <= 6 for v in distractors(q)), q


def test_distractors_come_from_the_same_category(by_id):
    # Capitals offered for an African country are African capitals.
    african = {c["capital"] for c in facts("countries.json")["countries"]
               if c["continent"] == "Africa" and c.get("capital")}
    assert set(by_id["builtin-capital-of-kenya"]["options"].values()) <= african
    symbols = {e["symbol"] for e in facts("elements.json")["elements"]}
    assert set(by_id["builtin-symbol-of-gold"]["options"].values()) <= symbols
    authors = {w["author"] for w in facts("books.json")["works"]}
    assert set(by_id["builtin-author-of-hamlet"]["options"].values()) <= authors
    assert set(by_id["builtin-continent-of-france"]["options"].values()) <= set(facts("countries.json")["continents"])


@pytest.mark.parametrize("seed", range(12))
def test_excluded_distractors_never_offered(seed):
    rows = {q["question_id"]: q for q in build_question_bank(seed)}
    never = {
        "builtin-author-of-invisible-man": {"H. G. Wells"},  # wrote "The Invisible Man"
        "builtin-language-of-spain": {"Catalan"},  # co-official in Catalonia
        "builtin-language-of-austria": {"Hungarian", "Croatian", "Slovene"},
        "builtin-currency-of-cambodia": {"Dollar"},  # in everyday parallel use
        "builtin-currency-of-sweden": {"Krone", "Króna", "Koruna"},  # same "crown" family
        "builtin-artist-of-las-meninas": {"Pablo Picasso"},  # painted his own "Las Meninas" series
        "builtin-discovery-radioactivity": {"Marie Curie"},
    }
    for question_id, banned in never.items():
        assert not banned & set(rows[question_id]["options"].values()), rows[question_id]


def test_fact_tables_are_package_data():
    names = {p.name for p in files("hf_introspect.questions.data.facts").iterdir() if p.name.endswith(".json")}
    assert names == {"artworks.json", "books.json", "countries.json", "discoveries.json", "elements.json",
                     "events.json", "how_many.json", "landmarks.json", "music.json", "science.json", "units.json"}


def test_build_is_fast():
    build_question_bank(0)  # the seed-independent part is computed once per process
    start = time.perf_counter()
    build_question_bank(7)
    assert time.perf_counter() - start < 0.5


def test_docstring_examples():
    assert doctest.testmod(question_bank, raise_on_error=False).failed == 0
