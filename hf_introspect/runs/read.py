"""Reading runs back: the run folder's files for export/merge, and fast loaders for analysis.

Two entry points for analysis code:

- :func:`load_run` opens a run (local run folder, one split folder, an exported Hub-layout folder,
  or a Hub repo) as a ``datasets.Dataset`` formatted as numpy *without* the float32 upcast.
- :func:`layer_matrix` pulls one layer at one position for every question as an
  ``(n_questions, hidden)`` float16 array straight from the Arrow buffers (no per-row decoding).

The rest (:func:`open_run`, :func:`iter_record_batches`) is shared by export, push, merge and the
npy export: they stream a split shard by shard from memory maps and never hold it in memory.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from ..collection.storage import DATASET_DICT, RUN_CONFIG  # the on-disk layout's one owner
from ..collection.integrity import shard_problem
from ..errors import UserError

_LAYER_PREFIX = "activations_layer_"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


# ---------------------------------------------------------------------------------------------
# A run folder's files
# ---------------------------------------------------------------------------------------------

@dataclass
class SplitFiles:
    """One finished split (pass) of a run: its Arrow shards in row order, features and size."""

    name: str
    folder: Path
    files: list[Path]
    features: "object"  # datasets.Features
    num_rows: int
    nbytes: int  # bytes of Arrow data on disk (the uncompressed size of the split)

    @property
    def layer_columns(self) -> list[str]:
        return [c for c in self.features if c.startswith(_LAYER_PREFIX)]


@dataclass
class RunFiles:
    """A finished run folder: ``run_config.json`` plus one :class:`SplitFiles` per pass."""

    path: Path
    run_config: dict
    splits: dict[str, SplitFiles] = field(default_factory=dict)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} is unreadable ({exc})") from exc


def _split_files(folder: Path) -> SplitFiles:
    from datasets import Features

    state, info = folder / "state.json", folder / "dataset_info.json"
    if not (state.is_file() and info.is_file()):
        raise UserError(f"{folder} is not a finished split (no state.json/dataset_info.json); "
                        "rerun the collect command to finish it")
    names = [d["filename"] for d in _read_json(state)["_data_files"]]
    files = [folder / n for n in names]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise UserError(f"{folder} lacks shard(s) {missing[:3]} listed in state.json; rerun the same collect command "
                        f"to collect them again (hf-introspect verify {folder.parent} lists every damaged shard)")
    damaged = [f"{f.name} ({problem})" for f in files if (problem := shard_problem(f, full=False))]
    if damaged:
        raise UserError(f"{folder}: damaged shard(s) {', '.join(damaged[:3])}; rerun the same collect command to "
                        f"collect them again (hf-introspect verify {folder.parent} lists every damaged shard)")
    features = Features.from_dict(_read_json(info)["features"])
    rows = sum(_arrow_rows(f) for f in files)
    return SplitFiles(folder.name, folder, files, features, rows, sum(f.stat().st_size for f in files))


def _arrow_rows(path: Path) -> int:
    import pyarrow as pa

    with pa.memory_map(str(path)) as src:
        # Reading a batch from a memory map only parses its header: counting rows is O(batches).
        return sum(b.num_rows for b in pa.ipc.open_stream(src))


def open_run(path: str | Path) -> RunFiles:
    """Check that ``path`` is a finished run folder and list its splits' shards.

    Example:
        >>> run = open_run("test_run_base")                     # doctest: +SKIP
        >>> list(run.splits), run.splits["mcq"].num_rows        # doctest: +SKIP
        (['mcq', 'self_conf', 'other_conf'], 10)
    """
    root = Path(path)
    if not root.is_dir():
        raise UserError(f"{root}: no such run folder")
    if not (root / RUN_CONFIG).is_file():
        raise UserError(f"{root} holds no {RUN_CONFIG}; pass the --output_dir of a collect run")
    if not (root / DATASET_DICT).is_file():
        raise UserError(f"{root} is an unfinished run (no {DATASET_DICT}); rerun the same collect command to finish it")
    run_config = _read_json(root / RUN_CONFIG)
    splits = _read_json(root / DATASET_DICT).get("splits", [])
    return RunFiles(root, run_config, {name: _split_files(root / name) for name in splits})


def iter_record_batches(files: list[Path]) -> Iterator["object"]:
    """Record batches of Arrow stream files, in order, each file memory-mapped only while read.

    Batches are zero-copy views of the map: consume them before the next file is opened.
    """
    import pyarrow as pa

    for path in files:
        with pa.memory_map(str(path)) as src:
            yield from pa.ipc.open_stream(src)


# ---------------------------------------------------------------------------------------------
# load_run
# ---------------------------------------------------------------------------------------------

def offline() -> bool:
    """Offline as the HF libraries decide it, read at call time (env vars may change after import)."""
    true = {"1", "ON", "YES", "TRUE"}
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").upper() in true:
            return True
    return False


def _hub_configs(folder: Path) -> list[str]:
    """Config names declared in a Hub-layout folder's README YAML."""
    from huggingface_hub import DatasetCard

    card = DatasetCard((folder / "README.md").read_text(encoding="utf-8"))
    return [c["config_name"] for c in (card.data.to_dict().get("configs") or [])]


