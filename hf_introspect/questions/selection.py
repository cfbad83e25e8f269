"""Selecting questions (``--num_questions`` sample, ``--question_ids``) and reporting the load."""

from __future__ import annotations

import logging
import os
import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from ..errors import UserError
from .load_report import QuestionLoadReport
from .reading import json_rows, jsonl_rows
from .records import clean_text

logger = logging.getLogger("hf_introspect")


def select_questions(records: list[dict], report: QuestionLoadReport, *, num_questions: int | None, seed: int,
                     question_ids: str | list[str] | None) -> list[dict]:
    """``question_ids`` in their order, else a seeded sample of ``num_questions`` kept in source order,
    else every record; ids that are missing (or were skipped) are an error naming them.

    >>> from hf_introspect.questions.load_report import QuestionLoadReport
    >>> records = [{"question_id": f"q{i}"} for i in range(5)]
    >>> report = QuestionLoadReport(source="file:q.jsonl", form="triviamc")
    >>> [r["question_id"] for r in select_questions(records, report, num_questions=2, seed=0, question_ids=None)]
    ['q3', 'q4']
    >>> [r["question_id"] for r in select_questions(records, report, num_questions=None, seed=0, question_ids=["q4", "q0"])]
    ['q4', 'q0']
    """
    if question_ids is not None:
        wanted, where = _read_question_ids(question_ids)
        by_id = {r["question_id"]: r for r in records}
        missing = [q for q in wanted if q not in by_id]
        if missing:
            skipped = {q: reason for reason, ids in report.skipped_ids.items() for q in ids}
            shown = ", ".join(f"{q} (skipped: {skipped[q]})" if q in skipped else q for q in missing[:5])
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise UserError(f"{len(missing)} id(s) from {where} are not among the {len(records)} usable questions "
                            f"of {report.source}: {shown}{more}; check --question_ids against this source")
        return [by_id[q] for q in wanted]
    if num_questions is not None:
        if num_questions > len(records):
            skipped = f" ({report.skipped_total} more were skipped)" if report.skipped_total else ""
            raise UserError(f"--num_questions {num_questions} is more than the {len(records)} usable questions "
                            f"in {report.source}{skipped}; use --num_questions {len(records)} or fewer")
        # Sample indexes, then sort: a seeded choice, shown in source order.
        chosen = sorted(random.Random(seed).sample(range(len(records)), num_questions))
        return [records[i] for i in chosen]
    return records


def _read_question_ids(question_ids: str | list[str]) -> tuple[list[str], str]:
    """The ids to select, and how to name their origin in messages."""
    if isinstance(question_ids, (list, tuple)):
        ids, where = [clean_text(q) for q in question_ids], "--question_ids"
        locations = [f"item {i}" for i in range(len(ids))]
    else:
        path = Path(os.fspath(question_ids)).expanduser()
        where = os.fspath(question_ids)
        if not path.is_file():
            raise UserError(f"--question_ids file not found: {where}; pass a text file with one id per line")
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"cannot read --question_ids file {where} ({exc}); check the path") from None
        ids, locations = [], []
        if path.suffix.lower() in (".jsonl", ".json"):
            rows = json_rows(text, where) if path.suffix.lower() == ".json" else jsonl_rows(text, where)
            for location, row in rows:
                key = next((k for k in ("question_id", "qid", "id") if k in row), None)
                if key is None:
                    raise UserError(f"{location}: no question_id (or qid/id) key; each object needs one")
                ids.append(clean_text(row[key]))
                locations.append(location)
        else:
            for lineno, line in enumerate(text.splitlines(), start=1):
                if line.strip() and not line.lstrip().startswith("#"):
                    ids.append(line.strip())
                    locations.append(f"{where}:{lineno}")
    if not ids:
        raise UserError(f"{where} lists no question ids; give at least one")
    seen: dict[str, str] = {}
    for q, location in zip(ids, locations):
        if q in seen:
            raise UserError(f"{where}: question id {q!r} is listed twice ({seen[q]} and {location}); list each once")
        seen[q] = location
    return ids, where


def position_warnings(records: list[dict], report: QuestionLoadReport) -> Iterator[str]:
    """A warning when every question of an unshuffled source has its answer at the same letter.

    >>> from hf_introspect.questions.load_report import QuestionLoadReport
    >>> report = QuestionLoadReport(source="file:q.csv", form="column-mapping")
    >>> list(position_warnings([{"correct_answer_letter": "A"}] * 8, report))
    ['all 8 questions from file:q.csv have the correct answer at A; pass --shuffle_options to randomise the option order']
    """
    # A source that always lists the answer in one slot (e.g. a column mapping with the correct
    # answer first) would let a model score by position; say so rather than guess.
    letters = Counter(r["correct_answer_letter"] for r in records)
    if not report.shuffled and len(records) >= 8 and len(letters) == 1:
        (letter,) = letters
        yield (f"all {len(records)} questions from {report.source} have the correct answer at {letter}; "
               "pass --shuffle_options to randomise the option order")


def log_report(report: QuestionLoadReport) -> None:
    """Skips and warnings as warnings on the ``hf_introspect`` logger, the summary as info.

    >>> from hf_introspect.questions.load_report import QuestionLoadReport
    >>> log_report(QuestionLoadReport(source="builtin", form="normalised", rows=3, usable=3))
    """
    if report.skipped:
        logger.warning("skipped %d of %d questions from %s: %s", report.skipped_total, report.rows,
                       report.source, report.reasons())
    for warning in report.warnings:
        logger.warning("%s", warning)
    logger.info("questions: %s", report.summary())
