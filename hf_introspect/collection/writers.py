"""Writing computed shards: each one ``Dataset.map`` whose ``cache_file_name`` is the shard's final
file (so it exists whole or not at all), on one writer or two writer threads.
"""

from __future__ import annotations

import errno
from pathlib import Path

import torch
from datasets import Dataset, Features

from ..config import CollectConfig
from ..errors import UserError
from .pipeline import ShardPrefetcher
from .shard_table import shard_table
from .integrity import commit_shard, writing_path


def write_shard(prefetch: ShardPrefetcher, result, ctx: PassContext, features: Features, prompts: Dataset,
                path: Path, fingerprint: str) -> None:
    """Write one computed shard as one ``Dataset.map`` whose ``cache_file_name`` is the shard's
    final file (map writes a temp file and renames it: the shard exists whole or not), then hand
    its buffers back to the inference thread."""
    job, data = result.job, result.value
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        prompts.select(range(job.lo, job.hi)).with_format("arrow").map(
            lambda batch: shard_table(ctx, features, batch, data), batched=True, batch_size=job.hi - job.lo,
            features=features, cache_file_name=str(writing_path(path)), new_fingerprint=fingerprint, load_from_cache_file=False)
        commit_shard(writing_path(path), path, rows=job.hi - job.lo)  # fsync, record size/rows/checksum, rename
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise UserError(f"disk full while writing {job.pass_name}/{path.name}; finished shards are kept: "
                            "free space (see the plan) and rerun the same command to resume") from exc
        raise
    finally:
        prefetch.release(result)  # map has written the table: its buffers may be refilled


class ShardWriters:
    """Writes shards one at a time in the calling thread, or with ``n > 1`` in ``n`` threads at
    once. On a GPU an all-positions run is bound by the disk, and ext4 flushes each of map's
    shard files when it is closed (its temp file is truncated and rewritten, which triggers
    ``auto_da_alloc``): while one writer waits for that flush another fills the page cache, so
    the disk never idles. Shards are independent files, so their order of completion is free."""

    def __init__(self, n: int):
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        self.n = n
        self.pool = ThreadPoolExecutor(n, thread_name_prefix="hf_introspect-writer") if n > 1 else None
        self.running = deque()

    def submit(self, fn, *args) -> None:
        if self.pool is None:
            fn(*args)
            return
        while len(self.running) >= self.n:
            self.running.popleft().result()  # re-raises a writer's error here
        self.running.append(self.pool.submit(fn, *args))

    def drain(self) -> None:
        while self.running:
            self.running.popleft().result()

    def close(self) -> None:
        if self.pool is not None:
            for f in self.running:
                f.cancel()
            self.pool.shutdown(wait=True)  # a shard being written finishes (or fails) whole


def writer_count(device: torch.device, cfg: CollectConfig) -> int:
    """Two concurrent shard writers where a run can be disk-bound (a GPU storing more than the last
    positions), one elsewhere (a CPU run is bound by the model, and a writer costs a shard of RAM).

    Example:
        >>> from types import SimpleNamespace
        >>> writer_count(torch.device("cpu"), SimpleNamespace(positions="all"))
        1
    """
    return 2 if device.type == "cuda" and not cfg.positions.startswith("last") else 1
