"""The built-in question bank: >= 1,000 offline 4-option multiple-choice questions.

The questions are generated from small fact tables shipped as package data
(``hf_introspect/questions/data/facts/*.json``, one file per topic): countries (capital, capital -> country,
continent, currency, official language), the 118 chemical elements (symbol, symbol -> element,
atomic number), authors of literary works, artists of paintings, composers, years of historical
events, SI units, counting facts, general science, discoverers and inventors, and the locations of
landmarks. The tables hold only well-established facts with one unambiguous answer; wherever a
plausible distractor would be arguably correct too (a regional co-official language, a currency in
common parallel use, another painting with the same title...) the table lists it under
``exclude`` so it is never offered.

Each question is laid out like every other source in :mod:`hf_introspect.questions.sources`::

    {"question_id": "builtin-capital-of-france", "question_text": "What is the capital of France?",
     "options": {"A": ..., "B": ..., "C": ..., "D": ...}, "correct_answer_letter": "B",
     "question_source": "builtin", "option_source_index": [2, 0, 1, 3]}

``option_source_index[k]`` indexes the unshuffled list ``[correct, distractor1, distractor2,
distractor3]``, so ``option_source_index[k] == 0`` marks the correct option.

What depends on ``seed`` and what doesn't:

* the questions, their ids, texts, correct answers and order are fixed (they depend only on the
  fact tables), so results from runs with different seeds line up by ``question_id``;
* the distractors drawn and the option order are seeded per question (``seed`` + crc32 of the
  question id, never Python's salted ``hash()``), so the same seed gives byte-identical output in
  any process;
* the correct letter is assigned round-robin over a seeded permutation of the bank, so A-D are each
  correct for a quarter of the questions (+-1): a model that always answers "A" scores 25%.

Example:
    >>> bank = build_question_bank(seed=0)
    >>> len(bank) >= 1000
    True
    >>> q = next(q for q in bank if q["question_id"] == "builtin-capital-of-france")
    >>> q["question_text"], q["options"][q["correct_answer_letter"]]
    ('What is the capital of France?', 'Paris')
    >>> q["option_source_index"]["ABCD".index(q["correct_answer_letter"])]
    0
    >>> build_question_bank(seed=0) == bank
    True
"""

from __future__ import annotations

import functools
import json
import random
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.resources import files

from ..passes import ANSWER_LABELS as LETTERS
from .records import question_rng

BANK_SOURCE = "builtin"
N_DISTRACTORS = len(LETTERS) - 1
ID_PREFIX = "builtin-"

# Years offered as distractors never go past this (a year in the future would be a giveaway).
LATEST_YEAR = 2024
YEAR_SPREAD = 25  # distractor years lie within +-YEAR_SPREAD of the true year
ATOMIC_NUMBER_SPREAD = 6


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _key(text: str) -> str:
    """Comparison key for "same option": whitespace-collapsed and case-folded (as the loader does)."""
    return " ".join(str(text).split()).casefold()


def slugify(text: str) -> str:
    """ASCII slug for question ids.

    >>> slugify("Côte d'Ivoire & São Tomé")
    'cote-d-ivoire-sao-tome'
    """
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")


def _shares_word(a: str, b: str) -> bool:
    # "Which country has Kuwait City as its capital?" gives its own answer away: skip such pairs.
    common = set(slugify(a).split("-")) & set(slugify(b).split("-"))
    return bool(common - {"the", "of", "and", "san"})


@functools.lru_cache(maxsize=None)
def _load(name: str) -> dict:
    # importlib.resources, not a path next to __file__, so this works from a wheel or zip too.
    return json.loads(files("hf_introspect.questions.data.facts").joinpath(name).read_text(encoding="utf-8"))


def _unique(values: Iterable[str]) -> list[str]:
    """Values in first-seen order, without duplicates (compared with :func:`_key`)."""
    seen, out = set(), []
    for value in values:
        if _key(value) not in seen:
            seen.add(_key(value))
            out.append(value)
    return out


