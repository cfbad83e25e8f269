"""Adapters from multiple-choice datasets to :class:`~.records.SourceQuestion`: one pure function per
dataset schema (row -> question text, options as received, index of the correct one), the generic
fallback, user column mappings, and the registry :data:`ADAPTERS` with detection from a file's keys.

What happens next (option-count rules, shuffle, the normalised record) is :func:`.records.build_record`.

Adding a dataset: write ``def adapt_my_dataset(row) -> SourceQuestion`` and register an
:class:`Adapter` in :data:`ADAPTERS` (key = the Hub repo id). ``signature`` lets local files in
that schema be recognised from their keys.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import UserError
from .records import RowProblem, SourceQuestion, clean_text, option_key


# ---------------------------------------------------------------------------------------------
# Helpers shared by adapters
# ---------------------------------------------------------------------------------------------


def _short(value: Any, limit: int = 60) -> str:
    """A one-line, bounded repr for error messages (repr escapes newlines)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _get(row: Mapping, key: str) -> Any:
    if key not in row:
        found = ", ".join(map(str, row)) or "none"
        raise RowProblem(f"missing required key {key!r} (keys found: {found})")
    return row[key]


def _as_list(value: Any, what: str) -> list:
    """A list from a list/tuple/array, or from a JSON-encoded list (CSV cells can't nest)."""
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise RowProblem(f"{what} looks like a JSON list but does not parse ({exc.msg})") from None
    if hasattr(value, "tolist") and not isinstance(value, str):  # numpy arrays from parquet/pandas
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        raise RowProblem(f"{what} must be a list, got {_short(value)}")
    return list(value)


def _optional_id(row: Mapping, *keys: str) -> str | None:
    for key in keys:
        value = row.get(key)
        if value is not None and clean_text(value):
            return clean_text(value)
    return None


def resolve_answer(answer: Any, options: Sequence[str], labels: Sequence[Any] | None = None) -> int | None:
    """Index of the correct option from an answer given as a label, text, letter or index.

    Order of interpretation (documented because CSV answers are all strings):
    ``None``/blank -> ``None`` (unlabelled); a matching label (when the source labels its
    options, e.g. ARC's ``"1".."4"``); an int -> 0-based index; a string equal to an option's text
    (case-insensitive); a single capital letter -> A=0, B=1, ...; a digit string -> 0-based index.

    >>> resolve_answer("Paris", ["Rome", "Paris", "Oslo", "Bern"])
    1
    >>> resolve_answer("C", ["Rome", "Paris", "Oslo", "Bern"]), resolve_answer(3, ["a", "b", "c", "d"])
    (2, 3)
    >>> resolve_answer("2", ["x", "y", "z"], labels=["1", "2", "3"])
    1
    """
    if answer is None or (isinstance(answer, str) and not answer.strip()):
        return None
    if labels is not None:
        label_keys = [clean_text(label) for label in labels]
        if clean_text(answer) in label_keys:
            return label_keys.index(clean_text(answer))
        raise RowProblem(f"answer {_short(answer)} is not one of the option labels {label_keys}")
    if isinstance(answer, bool):
        raise RowProblem(f"answer {answer!r} is a boolean; give a letter, a 0-based index or the answer text")
    n = len(options)
    if isinstance(answer, int) or (hasattr(answer, "is_integer") and float(answer).is_integer()):
        index = int(answer)
        if not 0 <= index < n:
            raise RowProblem(f"answer index {index} is outside the {n} options (indexes are 0-based)")
        return index
    text = clean_text(answer)
    keys = [option_key(o) for o in options]
    if option_key(text) in keys:
        return keys.index(option_key(text))
    if len(text) == 1 and "A" <= text <= "Z":
        index = ord(text) - ord("A")
        if index >= n:
            raise RowProblem(f"answer letter {text!r} is past the {n} options (A-{chr(ord('A') + n - 1)})")
        return index
    if text.isdigit():
        index = int(text)
        if index >= n:
            raise RowProblem(f"answer index {index} is outside the {n} options (indexes are 0-based)")
        return index
    raise RowProblem(
        f"answer {_short(answer)} is not one of the options, a letter or a 0-based index"
    )


def _labelled_choices(choices: Any, answer: Any) -> tuple[tuple[str, ...], int | None]:
    """``{"text": [...], "label": [...]}`` choices (ARC, OpenBookQA, CommonsenseQA)."""
    if isinstance(choices, str):
        try:
            choices = json.loads(choices)
        except json.JSONDecodeError:
            pass
    if not isinstance(choices, Mapping) or "text" not in choices:
        raise RowProblem(f"'choices' must be {{'text': [...], 'label': [...]}}, got {_short(choices)}")
    texts = _as_list(choices["text"], "'choices.text'")
    labels = _as_list(choices["label"], "'choices.label'") if "label" in choices else None
    if labels is not None and len(labels) != len(texts):
        raise RowProblem(f"'choices' has {len(texts)} texts but {len(labels)} labels")
    return tuple(clean_text(t) for t in texts), resolve_answer(answer, texts, labels)


