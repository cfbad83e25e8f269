"""Encoding a run's splits as Parquet files in the Hub repo layout, streamed shard by shard.

Moved out of runs/hub.py (which keeps config names, the dataset card, export and push): what is
written, with which encoder settings, how the files and row groups are cut, and the one schema a
config's splits share (:func:`union_features`).
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import UserError
from .read import RunFiles, SplitFiles, iter_record_batches

MAX_SHARD_SIZE = 500 * 10**6      # Arrow bytes per parquet file; push_to_hub's default
ROW_GROUP_SIZE = 32 * 10**6       # Arrow bytes per row group: bounded writer memory, viewer-friendly
COMPRESSIONS = ("zstd", "snappy", "lz4", "none")
DEFAULT_COMPRESSION = "zstd"      # level 1: ~25% smaller files at ~90% of uncompressed speed
_SPLIT_NAME = re.compile(r"^\w+(\.\w+)*$")  # what push_to_hub accepts as a split name


def _leaf_paths(schema) -> dict[str, list[str]]:
    """Parquet leaf column paths per top-level column (``activations_layer_00.list.element.list.element``):
    per-column writer options are keyed by these, a top-level name of a nested column matches nothing."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = pa.BufferOutputStream()
    pq.write_table(schema.empty_table(), buf)
    parquet_schema = pq.ParquetFile(pa.BufferReader(buf.getvalue())).schema
    paths: dict[str, list[str]] = {}
    for i in range(len(parquet_schema)):
        path = parquet_schema.column(i).path
        paths.setdefault(path.split(".", 1)[0], []).append(path)
    return paths


def parquet_options(schema, compression: str = DEFAULT_COMPRESSION) -> dict:
    """``ParquetWriter`` keyword arguments for a run's schema.

    Activation columns (``list<list<float16>>``) are the bulk: for them, no dictionary encoding
    (float16 residuals rarely repeat; building the dictionary was most of the default's cost), no
    statistics (min/max of float16 pages cost a pass and serve no query), and ``compression``
    (zstd level 1 by default: ~25% smaller than uncompressed on real-valued float16, at ~90% of its
    speed; snappy/lz4 barely shrink float16). The small metadata columns keep dictionary encoding,
    statistics and zstd. No content-defined chunking (datasets' default): it costs speed and only
    pays when re-uploading nearly identical files, which a new run never is.
    """
    if compression not in COMPRESSIONS:
        raise UserError(f"--compression {compression!r}: choose one of {', '.join(COMPRESSIONS)}")
    leaves = _leaf_paths(schema)
    acts = [p for n, ps in leaves.items() if n.startswith("activations_layer_") for p in ps]
    other = [p for n, ps in leaves.items() if not n.startswith("activations_layer_") for p in ps]
    codec = {p: "ZSTD" for p in other}
    codec.update({p: compression.upper() for p in acts})
    opts = dict(use_dictionary=other, write_statistics=other, compression=codec)
    opts["compression_level"] = {p: 1 for p, c in codec.items() if c == "ZSTD"}
    return opts


def _shard_bounds(num_rows: int, num_shards: int) -> list[tuple[int, int]]:
    """Contiguous row ranges, as ``Dataset.shard(contiguous=True)`` cuts them."""
    div, mod = divmod(num_rows, num_shards)
    bounds, start = [], 0
    for i in range(num_shards):
        end = start + div + (1 if i < mod else 0)
        bounds.append((start, end))
        start = end
    return bounds


def union_features(run: RunFiles):
    """One ``Features`` for every split of a run: the union of the passes' columns.

    A Hub config has ONE ``dataset_info.features`` for all its splits (``push_to_hub`` refuses a
    split whose features differ, and ``load_dataset`` casts every split to one schema), but the
    passes differ in a few scalar columns (``is_correct`` only in mcq, ``self_confidence`` only in
    self_conf ...). So each exported split carries the union, the columns of other passes null.
    ``logits``/``probs`` have 4 values in mcq and 8 in the confidence passes: the union makes them
    variable-length lists (same values). Order: the metadata columns as first seen, then
    activation_positions, fp16_overflow_count, then the activation columns by index.
    """
    from datasets import Features, List

    meta, layers = {}, {}
    for split in run.splits.values():
        for name, feat in split.features.items():
            into = layers if name.startswith("activations_layer_") else meta
            have = into.setdefault(name, feat)
            if have == feat:
                continue
            if isinstance(have, List) and isinstance(feat, List) and have.feature == feat.feature:
                into[name] = List(feat.feature)  # fixed lengths differ per pass -> variable length
            else:
                raise UserError(f"column {name} has type {have} in one pass and {feat} in another; "
                                "this run cannot be exported as one config")
    tail = {k: meta.pop(k) for k in ("activation_positions", "fp16_overflow_count") if k in meta}
    return Features({**meta, **tail, **dict(sorted(layers.items()))})