# ---------------------------------------------------------------------------------------------
# Question specs (seed-independent) and how their distractors are drawn
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Spec:
    """One question before the seeded part: its text, answer and distractor candidates.

    Choice questions draw distractors from ``preferred`` first (same continent, same letter...) and
    top up from ``fallback``; both are already deduplicated and free of the answer and of excluded
    names (see :func:`_choice`), so drawing is cheap. Numeric questions (years, atomic numbers) draw
    values near ``value``.
    """

    question_id: str
    question_text: str
    answer: str
    preferred: tuple[str, ...] = ()
    fallback: tuple[str, ...] = ()
    value: int | None = None  # numeric questions only
    low: int = 0
    high: int = 0
    spread: int = 0

    def distractors(self, rng: random.Random) -> list[str]:
        if self.value is not None:
            return self._numeric(rng)
        if len(self.preferred) >= N_DISTRACTORS:
            return rng.sample(self.preferred, N_DISTRACTORS)
        preferred = list(self.preferred)
        rng.shuffle(preferred)
        return preferred + rng.sample(self.fallback, N_DISTRACTORS - len(preferred))

    def _numeric(self, rng: random.Random) -> list[str]:
        # Draw the answer's rank among the 4 values uniformly, then that many smaller and the rest
        # larger values. Sampling offsets symmetrically instead would put the true value in the
        # middle of the options far more often than at either end: a cue a model could learn.
        v = self.value
        below = list(range(max(self.low, v - self.spread), v))
        above = list(range(v + 1, min(self.high, v + self.spread) + 1))
        ranks = [r for r in range(N_DISTRACTORS + 1) if r <= len(below) and N_DISTRACTORS - r <= len(above)]
        r = rng.choice(ranks)
        picked = rng.sample(below, r) + rng.sample(above, N_DISTRACTORS - r)
        rng.shuffle(picked)
        return [str(x) for x in picked]


def _choice(kind: str, subject: str, text: str, answer: str, preferred: Iterable[str],
            fallback: Iterable[str] = (), exclude: Iterable[str] = ()) -> _Spec:
    taken = {_key(answer)} | {_key(x) for x in exclude}
    preferred = [c for c in _unique(preferred) if _key(c) not in taken]
    taken |= {_key(c) for c in preferred}
    fallback = [c for c in _unique(fallback) if _key(c) not in taken]
    if len(preferred) + len(fallback) < N_DISTRACTORS:
        raise ValueError(f"{kind} {subject!r}: fewer than {N_DISTRACTORS} distractor candidates in the fact tables")
    return _Spec(f"{ID_PREFIX}{kind}-{slugify(subject)}", text, answer, tuple(preferred), tuple(fallback))


def _numeric(kind: str, subject: str, text: str, value: int, low: int, high: int, spread: int) -> _Spec:
    return _Spec(f"{ID_PREFIX}{kind}-{slugify(subject)}", text, str(value), value=value, low=low, high=high,
                 spread=spread)


# ---------------------------------------------------------------------------------------------
# One generator per fact table
# ---------------------------------------------------------------------------------------------


def _country_questions() -> list[_Spec]:
    data = _load("countries.json")
    countries, continents, families = data["countries"], data["continents"], data["currency_families"]
    same = lambda c: [o for o in countries if o["continent"] == c["continent"] and o is not c]  # noqa: E731
    family = lambda cur: families.get(cur, cur.casefold())  # noqa: E731
    all_capitals = [c["capital"] for c in countries if c.get("capital")]
    all_currencies = [c["currency"] for c in countries if c.get("currency")]

    def one_per_family(names, banned):
        # One name per family (the first in table order) so that the three distractors are never
        # near-twins like Rial/Riyal/Riel, which a model could rule out together.
        seen, out = set(banned), []
        for cur in names:
            if cur and family(cur) not in seen:
                seen.add(family(cur))
                out.append(cur)
        return out

    all_languages = [c["language"] for c in countries if c.get("language")]
    specs = []
    for c in countries:
        name, place = c["name"], c.get("display", c["name"])
        capital = c.get("capital")
        if capital:
            specs.append(_choice("capital-of", name, f"What is the capital of {place}?", capital,
                                 [o["capital"] for o in same(c) if o.get("capital")], all_capitals))
            if not _shares_word(name, capital):
                specs.append(_choice("country-with-capital", capital, f"Which country has {capital} as its capital?",
                                     name, [o["name"] for o in same(c)], [o["name"] for o in countries]))
        if c.get("ask_continent", True):
            specs.append(_choice("continent-of", name, f"On which continent is {place} located?", c["continent"],
                                 continents))
        currency = c.get("currency")
        if currency:
            # Exclude the whole family (Krona/Krone/Koruna, Rial/Riyal...): a "crown" offered for
            # Sweden's krona is a spelling trap rather than a knowledge test.
            banned = {family(currency)} | {family(x) for x in c.get("currency_exclude", [])}
            specs.append(_choice("currency-of", name, f"What is the currency of {place}?", currency,
                                 one_per_family([o.get("currency") for o in same(c)], banned),
                                 one_per_family(all_currencies, banned)))
        language = c.get("language")
        if language:
            specs.append(_choice("language-of", name, f"What is the official language of {place}?", language,
                                 [o["language"] for o in same(c) if o.get("language")], all_languages,
                                 exclude=c.get("language_exclude", [])))
    return specs


