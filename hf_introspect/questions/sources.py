"""Question loading: one entry point for every question source.

:func:`load_questions` returns a :class:`datasets.Dataset` with exactly :data:`QUESTION_FEATURES`
(question ids unique), whatever the source:

* ``None`` (or ``"builtin"``) -> the built-in bank (:mod:`hf_introspect.questions.bank`);
* a local file ``.jsonl`` / ``.json`` (a list of objects, or JSON lines) / ``.csv`` / ``.parquet``
  in one of these forms, recognised from its keys:

  - normalised: ``{question_id, question_text, options, correct_answer_letter}`` with ``options``
    a dict ``A``-``D`` or a list of 4 (CSV/parquet may use columns ``A``..``D`` instead);
    ``question_source`` / ``option_source_index``, when present (a re-loaded export), are kept;
  - TriviaMC: ``{qid, question, correct_answer, distractors: [3]}``;
  - the schema of a registered dataset (``cais/mmlu``, ``allenai/ai2_arc``, ...; see
    :mod:`hf_introspect.questions.adapters`), auto-detected or forced with ``source_format``;
  - anything else through a column mapping ``columns={"question", "answer", "options"[, "id"]}``;
* ``hub:REPO[:CONFIG][:SPLIT]`` -> :func:`datasets.load_dataset` through the adapter registry
  (a generic fallback tries common column names for unknown repos).

Rules (all seeded, all recorded in ``option_source_index``):

* the normalised form is checked strictly: exactly 4 options, no duplicates, no blanks (a file
  you wrote by hand should be fixed, not silently edited);
* converted forms drop blank and duplicate options; more than 4 -> the correct one plus 3
  distractors drawn with a per-question RNG; fewer than 4 -> the question is **skipped** and
  counted (one warning line on the ``hf_introspect`` logger; the count is in
  :class:`QuestionLoadReport` and in ``dataset.info.description``);
* options are shuffled (per-question RNG) when the source always puts the correct answer first
  (TriviaMC, SciQ, GPQA, TruthfulQA) and kept in source order otherwise; ``shuffle_options``
  forces either way.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import datasets

from ..errors import UserError
from ..schema import question_features
from .adapters import ADAPTERS, Adapter, find_adapter
from .convert import COLUMNS, NORMALISED, convert_rows
from .load_report import QuestionLoadReport
from .reading import builtin_rows, file_rows, hub_rows, where_name
from .selection import log_report, position_warnings, select_questions

QUESTION_FEATURES = datasets.Features(question_features())  # from the column registry (schema.py)

__all__ = ["QUESTION_FEATURES", "QuestionLoadReport", "load_questions", "load_questions_with_report",
           "parse_question_columns"]


def load_questions(source: str | None = None, **options) -> datasets.Dataset:
    """Load 4-option questions from any supported source as a Dataset with :data:`QUESTION_FEATURES`.

    Takes the arguments of :func:`load_questions_with_report` (``num_questions``, ``seed``,
    ``shuffle_options``, ``columns``, ``question_ids``, ``source_format``) and returns its dataset.

    Returns:
        The questions; ``dataset.info.description`` holds :meth:`QuestionLoadReport.summary`.
        Use :func:`load_questions_with_report` to get the report object.

    >>> import json, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "q.jsonl")
    >>> with open(path, "w") as f:
    ...     _ = f.write(json.dumps({"qid": "q1", "question": "2+2?", "correct_answer": "4",
    ...                             "distractors": ["3", "5", "22"]}) + "\\n")
    >>> ds = load_questions(path, seed=0)
    >>> row = ds[0]
    >>> row["question_source"], row["options"][row["correct_answer_letter"]]
    ('file:q.jsonl', '4')
    >>> row["option_source_index"][ "ABCD".index(row["correct_answer_letter"]) ]
    0
    """
    return load_questions_with_report(source, **options)[0]


def load_questions_with_report(
    source: str | None = None,
    *,
    num_questions: int | None = None,
    seed: int = 0,
    shuffle_options: bool | None = None,
    columns: dict[str, str] | None = None,
    question_ids: str | list[str] | None = None,
    source_format: str | None = None,
) -> tuple[datasets.Dataset, QuestionLoadReport]:
    """Load 4-option questions from any source: the Dataset and the :class:`QuestionLoadReport`.

    Args:
        source: ``None``/``"builtin"``, a path (``.jsonl .json .csv .parquet``) or
            ``hub:REPO[:CONFIG][:SPLIT]`` (``hub:allenai/sciq::test`` or ``hub:allenai/sciq:test``
            for a split without a config).
        num_questions: a seeded sample of this many questions, kept in source order.
        seed: drives the built-in bank, the sample, distractor selection and option shuffling.
        shuffle_options: ``None`` = shuffle only sources whose correct answer sits in a fixed
            position; ``True``/``False`` force it.
        columns: a user mapping ``{"question": COL, "answer": COL, "options": COL or "C1,C2,..",
            "id": COL}``; the answer may be a letter, a 0-based index or the answer text.
        question_ids: exactly these ids, in this order: a list, or a path to a text file (one id
            per line) or a JSONL/JSON file with ``question_id`` (or ``qid``/``id``).
        source_format: force an adapter for a local file or a hub repo (e.g. ``"cais/mmlu"``,
            ``"mmlu"``, ``"triviamc"``, ``"normalised"``, ``"generic"``).

    Returns:
        ``(questions, report)``; ``questions.info.description`` holds :meth:`QuestionLoadReport.summary`.

    >>> ds, report = load_questions_with_report("hub:cais/mmlu", source_format="bogus")
    Traceback (most recent call last):
    ...
    hf_introspect.errors.UserError: unknown question format 'bogus'; choose one of normalised, triviamc, generic, cais/mmlu, allenai/ai2_arc, allenai/sciq, truthfulqa/truthful_qa, allenai/openbookqa, tau/commonsense_qa, Idavidrein/gpqa
    """
    _check_arguments(num_questions, seed, shuffle_options, columns, question_ids, source_format)
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    forced = _resolve_format(source_format) if source_format else None

    if source is None or source.strip() == "builtin":
        if columns or forced:
            raise UserError("--question_columns/--question_format apply to --questions PATH or hub:REPO, "
                            "not to the built-in bank")
        label, rows = builtin_rows(seed)
        form: str | Adapter = NORMALISED
    elif source.startswith("hub:"):
        label, rows, adapter = hub_rows(source, forced)
        form = NORMALISED if forced == NORMALISED else adapter
    else:
        path = Path(source).expanduser()
        label = f"file:{path.name}"
        rows = file_rows(path, source)
        form = forced if forced is not None else None  # detected from the first row below

    if columns:
        form = COLUMNS
    records, report = convert_rows(rows, form, label, seed=seed, shuffle_options=shuffle_options,
                                   columns=columns, where=where_name(source))
    records = select_questions(records, report, num_questions=num_questions, seed=seed, question_ids=question_ids)
    report.selected = len(records)
    report.warnings.extend(position_warnings(records, report))
    log_report(report)
    info = datasets.DatasetInfo(description=report.summary(), features=QUESTION_FEATURES)
    return datasets.Dataset.from_list(records, features=QUESTION_FEATURES, info=info), report


# ---------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------


def _check_arguments(num_questions, seed, shuffle_options, columns, question_ids, source_format) -> None:
    if num_questions is not None:
        if isinstance(num_questions, bool) or not isinstance(num_questions, int):
            raise UserError(f"--num_questions must be a whole number (got {num_questions!r}); "
                            "omit it to use every question")
        if num_questions <= 0:
            raise UserError(f"--num_questions must be >= 1 (got {num_questions}); omit it to use every question")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise UserError(f"--seed must be a whole number (got {seed!r})")
    if shuffle_options not in (None, True, False):
        raise UserError(f"--shuffle_options must be true or false (got {shuffle_options!r})")
    if num_questions is not None and question_ids is not None:
        raise UserError("--num_questions and --question_ids both select questions; use one of them")
    if columns is not None and source_format is not None:
        raise UserError("--question_columns and --question_format both say how to read the source; use one")
    if columns is not None and not isinstance(columns, Mapping):
        raise UserError(f"--question_columns must map question/answer/options/id to column names (got {columns!r})")


def parse_question_columns(spec: str) -> dict[str, str]:
    """Parse a column mapping from the command line: ``key=COL,key=COL,...`` or a JSON object.

    A comma followed by a name without ``=`` continues the previous value, so ``options`` can list
    several columns.

    >>> parse_question_columns("question=Q,answer=Ans,options=o1,o2,o3,o4,id=ID")
    {'question': 'Q', 'answer': 'Ans', 'options': 'o1,o2,o3,o4', 'id': 'ID'}
    >>> parse_question_columns('{"question": "Q", "answer": "Ans", "options": "choices"}')["options"]
    'choices'
    """
    spec = spec.strip()
    if spec.startswith("{"):
        try:
            mapping = json.loads(spec)
        except json.JSONDecodeError as exc:
            raise UserError(f"--question_columns is not valid JSON ({exc.msg}); use question=COL,answer=COL,"
                            "options=COL1,COL2,...") from None
        if not isinstance(mapping, dict) or not all(isinstance(v, str) for v in mapping.values()):
            raise UserError("--question_columns JSON must be an object of column names, e.g. "
                            '{"question": "Q", "answer": "A", "options": "o1,o2,o3,o4"}')
        return mapping
    mapping: dict[str, str] = {}
    last = None
    for token in spec.split(","):
        if "=" in token:
            key, value = token.split("=", 1)
            last = key.strip()
            mapping[last] = value.strip()
        elif last is not None and token.strip():
            mapping[last] += "," + token.strip()
        elif token.strip():
            raise UserError(f"--question_columns: {token.strip()!r} has no key; use question=COL,answer=COL,"
                            "options=COL1,COL2,...")
    return mapping


def _resolve_format(name: str) -> str | Adapter:
    key = name.strip().casefold()
    if key in ("normalised", "normalized"):
        return NORMALISED
    adapter = find_adapter(name)
    if adapter is None:
        choices = ", ".join(["normalised", "triviamc", "generic", *[a for a in ADAPTERS if a != "triviamc"]])
        raise UserError(f"unknown question format {name!r}; choose one of {choices}")
    return adapter