# ---------------------------------------------------------------------------------------------
# Per-dataset adapters: pure functions row -> SourceQuestion
# ---------------------------------------------------------------------------------------------


def adapt_triviamc(row: Mapping) -> SourceQuestion:
    """TriviaMC JSONL: ``{qid, question, correct_answer, distractors: [3]}``; source list = [correct, *distractors].

    >>> adapt_triviamc({"qid": "t1", "question": "Q?", "correct_answer": "a", "distractors": ["b", "c", "d"]})
    SourceQuestion(question_id='t1', question_text='Q?', options=('a', 'b', 'c', 'd'), correct_index=0)
    """
    distractors = _as_list(_get(row, "distractors"), "'distractors'")
    return SourceQuestion(
        question_id=clean_text(_get(row, "qid")),
        question_text=clean_text(_get(row, "question")),
        options=(clean_text(_get(row, "correct_answer")), *(clean_text(d) for d in distractors)),
        correct_index=0,
    )


def adapt_mmlu(row: Mapping) -> SourceQuestion:
    """``cais/mmlu``: ``question``, ``choices`` (list of 4), ``answer`` (ClassLabel index 0-3).

    >>> adapt_mmlu({"question": "Q?", "subject": "x", "choices": ["a", "b", "c", "d"], "answer": 2}).correct_index
    2
    """
    choices = tuple(clean_text(c) for c in _as_list(_get(row, "choices"), "'choices'"))
    return SourceQuestion(None, clean_text(_get(row, "question")), choices,
                          resolve_answer(_get(row, "answer"), choices))


def adapt_labelled_choices(row: Mapping) -> SourceQuestion:
    """``allenai/ai2_arc`` and ``tau/commonsense_qa``: ``question``, ``choices {text, label}``, ``answerKey``.

    Labels may be letters or ``"1".."4"``; ARC has 3-5 options, CommonsenseQA 5; the CommonsenseQA
    test split has a blank ``answerKey`` (those rows are skipped as unlabelled).

    >>> adapt_labelled_choices({"id": "x1", "question": "Q?", "answerKey": "3",
    ...     "choices": {"text": ["a", "b", "c", "d"], "label": ["1", "2", "3", "4"]}}).correct_index
    2
    """
    options, correct = _labelled_choices(_get(row, "choices"), _get(row, "answerKey"))
    return SourceQuestion(_optional_id(row, "id"), clean_text(_get(row, "question")), options, correct)


def adapt_openbookqa(row: Mapping) -> SourceQuestion:
    """``allenai/openbookqa``: ``question_stem``, ``choices {text, label}``, ``answerKey``.

    >>> adapt_openbookqa({"id": "7-980", "question_stem": "Q?", "answerKey": "D",
    ...     "choices": {"text": ["a", "b", "c", "d"], "label": ["A", "B", "C", "D"]}}).correct_index
    3
    """
    options, correct = _labelled_choices(_get(row, "choices"), _get(row, "answerKey"))
    return SourceQuestion(_optional_id(row, "id"), clean_text(_get(row, "question_stem")), options, correct)


def adapt_sciq(row: Mapping) -> SourceQuestion:
    """``allenai/sciq``: ``question``, ``correct_answer``, ``distractor1-3``; source list = [correct, d1, d2, d3].

    >>> adapt_sciq({"question": "Q?", "correct_answer": "a", "distractor1": "b",
    ...             "distractor2": "c", "distractor3": "d", "support": ""}).options
    ('a', 'b', 'c', 'd')
    """
    options = (clean_text(_get(row, "correct_answer")),
               *(clean_text(_get(row, f"distractor{k}")) for k in (1, 2, 3)))
    return SourceQuestion(None, clean_text(_get(row, "question")), options, 0)


