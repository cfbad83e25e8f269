"""One shard's inference (inside the shard's ``Dataset.map`` function): its rows read from the
prompt dataset, ordered longest first, run through :func:`~.backoff.run_with_backoff` with their
activations scattered into the shard's flat host buffers (:class:`ShardData`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from datasets import Dataset

from ..config import kept_positions, options_end
from .backoff import run_with_backoff
from .prefix import ShardHandoff
from .inference import BatchOutput
from .pipeline import ShardJob


@dataclass
class ShardData:
    """A computed shard, in its rows' dataset order: inputs, results, and the flat activation
    buffers (one per stored layer, rows at ``offsets``) that its Arrow columns wrap."""

    seqs: list[list[int]]
    qids: list[str]
    positions: list[np.ndarray]
    offsets: np.ndarray  # (rows + 1,) int32
    flats: list[np.ndarray]  # per stored layer: (tokens, hidden)
    results: dict[int, tuple[BatchOutput, int]]


def read_shard_rows(ctx: PassContext, prompts: Dataset, job: ShardJob):
    """A shard's prompts: token ids, question ids and kept positions per row, and the order its
    micro-batches take them in (longest first: similar lengths share a micro-batch, less padding,
    and an OOM shows early)."""
    batch = prompts.with_format("arrow")[job.lo:job.hi]
    seqs = batch.column("input_ids").to_pylist()
    spans = batch.column("question_token_span").to_pylist()
    opts = batch.column("option_token_spans").to_pylist()
    qids = batch.column("question_id").to_pylist()
    positions = [kept_positions(ctx.cfg.positions, len(s), tuple(sp), options_end(o)) for s, sp, o in zip(seqs, spans, opts)]
    return seqs, qids, positions, longest_first([len(s) for s in seqs])


def column_values(ds: Dataset, name: str) -> list:
    """A whole column as a Python list, read once through Arrow: ``ds[name]`` is a lazy Column
    whose rows are fetched one ``__getitem__`` at a time (~36 us each: 3.6 s per 100k rows)."""
    return ds.with_format("arrow")[:].column(name).to_pylist()


def longest_first(lengths) -> list[int]:
    """Row indices, longest prompt first (stable: equal lengths keep their order). The plan's
    hand-off memory figure relies on the shards using exactly this order.

    Example:
        >>> longest_first([3, 9, 3, 5])
        [1, 3, 0, 2]
    """
    return sorted(range(len(lengths)), key=lambda r: -lengths[r])


def compute_shard(ctx: PassContext, prompts: Dataset, job: ShardJob, slot: int, check_stop,
                  shard: ShardHandoff) -> ShardData:
    """Inference for one shard (runs in map's function, in the shard's turn). With ``shard.export_lengths`` set,
    its row prefixes for the next pass are exported into ``shard.exported`` on the way."""
    seqs, qids, positions, order = read_shard_rows(ctx, prompts, job)
    n = len(seqs)
    offsets = np.zeros(n + 1, dtype=np.int32)  # row r -> rows offsets[r]:offsets[r + 1] of the flat buffers
    np.cumsum([len(p) for p in positions], out=offsets[1:])
    flats = ctx.buffers.shard(slot, int(offsets[-1]))
    results = run_with_backoff(ctx, order, seqs, positions, qids, sink=(flats, offsets), check_stop=check_stop,
                               shard=shard, export=shard.export_lengths is not None)
    return ShardData(seqs, qids, positions, offsets, flats, results)
