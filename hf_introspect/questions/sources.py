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

import csv
import json
import logging
import os
import random
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets

from ..errors import UserError
from .adapters import (
    ADAPTERS,
    GENERIC,
    LETTERS,
    Adapter,
    RowProblem,
    Skipped,
    SourceQuestion,
    build_record,
    clean_text,
    detect_adapter,
    find_adapter,
    make_columns_adapter,
    option_key,
)

logger = logging.getLogger("hf_introspect")

QUESTION_FEATURES = datasets.Features(
    {
        "question_id": datasets.Value("string"),
        "question_text": datasets.Value("string"),
        "options": {letter: datasets.Value("string") for letter in LETTERS},
        "correct_answer_letter": datasets.Value("string"),
        "question_source": datasets.Value("string"),
        "option_source_index": datasets.Sequence(datasets.Value("int32"), length=4),
    }
)

SUPPORTED_EXTENSIONS = (".jsonl", ".json", ".csv", ".parquet")
NORMALISED = "normalised"
COLUMNS = "columns"
# Splits tried, in order, when a hub source names none and its adapter has no default.
PREFERRED_SPLITS = ("test", "validation", "train")
# A lone hub part with one of these names is a split, not a config (hub:allenai/sciq:test).
KNOWN_SPLITS = ("train", "test", "validation", "dev", "val", "auxiliary_train")
ACCEPTED_FORMS = (
    "normalised {question_id, question_text, options, correct_answer_letter}, "
    "TriviaMC {qid, question, correct_answer, distractors}, "
    f"a dataset schema ({', '.join(a for a in ADAPTERS if a != 'triviamc')}; force one with --question_format), "
    "or map your columns with --question_columns question=COL,answer=COL,options=COL1,COL2,..."
)


@dataclass
class QuestionLoadReport:
    """What :func:`load_questions` did: how many rows it read, loaded, skipped (and why), selected.

    >>> r = QuestionLoadReport(source="file:q.jsonl", form="triviamc", rows=3, usable=2,
    ...                        skipped={"fewer than 4 options": 1}, skipped_ids={"fewer than 4 options": ["q3"]})
    >>> r.skipped_total
    1
    >>> r.summary()
    'file:q.jsonl (triviamc form): 3 rows, 2 usable, 1 skipped (1 fewer than 4 options, e.g. q3); options kept in source order'
    """

    source: str
    form: str
    rows: int = 0
    usable: int = 0
    selected: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    skipped_ids: dict[str, list[str]] = field(default_factory=dict)  # first few ids per reason
    shuffled: bool = False
    seed: int = 0
    warnings: list[str] = field(default_factory=list)

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        """One line for logs and ``dataset.info.description``."""
        text = f"{self.source} ({self.form} form): {self.rows} rows, {self.usable} usable"
        if self.skipped:
            parts = [f"{n} {reason}, e.g. {', '.join(self.skipped_ids.get(reason, []))}"
                     for reason, n in self.skipped.items()]
            text += f", {self.skipped_total} skipped ({'; '.join(parts)})"
        if self.selected and self.selected != self.usable:
            text += f", {self.selected} selected"
        text += f"; options shuffled with seed {self.seed}" if self.shuffled else "; options kept in source order"
        return text


def load_questions(
    source: str | None = None,
    *,
    num_questions: int | None = None,
    seed: int = 0,
    shuffle_options: bool | None = None,
    columns: dict[str, str] | None = None,
    question_ids: str | list[str] | None = None,
    source_format: str | None = None,
) -> datasets.Dataset:
    """Load 4-option questions from any supported source as a Dataset with :data:`QUESTION_FEATURES`.

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
    return load_questions_with_report(
        source, num_questions=num_questions, seed=seed, shuffle_options=shuffle_options, columns=columns,
        question_ids=question_ids, source_format=source_format,
    )[0]


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
    """Like :func:`load_questions`, also returning the :class:`QuestionLoadReport`.

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
        label, rows = _builtin_rows(seed)
        form: str | Adapter = NORMALISED
    elif source.startswith("hub:"):
        label, rows, adapter = _hub_rows(source, forced)
        form = NORMALISED if forced == NORMALISED else adapter
    else:
        path = Path(source).expanduser()
        label = f"file:{path.name}"
        rows = _file_rows(path, source)
        form = forced if forced is not None else None  # detected from the first row below

    if columns:
        form = COLUMNS
    records, report = _convert(rows, form, label, seed=seed, shuffle_options=shuffle_options,
                               columns=columns, where=_where_name(source))
    records = _select(records, report, num_questions=num_questions, seed=seed, question_ids=question_ids)
    report.selected = len(records)
    report.warnings.extend(_position_warning(records, report))
    _log(report)
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


