"""Reading question rows from each kind of source: the built-in bank, a local file (``.jsonl``
``.json`` ``.csv`` ``.parquet``) or a Hub dataset (``hub:REPO[:CONFIG][:SPLIT]``). Each source yields
``(location, row)`` pairs; the location goes into error messages (``q.jsonl:12``).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from pathlib import Path

import datasets

from ..errors import UserError
from .adapters import GENERIC, Adapter, find_adapter

SUPPORTED_EXTENSIONS = (".jsonl", ".json", ".csv", ".parquet")
# Splits tried, in order, when a hub source names none and its adapter has no default.
PREFERRED_SPLITS = ("test", "validation", "train")
# A lone hub part with one of these names is a split, not a config (hub:allenai/sciq:test).
KNOWN_SPLITS = ("train", "test", "validation", "dev", "val", "auxiliary_train")

Rows = list[tuple[str, Mapping]]


def where_name(source: str | None) -> str:
    """How error messages name a source.

    >>> where_name(None), where_name("q.jsonl")
    ('the built-in bank', 'q.jsonl')
    """
    return "the built-in bank" if source is None else source


def builtin_rows(seed: int) -> tuple[str, Rows]:
    """The built-in bank's questions as ``(location, row)`` pairs, with the source label.

    >>> label, rows = builtin_rows(0)
    >>> label, len(rows), rows[0][0]
    ('builtin', 1892, 'built-in question bank item 0')
    """
    # Imported lazily: the bank is a separate module and only needed when no source is given.
    from .bank import BANK_SOURCE, build_question_bank

    rows = build_question_bank(seed)
    return BANK_SOURCE, [(f"built-in question bank item {i}", row) for i, row in enumerate(rows)]


def file_rows(path: Path, shown: str) -> Rows:
    """The rows of a ``.jsonl``/``.json``/``.csv``/``.parquet`` file; ``shown`` names it in errors.

    >>> file_rows(Path("questions.txt"), "questions.txt")
    Traceback (most recent call last):
    ...
    hf_introspect.errors.UserError: questions.txt: unsupported file type '.txt'; use .jsonl, .json, .csv or .parquet, or hub:REPO[:CONFIG][:SPLIT]
    """
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
                rows = json_rows(text, shown)
            else:
                rows = jsonl_rows(text, shown)
    except UnicodeDecodeError as exc:
        raise UserError(f"{shown} is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise UserError(f"cannot read {shown} ({exc.strerror or exc}); check the path and permissions") from None
    if not rows:
        raise UserError(f"{shown} contains no questions; add at least one row")
    return rows


def jsonl_rows(text: str, shown: str) -> Rows:
    """One JSON object per non-blank line, located as ``FILE:LINE``.

    >>> jsonl_rows('{"qid": "q1"}\\n\\n{"qid": "q2"}\\n', "q.jsonl")
    [('q.jsonl:1', {'qid': 'q1'}), ('q.jsonl:3', {'qid': 'q2'})]
    """
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{shown}:{lineno}: malformed JSON ({exc.msg} at column {exc.colno}); "
                            "each line must be one JSON object") from None
        rows.append(_object_row(f"{shown}:{lineno}", row, "each line must be one JSON object"))
    return rows


def json_rows(text: str, shown: str) -> Rows:
    """A JSON list of objects (or JSON lines in a ``.json`` file).

    >>> json_rows('[{"qid": "q1"}]', "q.json")
    [('q.json item 0', {'qid': 'q1'})]
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # several top-level values: JSON lines saved as .json
            return jsonl_rows(text, shown)
        raise UserError(f"{shown}:{exc.lineno}: malformed JSON ({exc.msg} at column {exc.colno}); "
                        "the file must be a JSON list of objects or JSON lines") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise UserError(f"{shown}: expected a JSON list of question objects, got {type(data).__name__}")
    return [_object_row(f"{shown} item {i}", row, "the file must be a list of question objects")
            for i, row in enumerate(data)]


def _object_row(location: str, row, hint: str) -> tuple[str, Mapping]:
    """``(location, row)``, or a one-line error when the JSON value is not an object."""
    if not isinstance(row, dict):
        raise UserError(f"{location}: expected a JSON object, got {type(row).__name__}; {hint}")
    return location, row


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


def parse_hub(source: str) -> tuple[str, str | None, str | None]:
    """``hub:REPO[:CONFIG][:SPLIT]`` -> (repo, config, split); an empty part means "not given".

    >>> parse_hub("hub:cais/mmlu:all:test"), parse_hub("hub:allenai/sciq:test"), parse_hub("hub:x/y::dev")
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


def hub_rows(source: str, forced: str | Adapter | None) -> tuple[str, Rows, Adapter]:
    """The rows of ``hub:REPO[:CONFIG][:SPLIT]`` through ``datasets.load_dataset``, with the label that
    names the config and split actually used, and the adapter for them.

    >>> label, rows, adapter = hub_rows("hub:cais/mmlu", None)     # doctest: +SKIP
    >>> label, adapter.name                                          # doctest: +SKIP
    ('hub:cais/mmlu:all:test', 'cais/mmlu')
    """
    repo, config, split = parse_hub(source)
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
