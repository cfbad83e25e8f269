"""Sharing work between prompts: the pass's shared prefix (run once), and the per-question prefixes
one pass hands to a later one (its shard i runs only the tokens after them), made again for a
resumed run whose source pass is stored already.
"""

from __future__ import annotations

import numpy as np
from datasets import Dataset

from ..config import CollectConfig
from .backoff import run_with_backoff
from .prefix import ShardHandoff
from .pipeline import ShardJob
from .prefix import MIN_SHARED_TOKENS, HandoffStore, ShardHandoff, compute_shared_prefix, handoff_lengths
from .shards import read_shard_rows


PREFIX_SCAN_ROWS = 4096  # prompts read per block when looking for the shared prefix


def shared_prefix_ids(cfg: CollectConfig, prompts: Dataset) -> list[int] | None:
    """The tokens every prompt of the pass starts with, when worth sharing. Taken over the whole
    pass (not this process's shards), so a resumed or multi-process run shares the same prefix.
    Read from Arrow in blocks (no Python lists of every prompt's tokens)."""
    if not cfg.share_prefix or len(prompts) == 0:
        return None
    table = prompts.with_format("arrow")
    first = np.asarray(table[:1].column("input_ids")[0].values)  # (len_0,) the first prompt's tokens
    n = len(first) - 1  # every prompt keeps at least its last token
    for lo in range(0, len(prompts), PREFIX_SCAN_ROWS):
        col = table[lo:lo + PREFIX_SCAN_ROWS].column("input_ids").combine_chunks()  # list<int>
        offsets = np.asarray(col.offsets)  # (rows + 1,) into the (possibly sliced) child array
        values = np.asarray(col.flatten())  # this block's tokens only, from offsets[0]
        starts = offsets[:-1] - offsets[0]
        n = min(n, int(np.diff(offsets).min()) - 1)
        if n < MIN_SHARED_TOKENS:
            return None
        head = values[starts[:, None] + np.arange(n)]  # (rows, n) each prompt's first n tokens
        differ = head != first[:n]
        if differ.any():
            n = int(differ.argmax(axis=1)[differ.any(axis=1)].min())
    return first[:n].tolist() if n >= MIN_SHARED_TOKENS else None


def handed_lengths(src: Dataset, dst: Dataset, shared: int) -> np.ndarray:
    """Per question, the tokens of ``dst``'s prompt that ``src``'s prompt for the same question
    shares after the first ``shared`` (read in blocks). (rows,) int64"""
    a, b = src.with_format("arrow"), dst.with_format("arrow")
    parts = [handoff_lengths(a[lo:lo + PREFIX_SCAN_ROWS].column("input_ids").to_pylist(),
                             b[lo:lo + PREFIX_SCAN_ROWS].column("input_ids").to_pylist(), shared)
             for lo in range(0, len(src), PREFIX_SCAN_ROWS)]
    return np.asarray([n for part in parts for n in part], dtype=np.int64)


def handoff_pairs(cfg: CollectConfig, prompts: dict[str, Dataset],
                  contexts: dict[str, PassContext]) -> dict[str, tuple[str, np.ndarray]]:
    """Which pass runs on which earlier pass's per-question prefixes: ``{later: (earlier, lengths)}``,
    ``lengths`` (rows,) being each question's tokens not run again.

    With the default templates ``other_conf`` repeats ``self_conf``'s prompt up to "Instead,"
    (system turn, question, options: ~76 of ~190 tokens with SmolLM2), so its shard i runs only
    the rest, on the keys/values ``self_conf``'s shard i exported. A pass is paired with the
    earlier one sharing the most tokens, at least MIN_SHARED_TOKENS per question on average, with
    the same shared prefix; a pass is a source or a target, not both. Decided over whole passes,
    so every process and every resumed run pairs the same way."""
    pairs: dict[str, tuple[str, np.ndarray]] = {}
    if not cfg.share_prefix or not prompts or len(next(iter(prompts.values()))) == 0:
        return pairs
    first = next(iter(contexts.values()))
    # Sliding-window, quantized... caches cannot be exported: probe with a 2-token forward.
    if compute_shared_prefix(first.lm.model, prompts[first.pass_name][0]["input_ids"][:2], []) is None:
        return pairs
    for k, later in enumerate(cfg.passes):
        best = None
        for earlier in cfg.passes[:k]:
            if earlier in pairs or any(src == earlier for src, _ in pairs.values()) or \
                    contexts[earlier].prefix_ids != contexts[later].prefix_ids:
                continue
            lengths = handed_lengths(prompts[earlier], prompts[later], len(contexts[later].prefix_ids or ()))
            n = int(lengths.sum())
            if n >= MIN_SHARED_TOKENS * len(prompts[later]) and (best is None or n > int(best[1].sum())):
                best = (earlier, lengths)
        if best is not None:
            pairs[later] = best
            contexts[best[0]].handoff_to, contexts[later].handoff_from = later, best[0]
    return pairs


def plan_export(src: PassContext, dst: PassContext, src_prompts: Dataset, dst_prompts: Dataset,
                job: ShardJob) -> ShardHandoff:
    """The hand-off state that makes ``src`` export, while it computes shard ``job.index``, the row prefixes ``dst``
    will run on: per row the tokens both passes' prompts share after the shared prefix, with
    hidden states only if ``dst`` stores a position among them."""
    src_seqs = src_prompts.with_format("arrow")[job.lo:job.hi].column("input_ids").to_pylist()
    dst_seqs, _, dst_positions, _ = read_shard_rows(dst, dst_prompts, job)
    P = len(src.prefix_ids or ())
    lengths = handoff_lengths(src_seqs, dst_seqs, P)
    return ShardHandoff(export_lengths=lengths, export_hidden=exports_hidden(dst_positions, lengths, P),
                        exported=HandoffStore())


def exports_hidden(dst_positions: list[np.ndarray], lengths, P: int) -> bool:
    """Whether a shard's handed prefixes carry hidden states: only if the later pass stores a
    position among the handed tokens (P .. P + length - 1) of some row.

    Example:
        >>> exports_hidden([np.array([4, 20])], [6], P=10), exports_hidden([np.array([12, 20])], [6], P=10)
        (False, True)
    """
    return any(((p >= P) & (p < P + q)).any() for p, q in zip(dst_positions, lengths))


def export_again(src: PassContext, dst: PassContext, src_prompts: Dataset, dst_prompts: Dataset, job: ShardJob,
                 check_stop) -> HandoffStore:
    """The row prefixes of a shard whose source pass is already stored (a resumed run): the source's
    prompt forwards run again, in the same micro-batches, storing nothing, so the handed values are
    bit-identical to an uninterrupted run's (as long as the micro-batch size is the same: one
    halved by out of memory in the first attempt is not remembered, as for any resumed shard)."""
    shard = plan_export(src, dst, src_prompts, dst_prompts, job)
    shard.prompt_only = True
    seqs, qids, _, order = read_shard_rows(src, src_prompts, job)
    run_with_backoff(src, order, seqs, {r: np.zeros(0, np.int64) for r in order}, qids, check_stop=check_stop,
                     shard=shard, export=True)
    return shard.exported