def adapt_truthfulqa_mc(row: Mapping) -> SourceQuestion:
    """``truthfulqa/truthful_qa`` (``multiple_choice``): ``question``, ``mc1_targets {choices, labels}``.

    The correct option is the one with label 1 (exactly one in mc1); the count varies (2-13).

    >>> adapt_truthfulqa_mc({"question": "Q?", "mc1_targets": {"choices": ["t", "f1", "f2", "f3", "f4"],
    ...                      "labels": [1, 0, 0, 0, 0]}}).correct_index
    0
    """
    targets = _get(row, "mc1_targets")
    if not isinstance(targets, Mapping) or "choices" not in targets or "labels" not in targets:
        raise RowProblem(f"'mc1_targets' must be {{'choices': [...], 'labels': [...]}}, got {_short(targets)}")
    choices = _as_list(targets["choices"], "'mc1_targets.choices'")
    labels = [int(x) for x in _as_list(targets["labels"], "'mc1_targets.labels'")]
    if len(labels) != len(choices):
        raise RowProblem(f"'mc1_targets' has {len(choices)} choices but {len(labels)} labels")
    if labels.count(1) != 1:
        raise RowProblem(f"'mc1_targets.labels' must contain exactly one 1, got {labels}")
    return SourceQuestion(None, clean_text(_get(row, "question")),
                          tuple(clean_text(c) for c in choices), labels.index(1))


def adapt_gpqa(row: Mapping) -> SourceQuestion:
    """``Idavidrein/gpqa``: ``Question``, ``Correct Answer``, ``Incorrect Answer 1-3``; list = [correct, i1, i2, i3].

    >>> adapt_gpqa({"Record ID": "rec1", "Question": "Q?", "Correct Answer": "a", "Incorrect Answer 1": "b",
    ...             "Incorrect Answer 2": "c", "Incorrect Answer 3": "d"}).question_id
    'rec1'
    """
    options = (clean_text(_get(row, "Correct Answer")),
               *(clean_text(_get(row, f"Incorrect Answer {k}")) for k in (1, 2, 3)))
    return SourceQuestion(_optional_id(row, "Record ID"), clean_text(_get(row, "Question")), options, 0)


# Column names the generic fallback tries, most specific first.
GENERIC_QUESTION_KEYS = ("question_text", "question", "Question", "question_stem", "query", "prompt",
                         "problem", "input")
GENERIC_OPTION_KEYS = ("options", "choices", "answers", "endings", "candidates")
GENERIC_ANSWER_KEYS = ("correct_answer_letter", "answerKey", "answer_key", "answer", "correct_answer",
                       "answer_idx", "answer_index", "label", "gold", "target", "correct")
GENERIC_ID_KEYS = ("question_id", "qid", "id", "uid", "ID", "Record ID")


def adapt_generic(row: Mapping) -> SourceQuestion:
    """Fallback for unknown datasets: tries common column names for question, options and answer.

    Options may be a list, ``{"text": [...], "label": [...]}`` or ``{"A": ..., "B": ...}``; the
    answer is read with :func:`resolve_answer`.

    >>> adapt_generic({"id": 7, "prompt": "Q?", "choices": ["a", "b", "c", "d"], "label": "b"}).correct_index
    1
    """
    def first(keys: Sequence[str], what: str) -> str:
        for key in keys:
            if key in row:
                return key
        raise RowProblem(
            f"no {what} column found (tried {', '.join(keys)}; keys found: {', '.join(map(str, row))})"
        )

    q_key, o_key, a_key = (first(GENERIC_QUESTION_KEYS, "question"), first(GENERIC_OPTION_KEYS, "options"),
                           first(GENERIC_ANSWER_KEYS, "answer"))
    raw = row[o_key]
    if isinstance(raw, Mapping) and "text" in raw:
        options, correct = _labelled_choices(raw, row[a_key])
    else:
        if isinstance(raw, Mapping):
            raw = [raw[k] for k in sorted(raw)]
        options = tuple(clean_text(o) for o in _as_list(raw, repr(o_key)))
        correct = resolve_answer(row[a_key], options)
    return SourceQuestion(_optional_id(row, *GENERIC_ID_KEYS), clean_text(row[q_key]), options, correct)


