"""One shard = one ``Dataset.map``: its function runs the shard's inference (in the device's turn)
and builds the shard's Arrow table; map writes that table to a temp file which
:func:`~.integrity.commit_shard` renames, so a shard exists whole or not at all.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import torch
from datasets import Dataset, Features

from ..config import CollectConfig
from ..errors import UserError
from .integrity import commit_shard, writing_path
from .pipeline import ShardTurn
from .shard_table import shard_table


def map_shard(turn: ShardTurn, compute: Callable, ctx: PassContext, features: Features, prompts: Dataset,
              path: Path, fingerprint: str) -> None:
    """Compute and write shard ``turn.job`` as ONE ``Dataset.map(batched=True, batch_size=rows of
    the shard)`` over its prompt rows, on the calling (worker) thread.

    map's function is called once, with the shard's rows as a ``pa.Table``; it runs
    ``compute(job, slot, check_stop)`` (micro-batches, merged decoding, hand-off exports; returns
    a :class:`~.shards.ShardData` over the slot's host buffers) once the previous shard's compute
    is done, then waits for a writer and returns the shard's table (:func:`~.shard_table.shard_table`),
    which map encodes and writes to a temp file named ``cache_file_name``. The file appears only
    after the function returned, so a stopped or failed compute leaves nothing behind; then the
    file is fsynced, recorded and renamed into place."""
    job = turn.job

    def compute_and_build(batch: pa.Table) -> pa.Table:
        data = turn.compute(lambda: compute(job, turn.slot, turn.check_stop))
        turn.start_writing()  # from here on this map counts as a writer (table build + write + commit)
        return shard_table(ctx, features, batch, data)

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        prompts.select(range(job.lo, job.hi)).with_format("arrow").map(
            compute_and_build, batched=True, batch_size=job.hi - job.lo, features=features,
            cache_file_name=str(writing_path(path)), new_fingerprint=fingerprint, load_from_cache_file=False)
        commit_shard(writing_path(path), path, rows=job.hi - job.lo)  # fsync, record size/rows/checksum, rename
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise UserError(f"disk full while writing {job.pass_name}/{path.name}; finished shards are kept: "
                            "free space (see the plan) and rerun the same command to resume") from exc
        raise


def writer_count(device: torch.device, cfg: CollectConfig) -> int:
    """How many maps may write at once: two where a run can be disk-bound (a GPU storing more than
    the last positions), one elsewhere (a CPU run is bound by the model, and a writer costs a shard
    of RAM). Runs use ``writer_count + 1`` concurrent maps (one computing while these write).

    On a GPU an all-positions run is bound by the disk, and ext4 flushes each of map's shard files
    when it is closed (its temp file is truncated and rewritten, which triggers ``auto_da_alloc``):
    while one writer waits for that flush another fills the page cache, so the disk never idles.

    Example:
        >>> from types import SimpleNamespace
        >>> writer_count(torch.device("cpu"), SimpleNamespace(positions="all"))
        1
    """
    return 2 if device.type == "cuda" and not cfg.positions.startswith("last") else 1
