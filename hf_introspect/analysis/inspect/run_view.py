"""A run opened for inspect: each pass's metadata columns as numpy arrays, and where its activations are.

A *run* is what ``collect`` writes (``RUN/run_config.json`` + one split per pass). It can be named
by its root folder or by one pass's folder (``RUN/mcq``, as in the seed's commands); an exported
folder or a Hub repo is read through :func:`hf_introspect.runs.read.load_run`. Unlike ``load_run``,
a local run with unfinished passes still opens (they are listed in :attr:`Run.incomplete`).

Only the metadata columns are read in full. Activations are read one layer at a time and only at
the answer position (the last stored row, when ``activation_positions[-1] == seq_len - 1``) by
:func:`hf_introspect.runs.read.layer_matrix`, straight from the memory-mapped Arrow buffers, so
inspecting a run of many GB stays cheap.

Example:
    >>> run = open_run("test_run_base/mcq")                     # doctest: +SKIP
    >>> run.focus, list(run.passes), run.passes["mcq"].layers[:3]   # doctest: +SKIP
    ('mcq', ['mcq', 'self_conf', 'other_conf'], [0, 1, 2])
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...errors import UserError
from ...passes import PASSES, PROMPT_TYPES, labels_for_pass
from ...collection.storage import DATASET_DICT, RUN_CONFIG, read_run_config, split_is_final
from ...runs.read import layer_matrix, list_parts, load_run
from ...schema import layer_column, registered

SCORE_COLUMN = {"self_conf": "self_confidence", "other_conf": "other_confidence"}
# The metadata columns inspect reads (never the activations), checked against the column registry.
_META = registered("question_id", "question_source", "correct_answer_letter", "model_name", "checkpoint_id",
                   "temperature", "max_new_tokens", "parsed_answer", "parse_source", "probs", "entropy", "seq_len",
                   "fp16_overflow_count", "is_correct", "logit_margin", "self_confidence", "other_confidence")
_LAYER_RE = re.compile(r"^activations_layer_(\d+)$")
_HUB_RE = re.compile(r"^[\w.-]+/[\w.-]+$")


@dataclass
class PassData:
    """One pass's split: the dataset, its metadata columns as numpy arrays, and where activations are.

    >>> from datasets import Dataset
    >>> p = pass_data("self_conf", Dataset.from_dict({"question_id": ["q1", "q2"]}))
    >>> len(p), p.labels[:2], p.row_of("q2")
    (2, ('S', 'T'), 1)
    """

    name: str
    ds: object  # datasets.Dataset
    cols: dict[str, np.ndarray]
    layers: list[int]
    hidden: int | None
    act_dtype: str | None
    n_positions: np.ndarray  # stored activation rows per question
    answer_stored: np.ndarray  # bool: the last stored row is the last prompt token (the readout)
    disk_bytes: int | None = None
    _row: dict[str, int] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.cols["question_id"])

    def row_of(self, question_id: str) -> int | None:
        if not self._row:
            self._row = {q: i for i, q in enumerate(self.cols["question_id"].tolist())}
        return self._row.get(question_id)

    @property
    def labels(self) -> tuple[str, ...]:
        return labels_for_pass(self.name)


@dataclass
class Run:
    """A run opened for inspection: its passes, the one examples come from, and ``run_config.json``.

    >>> from datasets import Dataset
    >>> run = Run("demo", {"mcq": pass_data("mcq", Dataset.from_dict({"question_id": ["q1"]}))}, "mcq")
    >>> run.name, run.incomplete
    ('demo', [])
    """

    location: str
    passes: dict[str, PassData]
    focus: str  # the pass the user pointed at (examples come from it)
    config: dict | None = None  # run_config.json, when there is one
    disk_bytes: int | None = None
    incomplete: list[str] = field(default_factory=list)  # passes started but not finished

    @property
    def name(self) -> str:
        for p in self.passes.values():
            if "checkpoint_id" in p.cols and len(p):
                return str(p.cols["checkpoint_id"][0])
        return Path(self.location).name or self.location


def _folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _pass_name(folder_name: str, ds) -> str:
    if folder_name in PASSES:
        return folder_name
    if "prompt_type" in ds.column_names and len(ds):
        by_type = {v: k for k, v in PROMPT_TYPES.items()}
        found = by_type.get(ds[0]["prompt_type"])
        if found:
            return found
    if "is_correct" in ds.column_names:
        return "mcq"
    for name, col in SCORE_COLUMN.items():
        if col in ds.column_names:
            return name
    raise UserError(f"cannot tell which pass {folder_name!r} holds (no prompt_type column); "
                    f"name the folder after its pass ({', '.join(PASSES)})")


def pass_data(name: str, ds, disk_bytes: int | None = None) -> PassData:
    """Read a split's metadata columns (never its activations) into a :class:`PassData`.

    Example:
        >>> from datasets import Array2D, Dataset, Features, Sequence, Value
        >>> features = Features({"question_id": Value("string"), "seq_len": Value("int32"),
        ...                      "activation_positions": Sequence(Value("int32")),
        ...                      "activations_layer_00": Array2D((None, 2), "float16")})
        >>> ds = Dataset.from_dict({"question_id": ["q1", "q2"], "seq_len": [3, 4],
        ...                         "activation_positions": [[1, 2], [0, 2]],
        ...                         "activations_layer_00": [[[0, 1], [2, 3]], [[4, 5], [6, 7]]]}, features=features)
        >>> p = pass_data("mcq", ds)
        >>> len(p), p.layers, p.hidden, p.answer_stored.tolist()   # q2's last stored row is not its last token
        (2, [0], 2, [True, False])
        >>> answer_activations(p, 0, [0])
        array([[2., 3.]], dtype=float16)
        >>> activation_shapes(p, 1)
        {0: (2, 2)}
    """
    import pyarrow as pa

    ds = ds.with_format(None)  # rows as Python objects (load_run returns a numpy-formatted split)
    present = [c for c in _META if c in ds.column_names]
    if "question_id" not in present:
        raise UserError(f"the {name} split has no question_id column; it is not a hf_introspect run")
    cols = ds.select_columns(present).with_format("numpy", dtype=None)[:]
    cols = {k: np.asarray(v) for k, v in cols.items()}
    layers, hidden, dtype = [], None, None
    for col, feat in ds.features.items():
        m = _LAYER_RE.match(col)
        if m:
            layers.append(int(m.group(1)))
            hidden, dtype = feat.shape[-1], feat.dtype
    layers.sort()
    n = len(ds)
    n_pos = np.zeros(n, dtype=np.int64)
    answer = np.zeros(n, dtype=bool)
    if "activation_positions" in ds.column_names and n:
        pos = ds.select_columns(["activation_positions"]).with_format("arrow")[:]["activation_positions"]
        pos = pos.combine_chunks() if isinstance(pos, pa.ChunkedArray) else pos
        offsets = pos.offsets.to_numpy()
        n_pos = np.diff(offsets).astype(np.int64)
        values = pos.values.to_numpy(zero_copy_only=False)
        last = np.where(n_pos > 0, values[np.maximum(offsets[1:] - 1, 0)] if values.size else -1, -1)
        if "seq_len" in cols:
            answer = (n_pos > 0) & (last == cols["seq_len"].astype(np.int64) - 1)
    return PassData(name, ds, cols, layers, hidden, dtype, n_pos, answer, disk_bytes)


def _load_local_split(folder: Path):
    from datasets import load_from_disk

    from ...collection.integrity import split_damage

    if (damaged := split_damage(folder)) is not None:  # name the shard and the repair, not pyarrow's error
        raise UserError(damaged)
    try:
        return load_from_disk(str(folder))
    except Exception as exc:  # noqa: BLE001 - datasets raises several types for a bad folder
        raise UserError(f"{folder} could not be read as a dataset ({type(exc).__name__}: {exc})") from exc


def _open_local_root(root: Path, focus: str | None, location: str) -> Run:
    config = read_run_config(root)
    names = list((config or {}).get("config", {}).get("passes") or PASSES)
    names += [p.name for p in sorted(root.iterdir()) if p.is_dir() and p.name in PASSES and p.name not in names]
    passes, incomplete = {}, []
    for name in names:
        folder = root / name
        if not folder.is_dir():
            continue
        if not split_is_final(root, name):
            incomplete.append(name)
            continue
        passes[name] = pass_data(name, _load_local_split(folder), _folder_bytes(folder))
    if not passes:
        state = f" (passes started but unfinished: {', '.join(incomplete)})" if incomplete else ""
        raise UserError(f"{location} holds no finished pass{state}; rerun the same collect command to finish it")
    if focus is not None and focus not in passes:
        why = "is unfinished" if focus in incomplete else "is not in this run"
        raise UserError(f"pass {focus} {why}; finished passes: {', '.join(passes)}")
    return Run(location, passes, focus or ("mcq" if "mcq" in passes else next(iter(passes))), config,
               _folder_bytes(root), incomplete)


def _open_with_loader(location: str, config: str | None, focus: str | None) -> Run:
    passes = {}
    errors = {}
    folder = Path(location).expanduser() / (config or "")
    local = folder.is_dir() and config is not None
    if config is None and folder.is_dir():  # an exported folder with a single config
        subs = [d for d in folder.iterdir() if (d / RUN_CONFIG).is_file()]
        if len(subs) == 1:
            folder, local = subs[0], True
    for name in PASSES:
        try:
            ds = load_run(location, config=config, split=name)
        except UserError as exc:
            errors[name] = str(exc)
            continue
        except (FileNotFoundError, ValueError, KeyError) as exc:
            errors[name] = f"{type(exc).__name__}: {exc}"
            continue
        size = sum(f.stat().st_size for f in folder.glob(f"{name}-*")) if local else None
        passes[name] = pass_data(name, ds, size)
    if not passes:
        first = next(iter(errors.values()), "nothing found").replace("pass config=", "pass --config")
        raise UserError(f"no pass of {location}{f' (config {config})' if config else ''} could be loaded: {first}")
    if focus is not None and focus not in passes:
        raise UserError(f"pass {focus} is not in {location}; found: {', '.join(passes)}")
    run_config = _exported_run_config(location, config, folder if local else None)
    return Run(location, passes, focus or ("mcq" if "mcq" in passes else next(iter(passes))), run_config,
               _folder_bytes(folder) if local else None)


def _exported_run_config(location: str, config: str | None, folder: Path | None) -> dict | None:
    """``<config>/run_config.json`` of an exported folder or Hub repo, when there is one."""
    import json as _json

    if folder is not None:
        path = folder / RUN_CONFIG
        try:
            return _json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
        except (OSError, ValueError):
            return None
    if config is None or Path(location).expanduser().exists():
        return None
    try:
        from huggingface_hub import hf_hub_download

        return _json.loads(Path(hf_hub_download(location, f"{config}/{RUN_CONFIG}", repo_type="dataset"))
                           .read_text(encoding="utf-8"))
    except Exception:  # noqa: BLE001 - offline, no such file: the header falls back to the data's columns
        return None


def open_run(location: str, config: str | None = None, split: str | None = None) -> Run:
    """Open a run from its root folder, one pass's folder, an exported folder or a Hub repo.

    Args:
        location: ``RUN``, ``RUN/mcq`` (the seed's form), an exported folder, or ``owner/name``.
        config: config name inside an exported folder or Hub repo (e.g. the model's name).
        split: the pass to focus on (examples); default the folder's pass, else ``mcq``.

    Example:
        >>> run = open_run("test_run_base/mcq")                       # doctest: +SKIP
        >>> run.focus, [n for n, p in run.passes.items()], run.incomplete   # doctest: +SKIP
        ('mcq', ['mcq', 'self_conf', 'other_conf'], [])
    """
    if split is not None and split not in PASSES:
        raise UserError(f"--split {split} is unknown; choose one of {', '.join(PASSES)}")
    path = Path(location).expanduser()
    if path.is_dir():
        is_root = (path / RUN_CONFIG).is_file() or (path / DATASET_DICT).is_file()
        is_split = (path / "state.json").is_file() or (path / "dataset_info.json").is_file()
        if (is_root or is_split) and config is not None:
            raise UserError(f"--config names a config of an exported folder or Hub repo; {location} is a run folder, "
                            "drop --config")
        if is_root:
            return _open_local_root(path, split, location)
        if is_split:
            parent = path.parent
            if (parent / RUN_CONFIG).is_file() or (parent / DATASET_DICT).is_file():
                focus = split or (path.name if path.name in PASSES else None)
                return _open_local_root(parent, focus, location)
            ds = _load_local_split(path)
            name = _pass_name(path.name, ds)
            return Run(location, {name: pass_data(name, ds, _folder_bytes(path))}, name, None, _folder_bytes(path))
        if path.name in PASSES and (path.parent / RUN_CONFIG).is_file():
            raise UserError(f"{location} is unfinished (no state.json yet); rerun the same collect command to finish it")
        return _open_with_loader(location, config, split)
    if path.exists():
        raise UserError(f"{location} is a file; pass a run folder (or one pass's folder, e.g. RUN/mcq)")
    if _HUB_RE.match(location) and not location.startswith("."):
        return _open_with_loader(location, config, split)
    raise UserError(f"{location} does not exist; pass a run folder written by collect (e.g. test_run_base/mcq)")


# --------------------------------------------------------------------------------------------
# Activations at the answer position (runs.read.layer_matrix on the rows asked for)
# --------------------------------------------------------------------------------------------

def answer_activations(p: PassData, layer: int, rows) -> np.ndarray:
    """Activations of ``layer`` at the last stored position of the given dataset rows, ``(k, hidden)``.

    :func:`~hf_introspect.runs.read.layer_matrix` on those rows: only their last vectors are read
    from the Arrow buffers (memory-mapped for a local run), in the stored dtype. Callers pass rows
    whose ``answer_stored`` is True.
    """
    return layer_matrix(p.ds, layer, position="last", rows=rows)


def activation_shapes(p: PassData, row: int) -> dict[int, tuple[int, int]]:
    """Per stored layer, the ``(positions, hidden)`` shape of one row's activations (list offsets only)."""
    indices = getattr(p.ds, "_indices", None)  # a select()/shuffle() mapping, if any
    raw = int(indices.column(0)[row].as_py()) if indices is not None else row
    shapes = {}
    for layer in p.layers:
        chunks = p.ds.data.column(layer_column(layer)).chunks
        starts = np.cumsum([0] + [len(c) for c in chunks])  # (chunks+1,) first table row of each chunk
        ci = int(np.searchsorted(starts, raw, side="right") - 1)
        offsets, _ = list_parts(chunks[ci])
        local = raw - int(starts[ci])
        shapes[layer] = (int(offsets[local + 1] - offsets[local]), int(p.hidden or 0))
    return shapes