def make_columns_adapter(columns: Mapping[str, str]) -> Callable[[Mapping], SourceQuestion]:
    """An adapter for a user column mapping ``{"question", "answer", "options"[, "id"]}``.

    ``options`` names one list column, or several columns separated by commas (one option each,
    in that order); ``answer`` may hold a letter, a 0-based index or the answer text.

    >>> adapt = make_columns_adapter({"question": "q", "answer": "ans", "options": "o1,o2,o3,o4"})
    >>> adapt({"q": "Q?", "o1": "a", "o2": "b", "o3": "c", "o4": "d", "ans": "B"}).correct_index
    1
    """
    allowed = {"question", "answer", "options", "id"}
    unknown = sorted(set(columns) - allowed)
    if unknown:
        raise UserError(f"unknown column mapping key(s) {', '.join(unknown)}; use question=, answer=, options= "
                        "and optionally id=")
    missing = [k for k in ("question", "answer", "options") if not columns.get(k)]
    if missing:
        raise UserError(f"the column mapping needs {', '.join(missing)}=COLUMN too, e.g. "
                        "question=Question,answer=Answer,options=A,B,C,D")
    option_columns = [c.strip() for c in columns["options"].split(",") if c.strip()]

    def adapt(row: Mapping) -> SourceQuestion:
        if len(option_columns) == 1:
            raw = _get(row, option_columns[0])
            if isinstance(raw, Mapping) and "text" in raw:
                options, correct = _labelled_choices(raw, _get(row, columns["answer"]))
                return SourceQuestion(_column_id(row), clean_text(_get(row, columns["question"])), options, correct)
            options = tuple(clean_text(o) for o in _as_list(raw, repr(option_columns[0])))
        else:
            options = tuple(clean_text(_get(row, c)) for c in option_columns)
        correct = resolve_answer(_get(row, columns["answer"]), options)
        return SourceQuestion(_column_id(row), clean_text(_get(row, columns["question"])), options, correct)

    def _column_id(row: Mapping) -> str | None:
        return clean_text(_get(row, columns["id"])) if columns.get("id") else None

    return adapt


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Adapter:
    """A registered source format.

    ``correct_first``: the source always lists the correct option first, so options are shuffled
    unless the user says otherwise. ``signature``: keys that identify the schema in a local file.
    ``default_config``/``default_split``: used for ``hub:REPO`` when the user gives none.

    >>> a = ADAPTERS["cais/mmlu"]
    >>> a.name, a.correct_first, a.default_config, a.default_split
    ('cais/mmlu', False, 'all', 'test')
    """

    name: str
    adapt: Callable[[Mapping], SourceQuestion]
    id_prefix: str
    correct_first: bool
    signature: tuple[str, ...]
    default_config: str | None = None
    default_split: str | None = None
    aliases: tuple[str, ...] = ()


ADAPTERS: dict[str, Adapter] = {
    a.name: a
    for a in (
        Adapter("cais/mmlu", adapt_mmlu, "mmlu", False, ("question", "choices", "answer"),
                "all", "test", ("mmlu",)),
        Adapter("allenai/ai2_arc", adapt_labelled_choices, "arc", False, ("question", "choices", "answerKey"),
                "ARC-Challenge", "test", ("ai2_arc", "arc")),
        Adapter("allenai/sciq", adapt_sciq, "sciq", True,
                ("question", "correct_answer", "distractor1", "distractor2", "distractor3"),
                None, "test", ("sciq",)),
        Adapter("truthfulqa/truthful_qa", adapt_truthfulqa_mc, "truthfulqa", True, ("question", "mc1_targets"),
                "multiple_choice", "validation", ("truthful_qa", "truthfulqa")),
        Adapter("allenai/openbookqa", adapt_openbookqa, "openbookqa", False,
                ("question_stem", "choices", "answerKey"), "main", "test", ("openbookqa",)),
        # CommonsenseQA's test split is unlabelled, hence validation by default.
        Adapter("tau/commonsense_qa", adapt_labelled_choices, "csqa", False,
                ("question", "question_concept", "choices", "answerKey"), None, "validation",
                ("commonsense_qa",)),
        Adapter("Idavidrein/gpqa", adapt_gpqa, "gpqa", True,
                ("Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3"),
                "gpqa_main", "train", ("gpqa",)),
        # Local-file forms (not Hub repos) use the same machinery.
        Adapter("triviamc", adapt_triviamc, "triviamc", True, ("qid", "question", "correct_answer", "distractors")),
    )
}
GENERIC = Adapter("generic", adapt_generic, "q", False, ())

# Detection order for local files: most specific signature first (CommonsenseQA before ARC, since
# its rows also carry ARC's keys; both use the same adapter anyway).
DETECTION_ORDER = sorted(ADAPTERS.values(), key=lambda a: -len(a.signature))


def find_adapter(name: str) -> Adapter | None:
    """The adapter for a Hub repo id or alias (case-insensitive), or ``None``.

    >>> find_adapter("CAIS/MMLU").name, find_adapter("arc").name, find_adapter("nope/nope")
    ('cais/mmlu', 'allenai/ai2_arc', None)
    """
    key = name.strip().casefold()
    if key == "generic":
        return GENERIC
    for adapter in ADAPTERS.values():
        if key == adapter.name.casefold() or key in (a.casefold() for a in adapter.aliases):
            return adapter
    return None


def detect_adapter(keys: Sequence[str]) -> Adapter | None:
    """The registered adapter whose signature keys are all present, or ``None``.

    >>> detect_adapter(["question", "subject", "choices", "answer"]).name
    'cais/mmlu'
    """
    present = set(keys)
    for adapter in DETECTION_ORDER:
        if set(adapter.signature) <= present:
            return adapter
    return None
