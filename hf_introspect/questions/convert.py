"""Converting source rows to normalised records: detect the row form, run its adapter (or check a
normalised row strictly), apply the option-count rules, and count what was skipped and why.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import UserError
from .adapters import ADAPTERS, Adapter, detect_adapter, make_columns_adapter
from .load_report import QuestionLoadReport
from .reading import Rows
from .records import LETTERS, RowProblem, Skipped, SourceQuestion, build_record, clean_text, option_key

NORMALISED = "normalised"
COLUMNS = "columns"
ACCEPTED_FORMS = (
    "normalised {question_id, question_text, options, correct_answer_letter}, "
    "TriviaMC {qid, question, correct_answer, distractors}, "
    f"a dataset schema ({', '.join(a for a in ADAPTERS if a != 'triviamc')}; force one with --question_format), "
    "or map your columns with --question_columns question=COL,answer=COL,options=COL1,COL2,..."
)


def convert_rows(rows: Rows, form: str | Adapter | None, label: str, *, seed: int, shuffle_options: bool | None,
                     columns: Mapping[str, str] | None, where: str) -> tuple[list[dict], QuestionLoadReport]:
    """Normalised records from source rows (``form``: an :class:`Adapter`, ``NORMALISED``, ``COLUMNS``
    or ``None`` to detect it from the first row), and the report of what was skipped and why.

    >>> rows = [("q.jsonl:1", {"qid": "q1", "question": "2+2?", "correct_answer": "4", "distractors": ["3", "5", "6"]}),
    ...         ("q.jsonl:2", {"qid": "q2", "question": "1+1?", "correct_answer": "2", "distractors": ["3", "3", "3"]})]
    >>> records, report = convert_rows(rows, None, "file:q.jsonl", seed=0, shuffle_options=None, columns=None,
    ...                                where="q.jsonl")
    >>> [r["question_id"] for r in records], report.skipped
    (['q1'], {'fewer than 4 options left after dropping duplicates/blanks': 1})
    """
    if form is None:
        form = _detect_form(rows[0][1], where)
    if form == COLUMNS:
        adapt, correct_first, form_name = make_columns_adapter(columns or {}), False, "column-mapping"
        prefix = Path(label.split(":", 1)[-1]).stem if label.startswith("file:") else "q"
        _check_columns_exist(columns or {}, rows[0], where)
    elif form == NORMALISED:
        adapt, correct_first, form_name, prefix = None, False, NORMALISED, ""
    else:
        adapt, correct_first, form_name = form.adapt, form.correct_first, form.name
        prefix = form.id_prefix
        if label.startswith("hub:") and label.count(":") == 3:
            prefix += "_" + label.rsplit(":", 1)[1]  # e.g. mmlu_test_17
    shuffle = correct_first if shuffle_options is None else shuffle_options
    report = QuestionLoadReport(source=label, form=form_name, rows=len(rows), shuffled=shuffle, seed=seed)

    records: list[dict] = []
    first_seen: dict[str, str] = {}
    for index, (location, row) in enumerate(rows):
        try:
            if adapt is None:
                result = _normalised_record(row, seed=seed, shuffle=shuffle, source=label)
            else:
                question = adapt(row)
                qid = question.question_id if question.question_id is not None else f"{prefix}_{index}"
                _check_question(question, qid)
                result = build_record(question, question_id=qid, seed=seed, shuffle=shuffle, source=label)
        except RowProblem as exc:
            raise UserError(f"{location}: {exc}{_fix_hint(form_name)}") from None
        qid = result.question_id if isinstance(result, Skipped) else result["question_id"]
        if qid in first_seen:
            raise UserError(f"{location}: duplicate question id {qid!r} (first at {first_seen[qid]}); "
                            "make question ids unique")
        first_seen[qid] = location
        if isinstance(result, Skipped):
            report.skipped[result.reason] = report.skipped.get(result.reason, 0) + 1
            examples = report.skipped_ids.setdefault(result.reason, [])
            if len(examples) < 3:
                examples.append(qid)
        else:
            records.append(result)
    report.usable = len(records)
    if not records:
        raise UserError(f"{where}: none of the {len(rows)} questions is usable ({report.reasons()}); every "
                        "question needs 4 distinct non-blank options")
    return records, report


def _detect_form(row: Mapping, where: str) -> str | Adapter:
    keys = set(row)
    if {"question_text", "correct_answer_letter"} <= keys:
        return NORMALISED
    adapter = detect_adapter(list(keys))
    if adapter is None:
        found = ", ".join(map(str, row)) or "none"
        raise UserError(f"{where}: unrecognised question format (keys found: {found}); accepted: {ACCEPTED_FORMS}")
    return adapter


def _check_columns_exist(columns: Mapping[str, str], first: tuple[str, Mapping], where: str) -> None:
    # Checked once up front so a typo in the mapping is reported as such, not as a bad first row.
    location, row = first
    wanted = [columns[k] for k in ("question", "answer", "id") if columns.get(k)]
    wanted += [c.strip() for c in columns.get("options", "").split(",") if c.strip()]
    missing = [c for c in wanted if c not in row]
    if missing:
        raise UserError(f"{where}: --question_columns names column(s) {', '.join(missing)} that the source lacks "
                        f"(columns found: {', '.join(map(str, row))})")


def _check_question(question: SourceQuestion, qid: str) -> None:
    if not qid:
        raise RowProblem("empty question id")
    if not question.question_text:
        raise RowProblem("empty question text")


def _fix_hint(form_name: str) -> str:
    if form_name == NORMALISED:
        return "; fix that question in the file"
    if form_name == "column-mapping":
        return "; fix the row or the --question_columns mapping"
    return f"; fix the row or check that the source really is in the {form_name} format"


NORMALISED_KEYS = ("question_id", "question_text", "correct_answer_letter")


def _normalised_record(row: Mapping, *, seed: int, shuffle: bool, source: str) -> dict:
    """Strictly validate a record in the normalised form and lay it out (optionally shuffled)."""
    for key in NORMALISED_KEYS:
        if key not in row:
            raise RowProblem(f"missing required key {key!r} (keys found: {', '.join(map(str, row))})")
    options = _normalised_options(row)
    qid = clean_text(row["question_id"])
    text = clean_text(row["question_text"])
    if not qid:
        raise RowProblem("empty question_id")
    if not text:
        raise RowProblem(f"question {qid!r} has empty question_text")
    for letter, option in zip(LETTERS, options):
        if not option:
            raise RowProblem(f"question {qid!r} has an empty option {letter}")
    keys = [option_key(o) for o in options]
    for i, key in enumerate(keys):
        if key in keys[:i]:
            raise RowProblem(f"question {qid!r} has duplicate options {LETTERS[keys.index(key)]} and {LETTERS[i]} "
                             f"({options[i]!r}); options must differ (case-insensitive)")
    letter = clean_text(row["correct_answer_letter"]).upper()
    if letter not in LETTERS:
        raise RowProblem(f"question {qid!r} has correct_answer_letter {row['correct_answer_letter']!r}; "
                         "it must be one of A, B, C, D")
    record = build_record(SourceQuestion(qid, text, tuple(options), LETTERS.index(letter)),
                          question_id=qid, seed=seed, shuffle=shuffle, source=source)
    assert not isinstance(record, Skipped)  # 4 distinct non-blank options were checked above
    # A re-loaded export keeps its provenance: compose its mapping with ours.
    previous = row.get("option_source_index")
    if previous is not None:
        previous = _int_list(previous)
        record["option_source_index"] = [previous[i] for i in record["option_source_index"]]
    if clean_text(row.get("question_source")):
        record["question_source"] = clean_text(row["question_source"])
    return record


def _normalised_options(row: Mapping) -> list[str]:
    if "options" in row:
        options = row["options"]
    elif all(letter in row for letter in LETTERS):  # flat CSV/parquet columns A..D
        options = {letter: row[letter] for letter in LETTERS}
    elif all(f"options.{letter}" in row for letter in LETTERS):  # pandas json_normalize columns
        options = {letter: row[f"options.{letter}"] for letter in LETTERS}
    else:
        raise RowProblem(f"missing required key 'options' (keys found: {', '.join(map(str, row))})")
    if isinstance(options, str):
        try:
            options = json.loads(options)
        except json.JSONDecodeError:
            raise RowProblem(f"'options' must be a dict A-D or a list of 4, got {options[:60]!r}") from None
    if hasattr(options, "tolist"):
        options = options.tolist()
    if isinstance(options, Mapping):
        extra = sorted(str(k) for k in options if k not in LETTERS)
        present = [letter for letter in LETTERS if letter in options]
        if extra or len(present) != 4:
            raise RowProblem(f"'options' has keys {', '.join(map(str, options))}; exactly 4 options A, B, C, D are "
                             "required (for other counts use a dataset format or --question_columns)")
        return [clean_text(options[letter]) for letter in LETTERS]
    if isinstance(options, (list, tuple)):
        if len(options) != 4:
            raise RowProblem(f"'options' has {len(options)} entries; exactly 4 are required (for other counts "
                             "use a dataset format or --question_columns)")
        return [clean_text(o) for o in options]
    raise RowProblem(f"'options' must be a dict A-D or a list of 4, got {type(options).__name__}")


def _int_list(value: Any) -> list[int]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
    if hasattr(value, "tolist"):
        value = value.tolist()
    if (not isinstance(value, (list, tuple)) or len(value) != 4
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        raise RowProblem(f"'option_source_index' must be a list of 4 integers, got {str(value)[:60]!r}")
    return list(value)