def _pick_config(config: str | None, available: list[str], where: str) -> str:
    if config is None:
        if len(available) == 1:
            return available[0]
        raise UserError(f"{where} holds configs {available}; pass config= one of them")
    if available and config not in available:
        raise UserError(f"{where} has no config {config!r}; it holds {available}")
    return config


def load_run(path_or_repo: str | Path, config: str | None = None, split: str = "mcq", *,
             cache_dir: str | None = None, revision: str | None = None, columns: list | None = None):
    """One split of a run as a ``Dataset`` formatted as numpy, float16 kept as float16.

    Accepts a local run folder, one split folder of it, a folder written by
    ``hf-introspect export --to``, or a Hub dataset repo id (``USER/NAME``, needs network).
    ``config`` picks the model in an exported folder or Hub repo (optional when there is one).
    ``columns`` (names, or layer indices like ``15``) keeps only those columns plus the small id and
    position ones; on an exported folder or a Hub repo only their Parquet column chunks are read
    (range reads: one layer of 33 costs ~1/33 of the download; see runs/column_read.py).

    Note:
        ``with_format("numpy")`` alone would upcast every float16 activation to float32 (2x the
        memory); this uses ``with_format("numpy", dtype=None)`` which keeps each column's stored dtype.

    Example:
        >>> ds = load_run("test_run_base", split="mcq")                    # doctest: +SKIP
        >>> ds[0]["activations_layer_30"].dtype, ds[0]["activations_layer_30"].shape   # doctest: +SKIP
        (dtype('float16'), (187, 576))
        >>> ds = load_run("USER/introspection-acts", "smollm2-135m-instruct")  # doctest: +SKIP
    """
    from datasets import load_dataset, load_from_disk

    target = Path(path_or_repo).expanduser()
    if target.is_dir():
        if (target / DATASET_DICT).is_file() or (target / RUN_CONFIG).is_file():
            run = open_run(target)  # validates that the run is finished
            if split not in run.splits:
                raise UserError(f"{target} has no split {split!r}; it holds {list(run.splits)}")
            ds = load_from_disk(str(target / split))
        elif (target / "state.json").is_file():
            ds = load_from_disk(str(target))  # a split folder: `split` is implied by the folder
        elif (target / "README.md").is_file():
            name = _pick_config(config, _hub_configs(target), str(target))
            if columns is not None:
                from .column_read import read_columns

                return read_columns(str(target), name, split, columns).with_format("numpy", dtype=None)
            ds = load_dataset(str(target), name, split=split, cache_dir=cache_dir)
        else:
            raise UserError(f"{target} is neither a run folder, a split folder nor an exported folder (no "
                            f"{RUN_CONFIG}, state.json or README.md)")
    elif target.exists():
        raise UserError(f"{target} is a file; pass a run folder, an exported folder or a Hub repo id")
    elif _REPO_ID.match(str(path_or_repo)) and not str(path_or_repo).startswith((".", "/", "~")):
        if offline():
            raise UserError(f"{path_or_repo}: no such local folder, and the Hub is off (HF_HUB_OFFLINE); "
                            "download it while online or pass a local folder")
        if columns is not None:  # range reads of those columns' chunks, nothing cached
            from .column_read import read_columns

            return read_columns(str(path_or_repo), config, split, columns, revision=revision).with_format("numpy", dtype=None)
        try:
            ds = load_dataset(str(path_or_repo), config, split=split, cache_dir=cache_dir, revision=revision)
        except (ConnectionError, OSError) as exc:
            raise UserError(f"could not load {path_or_repo} from the Hub ({type(exc).__name__}: {exc}); "
                            "check the repo id, your network and login (`hf auth login`)") from exc
        except ValueError as exc:
            if "config" in str(exc).lower():
                raise UserError(f"{path_or_repo}: {exc}".splitlines()[0]) from exc
            raise
    else:
        raise UserError(f"{path_or_repo}: no such folder (and not a Hub repo id like USER/NAME)")
    if columns is not None:  # a local Arrow run is memory-mapped: selecting costs nothing
        from ..schema import layer_column
        from .column_read import ALWAYS

        wanted = [layer_column(c) if isinstance(c, int) else c for c in columns]
        unknown = [c for c in wanted if c not in ds.column_names]
        if unknown:
            raise UserError(f"column {unknown[0]!r} is not in {path_or_repo} ({split})")
        ds = ds.select_columns([c for c in ds.column_names if c in wanted or c in ALWAYS])
    return ds.with_format("numpy", dtype=None)