def _element_questions() -> list[_Spec]:
    elements = _load("elements.json")["elements"]
    symbols = [e["symbol"] for e in elements]
    names = [e["name"] for e in elements]
    specs = []
    for e in elements:
        name, symbol = e["name"], e["symbol"]
        # Plausible symbols share a first letter with the element's name or its real symbol
        # (gold: Ag, Al, Ga, Gd...); plausible names start with the symbol's letter (Au: Argon...).
        initials = {name[0].upper(), symbol[0]}
        specs.append(_choice("symbol-of", name, f"What is the chemical symbol for {name.lower()}?", symbol,
                             [s for s in symbols if s[0] in initials], symbols))
        specs.append(_choice("element-with-symbol", symbol, f'Which element has the chemical symbol "{symbol}"?',
                             name, [n for n in names if n[0] == symbol[0]], names))
        specs.append(_numeric("atomic-number-of", name, f"What is the atomic number of {name.lower()}?",
                              e["number"], 1, len(elements), ATOMIC_NUMBER_SPREAD))
    return specs


def _people_questions(file: str, person_key: str, id_kind: str, render) -> list[_Spec]:
    works = _load(file)["works"]
    people = [w[person_key] for w in works]
    return [_choice(id_kind, w["title"], render(w), w[person_key], people, exclude=w.get("exclude", []))
            for w in works]


def _book_questions() -> list[_Spec]:
    return _people_questions("books.json", "author", "author-of",
                             lambda w: f'Who wrote the {w["kind"]} "{w["title"]}"?')


def _artwork_questions() -> list[_Spec]:
    def render(w):
        note = f' ({w["note"]})' if w.get("note") else ""
        return f'Who {w.get("verb", "painted")} "{w["title"]}"{note}?'

    return _people_questions("artworks.json", "artist", "artist-of", render)


def _music_questions() -> list[_Spec]:
    def render(w):
        kind = f'the {w["kind"]} ' if w.get("kind") else "the " if w.get("the") else ""
        return f'Who composed {kind}"{w["title"]}"?'

    return _people_questions("music.json", "composer", "composer-of", render)


def _event_questions() -> list[_Spec]:
    specs = []
    for i, e in enumerate(_load("events.json")["events"]):
        aux = e.get("aux", "did")
        # Alternate the two phrasings so "When ...?" and "In which year ...?" both occur.
        text = f"In which year {aux} {e['event']}?" if i % 2 == 0 else f"When {aux} {e['event']}?"
        specs.append(_numeric("year-of", e["key"], text, e["year"], 1, LATEST_YEAR, YEAR_SPREAD))
    return specs


def _unit_questions() -> list[_Spec]:
    units = _load("units.json")["units"]
    all_units = [u["unit"] for u in units]
    quantities = [u["quantity"][0].upper() + u["quantity"][1:] for u in units]
    specs = []
    for u, quantity in zip(units, quantities):
        specs.append(_choice("si-unit-of", u["quantity"], f"What is the SI unit of {u['quantity']}?", u["unit"],
                             all_units))
        specs.append(_choice("quantity-with-unit", u["unit"],
                             f"Which physical quantity has the {u['unit']} as its SI unit?", quantity, quantities))
    return specs


def _listed_questions(file: str, id_kind: str) -> list[_Spec]:
    """Questions whose table lists the text, answer and its own distractors."""
    return [_choice(id_kind, f["key"], f["question"], str(f["answer"]), [str(d) for d in f["distractors"]])
            for f in _load(file)["facts"]]


def _discovery_questions() -> list[_Spec]:
    facts = _load("discoveries.json")["facts"]
    people = [f["answer"] for f in facts]
    return [_choice("discovery", f["key"], f["question"], f["answer"], people, exclude=f.get("exclude", []))
            for f in facts]