# ---------------------------------------------------------------------------------------------
# Reading rows: each source yields (location, row) pairs; the location goes into error messages
# ---------------------------------------------------------------------------------------------

Rows = list[tuple[str, Mapping]]


def _where_name(source: str | None) -> str:
    return "the built-in bank" if source is None else source


def _builtin_rows(seed: int) -> tuple[str, Rows]:
    # Imported lazily: the bank is a separate module and only needed when no source is given.
    from .bank import BANK_SOURCE, build_question_bank

    rows = build_question_bank(seed)
    return BANK_SOURCE, [(f"built-in question bank item {i}", row) for i, row in enumerate(rows)]


def _file_rows(path: Path, shown: str) -> Rows:
    ext = path.suffix.lower()
    if ext not in SUPPORTED_EXTENSIONS:
        raise UserError(f"{shown}: unsupported file type {ext or '(no extension)'!r}; use .jsonl, .json, .csv "
                        "or .parquet, or hub:REPO[:CONFIG][:SPLIT]")
    if not path.exists():
        raise UserError(f"question file not found: {shown}; check the path (omit --questions for the built-in bank)")
    if path.is_dir():
        raise UserError(f"{shown} is a directory; pass a .jsonl, .json, .csv or .parquet file")
    try:
        if ext == ".parquet":
            rows = _parquet_rows(path, shown)
        else:
            text = path.read_text(encoding="utf-8-sig")  # -sig: tolerate a BOM from spreadsheet exports
            if ext == ".csv":
                rows = _csv_rows(text, shown)
            elif ext == ".json":
                rows = _json_rows(text, shown)
            else:
                rows = _jsonl_rows(text, shown)
    except UnicodeDecodeError as exc:
        raise UserError(f"{shown} is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise UserError(f"cannot read {shown} ({exc.strerror or exc}); check the path and permissions") from None
    if not rows:
        raise UserError(f"{shown} contains no questions; add at least one row")
    return rows


def _jsonl_rows(text: str, shown: str) -> Rows:
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{shown}:{lineno}: malformed JSON ({exc.msg} at column {exc.colno}); "
                            "each line must be one JSON object") from None
        if not isinstance(row, dict):
            raise UserError(f"{shown}:{lineno}: expected a JSON object, got {type(row).__name__}; "
                            "each line must be one JSON object")
        rows.append((f"{shown}:{lineno}", row))
    return rows


def _json_rows(text: str, shown: str) -> Rows:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # several top-level values: JSON lines saved as .json
            return _jsonl_rows(text, shown)
        raise UserError(f"{shown}:{exc.lineno}: malformed JSON ({exc.msg} at column {exc.colno}); "
                        "the file must be a JSON list of objects or JSON lines") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise UserError(f"{shown}: expected a JSON list of question objects, got {type(data).__name__}")
    rows = []
    for i, row in enumerate(data):
        if not isinstance(row, dict):
            raise UserError(f"{shown} item {i}: expected a JSON object, got {type(row).__name__}; "
                            "the file must be a list of question objects")
        rows.append((f"{shown} item {i}", row))
    return rows


def _csv_rows(text: str, shown: str) -> Rows:
    reader = csv.DictReader(text.splitlines(keepends=True))
    rows = []
    try:
        for row in reader:
            # csv gives the line where the record ended; good enough (and exact without multi-line cells).
            if None in row:
                raise UserError(f"{shown}:{reader.line_num}: more cells than header columns; quote cells "
                                "that contain commas")
            rows.append((f"{shown}:{reader.line_num}", row))
    except csv.Error as exc:
        raise UserError(f"{shown}:{reader.line_num}: malformed CSV ({exc}); check the quoting") from None
    return rows


def _parquet_rows(path: Path, shown: str) -> Rows:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise UserError(f"cannot read {shown} as parquet ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''}); check the file") from None
    return [(f"{shown} row {i}", row) for i, row in enumerate(table.to_pylist())]