# ---------------------------------------------------------------------------------------------
# layer_matrix
# ---------------------------------------------------------------------------------------------

def _layer_name(ds, layer) -> str:
    from ..schema import layer_column

    stored = [c for c in ds.column_names if c.startswith(_LAYER_PREFIX)]
    if isinstance(layer, (int, np.integer)):
        name = layer_column(int(layer))
    elif isinstance(layer, str) and layer.isdigit():
        name = layer_column(int(layer))
    elif isinstance(layer, str):
        name = layer
    else:
        raise UserError(f"layer must be an int or a column name, got {type(layer).__name__}")
    if name not in stored:
        shown = [int(c[len(_LAYER_PREFIX):]) for c in stored]
        raise UserError(f"{name} is not stored in this dataset; stored layer indices: {shown}")
    return name


def _readout_column(table) -> str:
    """answer_token_index (mcq) or confidence_token_index (confidence passes). An exported split
    carries both, the other pass's one all null: take the one that is filled in."""
    for name in ("answer_token_index", "confidence_token_index"):
        if name in table.column_names and table.column(name).null_count == 0:
            return name
    raise UserError("position='answer' needs an answer_token_index or confidence_token_index column without nulls")


def list_parts(arr):
    """(offsets, child) of a list array, offsets relative to the UNSLICED child.

    ``ListArray.offsets`` honours the array's own slice offset while ``.values`` is the whole
    child, so the two index the same buffer; ``.flatten()`` would copy.
    """
    import pyarrow as pa

    if isinstance(arr, pa.ExtensionArray):
        arr = arr.storage
    return arr.offsets.to_numpy(zero_copy_only=False), arr.values