def _landmark_questions() -> list[_Spec]:
    data = _load("landmarks.json")
    countries = _load("countries.json")["countries"]
    continent_of = {c["name"]: c["continent"] for c in countries}
    in_city = data["in_city"]
    specs = []
    for i, l in enumerate(in_city):
        continent = l["continent"]
        nearby = [o["city"] for o in in_city if o["continent"] == continent]
        nearby += [c["capital"] for c in countries if c["continent"] == continent and c.get("capital")]
        be = "are" if l.get("plural") else "is"
        text = f"In which city {be} {l['name']} located?" if i % 2 == 0 else f"Where {be} {l['name']} located?"
        specs.append(_choice("landmark-city", l["name"], text, l["city"], nearby, [o["city"] for o in in_city],
                             exclude=l.get("exclude", [])))
    for i, l in enumerate(data["in_country"]):
        continent = continent_of[l["country"]]
        be = "are" if l.get("plural") else "is"
        text = f"In which country {be} {l['name']} located?" if i % 2 == 0 else f"Where {be} {l['name']} located?"
        specs.append(_choice("landmark-country", l["name"], text, l["country"],
                             [c["name"] for c in countries if c["continent"] == continent],
                             [c["name"] for c in countries], exclude=l.get("exclude", [])))
    return specs


# Topic name -> generator, in bank order (the order is part of the bank's stable layout).
TOPICS = {
    "countries": _country_questions,
    "elements": _element_questions,
    "books": _book_questions,
    "artworks": _artwork_questions,
    "music": _music_questions,
    "events": _event_questions,
    "units": _unit_questions,
    "how_many": lambda: _listed_questions("how_many.json", "how-many"),
    "science": lambda: _listed_questions("science.json", "science"),
    "discoveries": _discovery_questions,
    "landmarks": _landmark_questions,
}


@functools.lru_cache(maxsize=None)
def _specs() -> tuple[tuple[str, _Spec], ...]:
    """(topic, spec) for every question, validated once per process."""
    out = tuple((topic, spec) for topic, make in TOPICS.items() for spec in make())
    ids, texts = set(), set()
    for _, s in out:
        # Table mistakes (duplicate subjects, too few candidates) fail loudly here, not in a run.
        if s.question_id in ids:
            raise ValueError(f"duplicate question id {s.question_id!r} in the built-in fact tables")
        if _key(s.question_text) in texts:
            raise ValueError(f"duplicate question text {s.question_text!r} in the built-in fact tables")
        ids.add(s.question_id)
        texts.add(_key(s.question_text))
    return out


def topic_counts() -> dict[str, int]:
    """Number of questions per topic.

    >>> sum(topic_counts().values()) == bank_size()
    True
    """
    counts: dict[str, int] = {}
    for topic, _ in _specs():
        counts[topic] = counts.get(topic, 0) + 1
    return counts


def bank_size() -> int:
    """Number of questions in the bank (the same for every seed), without laying any out.

    >>> bank_size()
    1892
    """
    return len(_specs())


def build_question_bank(seed: int = 0) -> list[dict]:
    """All built-in questions in the normalised form, in a fixed order.

    ``seed`` only changes which distractors are drawn and where each option is placed; ids, texts,
    answers and order never change. Same seed -> identical output, in any process.

    >>> a, b = build_question_bank(0), build_question_bank(1)
    >>> [q["question_id"] for q in a] == [q["question_id"] for q in b]
    True
    >>> sorted({q["correct_answer_letter"] for q in a})
    ['A', 'B', 'C', 'D']
    """
    specs = _specs()
    # Exact letter balance: positions 0..3 round-robin, then a seeded permutation over the bank.
    positions = [i % len(LETTERS) for i in range(len(specs))]
    random.Random(seed).shuffle(positions)
    bank = []
    for (_, spec), correct_pos in zip(specs, positions):
        rng = question_rng(seed, spec.question_id)  # the loader's per-question RNG: same layout in any sample
        source = [spec.answer, *spec.distractors(rng)]  # unshuffled: correct first
        order = [1, 2, 3]
        rng.shuffle(order)
        order.insert(correct_pos, 0)
        options = {letter: source[i] for letter, i in zip(LETTERS, order)}
        if len({_key(o) for o in options.values()}) != len(LETTERS) or not all(o.strip() for o in options.values()):
            raise ValueError(f"{spec.question_id}: options must be 4 distinct non-blank strings, got {options}")
        bank.append({
            "question_id": spec.question_id,
            "question_text": spec.question_text,
            "options": options,
            "correct_answer_letter": LETTERS[correct_pos],
            "question_source": BANK_SOURCE,
            "option_source_index": order,
        })
    return bank
