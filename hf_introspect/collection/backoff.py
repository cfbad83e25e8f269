"""Running a shard's rows in micro-batches: launched one ahead of the one being read, halved on
out-of-memory, their continuations decoded together in groups (merged decoding), rerun per
micro-batch when a merged decode runs out of memory.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from ..errors import UserError
from .decode import continue_batches
from .prefix import ShardHandoff
from .inference import BatchOutput, PendingBatch


logger = logging.getLogger("hf_introspect")


def is_oom(exc: BaseException) -> bool:
    """Whether an exception is the device running out of memory (CUDA's, or a backend's RuntimeError).

    Example:
        >>> is_oom(RuntimeError("MPS backend out of memory")), is_oom(ValueError("shape"))
        (True, False)
    """
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def run_with_backoff(ctx: PassContext, rows: list[int], seqs, positions, qids,
                     sink: tuple[list[np.ndarray], np.ndarray] | None = None,
                     check_stop=lambda: None, shard: ShardHandoff | None = None,
                     export: bool = False) -> dict[int, tuple[BatchOutput, int]]:
    """Run rows in micro-batches of ctx.micro_batch, halving it on out-of-memory.

    Micro-batch k + 1 is launched before k's results are read, so the device computes while the
    host waits for, copies and scatters the previous one. With ``sink = (flats, offsets)``, row
    r's activations of stored layer j are copied into ``flats[j][offsets[r]:offsets[r + 1]]``
    (from the two alternating staging buffers) and ``BatchOutput.activations`` becomes None.
    ``shard`` is the shard's hand-off state (row prefixes to run on, or what to export); with
    ``export``, each micro-batch's row prefixes for a later pass go to ``shard.exported``."""
    shard = shard if shard is not None else ShardHandoff()
    results: dict[int, tuple[BatchOutput, int]] = {}
    # Finished micro-batches whose continuation is deferred, to be decoded together.
    group: list[tuple[list[int], PendingBatch, BatchOutput]] = []
    group_kv = [0]

    def decode_group() -> None:
        if group:
            decode_together(ctx, group, seqs, qids, shard)
            group.clear()
            group_kv[0] = 0

    def finish(chunk: list[int], pending: PendingBatch) -> None:
        out = pending.result()
        if sink is not None:
            flats, offsets = sink
            # Destination token index of each stacked position (rows in the micro-batch's order).
            dest = np.concatenate([np.arange(offsets[r], offsets[r + 1]) for r in chunk])
            for j, flat in enumerate(flats):
                flat[dest] = out.stacked[j]  # (n_kept_total, hidden) rows scattered in one call
            out.activations = out.stacked = None
        for k, r in enumerate(chunk):
            results[r] = (out, k)
        if pending.handoff is not None and shard.exported is not None:
            shard.exported.add(chunk, pending.handoff)
            pending.handoff = None
        if pending.decode is not None:
            group.append((chunk, pending, out))
            group_kv[0] += pending.decode.kv_bytes()
            rows = sum(len(c) for c, _, _ in group)
            # Decode now if one more micro-batch would not fit the group.
            if rows + ctx.micro_batch > ctx.decode_max_rows or group_kv[0] * (rows + ctx.micro_batch) > \
                    ctx.decode_kv_budget * rows:
                decode_group()

    in_flight: tuple[list[int], PendingBatch] | None = None
    i = launched = 0
    while i < len(rows):
        check_stop()
        chunk = rows[i:i + ctx.micro_batch]
        staging = (lambda shape, dtype, w=launched % 2: ctx.buffers.staging(shape, dtype, w)) if sink is not None else None
        oom = False
        try:
            pending = ctx.launch_rows([seqs[r] for r in chunk], [positions[r] for r in chunk],
                                      [qids[r] for r in chunk], shard, host_alloc=staging, rows=chunk,
                                      export=export)
        except (torch.OutOfMemoryError, RuntimeError) as exc:
            if not is_oom(exc):
                raise
            if ctx.micro_batch == 1 and not group and in_flight is None:
                raise UserError(f"one prompt of {len(seqs[chunk[0]])} tokens does not fit in memory; store fewer "
                                "--layers or --positions, use --dtype bfloat16, or spread the model with --device_map auto") from exc
            oom = True
        if oom:  # handled after the except block, whose traceback holds the failed forward's tensors
            if group or in_flight is not None:  # free the held caches first, then retry the same size
                if in_flight is not None:
                    finish(*in_flight)
                    in_flight = None
                decode_group()
            else:
                ctx.micro_batch = max(1, ctx.micro_batch // 2)
                logger.warning("out of memory: batch size lowered to %d and retried", ctx.micro_batch)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            continue
        if in_flight is not None:
            finish(*in_flight)
        in_flight = (chunk, pending)
        i += len(chunk)
        launched += 1
    if in_flight is not None:
        finish(*in_flight)
    decode_group()
    return results


def decode_together(ctx, group: list[tuple[list[int], PendingBatch, BatchOutput]], seqs, qids,
                 shard: ShardHandoff) -> None:
    """Decode the deferred continuations of ``group`` as one batch and fill each
    ``BatchOutput.generated_ids``. On out-of-memory (the caches are consumed by then), merging
    is switched off and the group's prompts are run again, continuation included, keeping no
    positions (their activations are already stored)."""
    states = [pending.decode for _, pending, _ in group]
    for _, pending, _ in group:
        pending.decode = None
    ids = None
    try:
        ids = continue_batches(ctx.lm.model, states, max_new_tokens=ctx.cfg.max_new_tokens,
                               temperature=ctx.cfg.temperature, top_p=ctx.cfg.top_p, eos_ids=ctx.eos_ids)
    except (torch.OutOfMemoryError, RuntimeError) as exc:
        if not is_oom(exc):
            raise
    if ids is None:  # recovered outside the except block, whose traceback holds the failed decode's cache
        del states
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        rows = [r for chunk, _, _ in group for r in chunk]
        ctx.decode_max_rows = 1
        logger.warning("out of memory decoding %d rows together: continuations are now decoded per micro-batch "
                       "(those rows' prompts run again, without storing anything)", len(rows))
        # The activations are stored already: gather none. OOM here halves the micro-batch as usual.
        redo = run_with_backoff(ctx, rows, seqs, {r: np.zeros(0, np.int64) for r in rows}, qids, shard=shard)
        ids = [[redo[r][0].generated_ids[redo[r][1]] for r in chunk] for chunk, _, _ in group]
    for (_, _, out), rows_ids in zip(group, ids):
        out.generated_ids = rows_ids