def _conform(table, schema):
    """``table`` with ``schema``'s columns in its order; columns it lacks are all-null."""
    import pyarrow as pa

    have = set(table.column_names)
    cols = []
    for f in schema:
        if f.name not in have:
            cols.append(pa.nulls(table.num_rows, f.type))
        else:
            col = table.column(f.name)
            cols.append(col if col.type == f.type else col.cast(f.type))  # e.g. fixed -> variable list
    return pa.Table.from_arrays(cols, schema=schema)


def _row_slices(split: SplitFiles, lo: int, hi: int, rows_per_group: int):
    """Tables of at most ``rows_per_group`` rows covering rows [lo, hi), streamed from the shards.

    Each table is a list of zero-copy slices of memory-mapped record batches (no copy is made
    until the parquet encoder reads them).
    """
    import pyarrow as pa

    pending, pending_rows, row = [], 0, 0
    for batch in iter_record_batches(split.files):
        b_lo, b_hi = row, row + batch.num_rows
        row = b_hi
        if b_hi <= lo:
            continue
        if b_lo >= hi:
            break
        piece = batch.slice(max(lo - b_lo, 0), min(hi, b_hi) - max(lo, b_lo))
        while piece.num_rows:
            take = min(piece.num_rows, rows_per_group - pending_rows)
            pending.append(piece.slice(0, take))
            pending_rows += take
            piece = piece.slice(take)
            if pending_rows == rows_per_group:
                yield pa.Table.from_batches(pending)
                pending, pending_rows = [], 0
    if pending:
        yield pa.Table.from_batches(pending)


@dataclass
class SplitExport:
    """What writing one split produced: repo paths (in order), parquet bytes, Arrow bytes, rows."""

    name: str
    paths: list[str] = field(default_factory=list)
    parquet_bytes: int = 0
    num_bytes: int = 0
    num_rows: int = 0
    uploads: list = field(default_factory=list)  # whatever on_shard returned, per shard


def write_split_parquet(split: SplitFiles, config_name: str, folder: Path, *, features=None,
                        max_shard_size: int = MAX_SHARD_SIZE, row_group_size: int = ROW_GROUP_SIZE,
                        compression: str = DEFAULT_COMPRESSION,
                        on_shard: Callable[[str, Path], object] | None = None, progress=None) -> SplitExport:
    """Encode one split as ``<folder>/<config>/<split>-0000i-of-0000N.parquet``, streaming.

    ``features`` (default: the split's own) is the schema written, see :func:`union_features`.
    ``on_shard(path_in_repo, local_file)`` is called after each file is closed (the push uploads
    and deletes it there, so at most one shard per split sits on local disk). ``progress``: a
    byte bar advanced by each row group's share of the split's Arrow bytes.
    """
    import pyarrow.parquet as pq

    if not _SPLIT_NAME.match(split.name):
        raise UserError(f"split name {split.name!r} is not allowed on the Hub (must match {_SPLIT_NAME.pattern})")
    schema = (features or split.features).arrow_schema  # with the "huggingface" features metadata
    num_shards = max(1, min(split.num_rows, split.nbytes // max_shard_size + 1))
    bytes_per_row = split.nbytes / max(split.num_rows, 1)
    rows_per_group = max(1, int(row_group_size // max(bytes_per_row, 1)))
    options = parquet_options(schema, compression)
    result = SplitExport(split.name, num_bytes=split.nbytes, num_rows=split.num_rows)
    (folder / config_name).mkdir(parents=True, exist_ok=True)
    for i, (lo, hi) in enumerate(_shard_bounds(split.num_rows, num_shards)):
        path_in_repo = f"{config_name}/{split.name}-{i:05d}-of-{num_shards:05d}.parquet"
        target = folder / path_in_repo
        tmp = target.with_name(f".{target.name}.tmp")  # a reader never sees half a file
        with pq.ParquetWriter(str(tmp), schema, **options) as writer:
            wrote = False
            for table in _row_slices(split, lo, hi, rows_per_group):
                writer.write_table(_conform(table, schema), row_group_size=rows_per_group)
                wrote = True
                if progress is not None:
                    progress.update(int(round(table.num_rows * bytes_per_row)))
            if not wrote:  # an empty split still gets one (empty) file, as push_to_hub writes
                writer.write_table(schema.empty_table())
        os.replace(tmp, target)
        result.paths.append(path_in_repo)
        result.parquet_bytes += target.stat().st_size
        result.uploads.append(on_shard(path_in_repo, target) if on_shard else None)
    return result


def write_run_parquet(run: RunFiles, config_name: str, folder: Path, *, workers: int | None = None,
                      desc: str = "export", **kwargs) -> dict[str, SplitExport]:
    """Encode every split of a run, splits in parallel threads (pyarrow releases the GIL), with one
    progress bar over the run's Arrow bytes (``desc``: export or push)."""
    from .progress import byte_bar

    workers = workers or min(len(run.splits), os.cpu_count() or 1) or 1
    features = union_features(run)
    with byte_bar(sum(s.nbytes for s in run.splits.values()), desc) as bar, \
            ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {name: pool.submit(write_split_parquet, split, config_name, folder, features=features,
                                     progress=bar, **kwargs)
                   for name, split in run.splits.items()}
        return {name: f.result() for name, f in futures.items()}