def _chunk_rows(chunk, rows: np.ndarray, position, hidden: int, readout: np.ndarray | None, aps) -> np.ndarray:
    """Gather one layer row per requested chunk row -> (len(rows), hidden) float16.

    chunk: list<list<float16>> for this chunk; rows: chunk-local row indices; readout/aps: the
    readout token index per requested row and the activation_positions of the chunk (answer mode).
    """
    outer, inner = list_parts(chunk)          # outer: (rows+1,) range of stored positions per row
    inner_off, values = list_parts(inner)     # inner_off: (positions+1,) range of values per position
    start, end = outer[rows], outer[rows + 1]  # (n,) each
    count = end - start                        # (n,) stored positions per row
    if isinstance(position, np.ndarray):  # each requested row's own stored-row index
        k = position.astype(np.int64)
        k = np.where(k < 0, count + k, k)
    elif position == "last":
        k = count - 1
    elif position == "answer":
        ap_off, ap_vals = list_parts(aps)
        ap_vals = ap_vals.to_numpy(zero_copy_only=False)
        a0 = ap_off[rows]
        lens = ap_off[rows + 1] - a0
        # Vectorised "which stored row is the readout token": the flat index of every requested
        # row's activation_positions, with its owner row, compared with that row's readout index.
        owner = np.repeat(np.arange(len(rows)), lens)                       # (sum(lens),)
        local = np.arange(len(owner)) - np.repeat(np.cumsum(lens) - lens, lens)
        hit = ap_vals[a0[owner] + local] == readout[owner]
        k = np.full(len(rows), -1, dtype=np.int64)
        k[owner[hit]] = local[hit]
    else:
        k = np.full(len(rows), int(position), dtype=np.int64)
        k = np.where(k < 0, count + k, k)
    missing = (k < 0) | (k >= count)
    if np.any(missing):
        bad = int(np.flatnonzero(missing)[0])
        raise UserError(f"position {position!r} is not among the {int(count[bad])} stored positions of a row; "
                        "collect with --positions that keep it (e.g. all, or last for 'last'/'answer')")
    pos = start + k                           # (n,) index of the chosen position in the inner list
    vals = values.to_numpy(zero_copy_only=False)  # (positions*hidden,) float16, zero-copy without nulls
    base, n_pos = int(inner_off[0]), len(inner_off) - 1
    if base % hidden == 0 and int(inner_off[-1]) - base == n_pos * hidden and len(vals) % hidden == 0:
        # Array2D((None, hidden)): every position holds exactly `hidden` values back to back (the
        # end offsets confirm it), so vector j starts at base + j*hidden. View the values as
        # (positions, hidden) and copy whole rows, without touching inner_off per row: one
        # memory-mapped page per question, as for an .npy slice.
        return vals.reshape(-1, hidden)[base // hidden + pos]
    first = inner_off[pos]                    # (n,) offset of each chosen hidden vector in vals
    return vals[first[:, None] + np.arange(hidden)]


def layer_matrix(ds, layer: int | str, position: str | int = "last", rows=None) -> np.ndarray:
    """One layer's activation at one stored position for every row -> ``(len(ds), hidden)`` float16.

    Args:
        ds: a split as returned by :func:`load_run` / ``load_from_disk`` / ``load_dataset`` (any
            format; ``select``/``shuffle``/``filter`` views are honoured, in their row order).
        layer: residual-stream index (``0`` = embeddings, ``num_layers`` = last block before the
            final norm), its digits as a string, or the column name ``"activations_layer_NN"``.
        position: ``"last"`` (last stored row = the readout token when it was stored),
            ``"answer"`` (the row whose ``activation_positions`` equals ``answer_token_index`` /
            ``confidence_token_index``), an int index into the stored rows (negative allowed), or
            an int array ``(len(ds),)``: each row's own stored-row index, in the view's order.
        rows: only these rows of ``ds`` (indices in its order), giving ``(len(rows), hidden)``;
            cheaper than ``ds.select(rows)``, which rebuilds the dataset (~0.2 s for 31 layers).

    Reads the column's Arrow buffers directly (offsets + flat float16 values, one vectorised
    gather per chunk), so it costs about as much as slicing a memory-mapped ``.npy``.

    Example:
        >>> ds = load_run("test_run_base", split="mcq")          # doctest: +SKIP
        >>> X = layer_matrix(ds, 15)                              # doctest: +SKIP
        >>> X.shape, X.dtype                                      # doctest: +SKIP
        ((10, 576), dtype('float16'))
        >>> y = ds["is_correct"]                                  # doctest: +SKIP
    """
    from datasets import Dataset

    subset, rows = rows, None  # the caller's rows (view positions); `rows` below: their table row ids
    if not isinstance(ds, Dataset):
        raise UserError(f"layer_matrix needs one split (a datasets.Dataset), got {type(ds).__name__}; "
                        "e.g. load_run(path, split='mcq')")
    if isinstance(position, (np.ndarray, list)):
        position = np.asarray(position, dtype=np.int64)  # (len(ds),) stored-row index per row
        if position.shape != (len(ds),):
            raise UserError(f"a per-row position array needs shape ({len(ds)},), got {position.shape}")
    elif isinstance(position, str) and position not in ("last", "answer"):
        if position.lstrip("-").isdigit():
            position = int(position)
        else:
            raise UserError(f"position must be 'last', 'answer' or an int, got {position!r}")
    name = _layer_name(ds, layer)
    table = ds.data  # datasets Table over the (memory-mapped) Arrow data; unaffected by the format
    col = table.column(name)
    # Row ids into the underlying table, in the dataset's order (select/shuffle keep an indices map).
    if ds._indices is not None:
        rows = ds._indices.column(0).to_numpy().astype(np.int64)
    else:
        rows = np.arange(len(ds), dtype=np.int64)
    if subset is not None:
        subset = np.asarray(subset, dtype=np.int64)  # (k,) positions in the view
        rows = rows[subset]
        if isinstance(position, np.ndarray):
            position = position[subset]
    readout = aps_col = None
    if isinstance(position, str) and position == "answer":
        rc = _readout_column(table)
        readout = table.column(rc).to_numpy().astype(np.int64)[rows]
        aps_col = table.column("activation_positions")
    feature = ds.info.features[name]  # ds.features would deep-copy all features (ms)
    hidden = int(feature.shape[1])
    out = np.empty((len(rows), hidden), dtype=np.dtype(feature.dtype))  # (n_questions, hidden)
    chunks = col.chunks  # fetch once: each access re-wraps every chunk (and parses an extension type)
    bounds = np.cumsum([0] + [len(c) for c in chunks])  # (chunks+1,) first table row of each chunk
    which = np.searchsorted(bounds, rows, side="right") - 1    # (n,) chunk of each requested row
    for c in np.unique(which):
        sel = np.flatnonzero(which == c)                      # positions in the output
        local = rows[sel] - bounds[c]
        aps = None
        if aps_col is not None:
            # activation_positions may be chunked differently from the layer column: take the
            # same table rows from it as one small array (ints, cheap).
            aps = aps_col.slice(int(bounds[c]), int(bounds[c + 1] - bounds[c])).combine_chunks()
        out[sel] = _chunk_rows(chunks[c], local, position[sel] if isinstance(position, np.ndarray) else position, hidden,
                               None if readout is None else readout[sel], aps)
    return out