def _parse_hub(source: str) -> tuple[str, str | None, str | None]:
    """``hub:REPO[:CONFIG][:SPLIT]`` -> (repo, config, split); an empty part means "not given".

    >>> _parse_hub("hub:cais/mmlu:all:test"), _parse_hub("hub:allenai/sciq:test"), _parse_hub("hub:x/y::dev")
    (('cais/mmlu', 'all', 'test'), ('allenai/sciq', None, 'test'), ('x/y', None, 'dev'))
    """
    parts = source[len("hub:"):].split(":")
    if not parts[0].strip() or len(parts) > 3:
        raise UserError(f"--questions {source}: expected hub:REPO[:CONFIG][:SPLIT], e.g. hub:cais/mmlu:all:test")
    repo = parts[0].strip()
    config = parts[1].strip() or None if len(parts) > 1 else None
    split = parts[2].strip() or None if len(parts) > 2 else None
    if len(parts) == 2 and config in KNOWN_SPLITS:
        config, split = None, config
    return repo, config, split


def _hub_rows(source: str, forced: str | Adapter | None) -> tuple[str, Rows, Adapter]:
    repo, config, split = _parse_hub(source)
    adapter = forced if isinstance(forced, Adapter) else (find_adapter(repo) or GENERIC)
    config = config or adapter.default_config
    split = split or adapter.default_split
    try:
        loaded = datasets.load_dataset(repo, config, split=split)
        if isinstance(loaded, datasets.DatasetDict):  # no split given: pick an evaluation split
            names = [s for s in PREFERRED_SPLITS if s in loaded] or list(loaded)
            split = names[0]
            loaded = loaded[split]
    except UserError:
        raise
    except Exception as exc:  # network, auth, not found, bad config: all reported the same way
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        offline = " (offline mode is set)" if datasets.config.HF_HUB_OFFLINE else ""
        raise UserError(
            f"could not load {source} from the Hugging Face Hub{offline}: {type(exc).__name__}: {detail[:200]}; "
            "check the name/config/split and your network, or download it and pass a local file "
            "(e.g. --questions data.parquet --question_format " f"{adapter.name if adapter is not GENERIC else 'REPO'})"
        ) from None
    label = "hub:" + ":".join([repo, config or "", split or ""]).rstrip(":")
    # The row index is the id of datasets without ids; the split keeps ids readable across splits.
    rows = [(f"{label} row {i}", row) for i, row in enumerate(loaded)]
    if not rows:
        raise UserError(f"{label} has no rows; choose another config or split")
    return label, rows, adapter


# ---------------------------------------------------------------------------------------------
# Converting rows to records
# ---------------------------------------------------------------------------------------------


def _convert(rows: Rows, form: str | Adapter | None, label: str, *, seed: int, shuffle_options: bool | None,
             columns: Mapping[str, str] | None, where: str) -> tuple[list[dict], QuestionLoadReport]:
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
        raise UserError(f"{where}: none of the {len(rows)} questions is usable ({_reasons(report)}); every "
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


# ---------------------------------------------------------------------------------------------
# Selection, reporting
# ---------------------------------------------------------------------------------------------


def _select(records: list[dict], report: QuestionLoadReport, *, num_questions: int | None, seed: int,
            question_ids: str | list[str] | None) -> list[dict]:
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
            rows = _json_rows(text, where) if path.suffix.lower() == ".json" else _jsonl_rows(text, where)
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


def _reasons(report: QuestionLoadReport) -> str:
    return "; ".join(f"{n} {reason}" for reason, n in report.skipped.items()) or "no rows"


def _position_warning(records: list[dict], report: QuestionLoadReport) -> Iterator[str]:
    # A source that always lists the answer in one slot (e.g. a column mapping with the correct
    # answer first) would let a model score by position; say so rather than guess.
    letters = Counter(r["correct_answer_letter"] for r in records)
    if not report.shuffled and len(records) >= 8 and len(letters) == 1:
        (letter,) = letters
        yield (f"all {len(records)} questions from {report.source} have the correct answer at {letter}; "
               "pass --shuffle_options to randomise the option order")


def _log(report: QuestionLoadReport) -> None:
    if report.skipped:
        logger.warning("skipped %d of %d questions from %s: %s", report.skipped_total, report.rows,
                       report.source, _reasons(report))
    for warning in report.warnings:
        logger.warning("%s", warning)
    logger.info("questions: %s", report.summary())
