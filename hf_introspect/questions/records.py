"""The normalised question record and the option-count rules that produce it.

Every question source (a Hugging Face Hub dataset, a local file in such a dataset's schema, the
TriviaMC JSONL form, a user column mapping) goes through two pure steps:

1. an **adapter** turns one source row into a :class:`SourceQuestion`: the question text, the
   source's option list *as received* and the index of the correct option in that list;
2. :func:`build_record` applies the option-count rules, the optional shuffle, and returns the
   normalised record the collector relies on (or a :class:`Skipped` saying why it can't be used)::

    {"question_id": str, "question_text": str, "options": {"A": str, "B": str, "C": str, "D": str},
     "correct_answer_letter": "A".."D", "question_source": str,
     "option_source_index": [int, int, int, int]}

``option_source_index[k]`` is the index, in the source's option list (step 1, before dropping or
shuffling), of the option shown as letter ``"ABCD"[k]``, so every result maps back to the source.

Option-count rules (explicit and seeded, see :func:`build_record`):

* blank options and duplicates (compared case-insensitively, whitespace stripped) are dropped;
  the correct option is always kept;
* more than 4 remaining -> keep the correct one plus 3 distractors drawn with a per-question RNG
  (seed + crc32 of the question id), kept in their source order;
* fewer than 4 remaining -> the question is skipped (and counted by the caller), since options
  can't be invented.

The adapters (step 1) are in :mod:`hf_introspect.questions.adapters`.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass
from typing import Any

from ..errors import UserError
from ..passes import ANSWER_LABELS

LETTERS = ANSWER_LABELS  # the option letters: one owner, hf_introspect.passes
NUM_OPTIONS = len(LETTERS)


class RowProblem(UserError):
    """A source row that can't be converted; the caller prefixes the file/row location.

    >>> raise RowProblem("'choices' must be a list")
    Traceback (most recent call last):
    ...
    hf_introspect.questions.records.RowProblem: 'choices' must be a list
    """


@dataclass(frozen=True)
class SourceQuestion:
    """One question as an adapter read it, before the option-count rules.

    ``options`` is the source's option list as received (its indexes are what
    ``option_source_index`` refers to); ``correct_index`` points into it, or is ``None`` when the
    row has no answer (e.g. an unlabelled test split), which makes the question skipped.
    ``question_id`` is ``None`` when the source has no id column (the caller numbers the rows).

    >>> SourceQuestion(None, "2+2?", ("4", "3", "5", "22"), correct_index=0).options[0]
    '4'
    """

    question_id: str | None
    question_text: str
    options: tuple[str, ...]
    correct_index: int | None


@dataclass(frozen=True)
class Skipped:
    """A question that can't be used, with a short reason (used as a counting key).

    >>> build_record(SourceQuestion("q1", "2+2?", ("4", "3", "3", "5"), 0), question_id="q1", seed=0,
    ...              shuffle=False, source="x")
    Skipped(question_id='q1', reason='fewer than 4 options left after dropping duplicates/blanks')
    """

    question_id: str
    reason: str


# Reasons are counting keys: keep them short and stable.
SKIP_NO_ANSWER = "no correct answer given (unlabelled row)"
SKIP_BLANK_CORRECT = "correct answer is blank"
SKIP_FEWER = "fewer than 4 options"
SKIP_FEWER_DISTINCT = "fewer than 4 options left after dropping duplicates/blanks"


def question_rng(seed: int, question_id: str) -> random.Random:
    """The per-question RNG: depends only on the seed and the question id.

    crc32 (not Python's salted ``hash()``) keeps it identical across processes and machines, and
    because it ignores the rest of the data set, a question is laid out the same way whichever
    sample it appears in.

    >>> question_rng(0, "q1").random() == question_rng(0, "q1").random()
    True
    >>> question_rng(0, "q1").random() == question_rng(1, "q1").random()
    False
    """
    return random.Random(int(seed) * 0x1_0000_0000 + zlib.crc32(question_id.encode("utf-8")))


def option_key(text: str) -> str:
    """The comparison key for duplicate detection: whitespace-stripped, case-folded.

    >>> option_key("  New   York ") == option_key("new york")
    True
    """
    return " ".join(str(text).split()).casefold()


def clean_text(value: Any) -> str:
    """Source values as display text: ``None`` -> ``""``, numbers -> ``str``, outer whitespace off.

    >>> clean_text(None), clean_text(42), clean_text("  Paris ")
    ('', '42', 'Paris')
    """
    if value is None:
        return ""
    return str(value).strip()


def build_record(
    question: SourceQuestion, *, question_id: str, seed: int, shuffle: bool, source: str
) -> dict | Skipped:
    """Apply the option-count rules (and the optional shuffle) to one adapted question.

    Returns the normalised record, or :class:`Skipped` when fewer than 4 usable options remain.
    The correct option is always kept; with more than 4 options, 3 distractors are drawn with
    :func:`question_rng`; the kept options stay in source order unless ``shuffle``.

    >>> q = SourceQuestion("q1", "2+2?", ("4", "3", "5", "22", "1"), 0)
    >>> r = build_record(q, question_id="q1", seed=0, shuffle=False, source="demo")
    >>> r["options"][r["correct_answer_letter"]], r["option_source_index"][0]
    ('4', 0)
    >>> build_record(SourceQuestion("q2", "?", ("a", "b", "B"), 0), question_id="q2", seed=0,
    ...              shuffle=False, source="demo").reason
    'fewer than 4 options'
    """
    options = [clean_text(o) for o in question.options]
    correct = question.correct_index
    if correct is None:
        return Skipped(question_id, SKIP_NO_ANSWER)
    if not 0 <= correct < len(options):
        raise RowProblem(f"correct option index {correct} is outside the {len(options)} options")
    if not options[correct]:
        return Skipped(question_id, SKIP_BLANK_CORRECT)
    if len(options) < NUM_OPTIONS:
        return Skipped(question_id, SKIP_FEWER)

    # Drop blanks and duplicates, keeping the correct option whatever its position: a distractor
    # equal to the right answer is the same option shown twice, not a second right answer.
    seen = {option_key(options[correct])}
    distractors = []
    for i, text in enumerate(options):
        if i == correct or not text or option_key(text) in seen:
            continue
        seen.add(option_key(text))
        distractors.append(i)
    if len(distractors) < NUM_OPTIONS - 1:
        return Skipped(question_id, SKIP_FEWER_DISTINCT)

    rng = question_rng(seed, question_id)
    if len(distractors) > NUM_OPTIONS - 1:
        distractors = sorted(rng.sample(distractors, NUM_OPTIONS - 1))
    chosen = sorted([correct, *distractors])
    if shuffle:
        rng.shuffle(chosen)
    return {
        "question_id": question_id,
        "question_text": clean_text(question.question_text),
        "options": {letter: options[i] for letter, i in zip(LETTERS, chosen)},
        "correct_answer_letter": LETTERS[chosen.index(correct)],
        "question_source": source,
        "option_source_index": chosen,
    }
