"""The plan printed before a run: sizes, free disk, host and hand-off memory figures, and the time
estimated from a timed warm-up batch; then the output folder is prepared.
"""

from __future__ import annotations

import logging
import sys
import time

import numpy as np
from datasets import Dataset

from ..config import CollectConfig, kept_positions, options_end
from .backoff import run_with_backoff
from .handoff import exports_hidden, handoff_pairs
from .integrity import repair
from .planning import Plan, check_fits, fmt_bytes, free_bytes, host_buffer_bytes, plan_pass
from .shards import column_values, longest_first
from .storage import clean_partial_files, existing_bytes, prepare_output_dir
from .writers import writer_count


logger = logging.getLogger("hf_introspect")


MASK_BYTES = 8  # a handed prefix's mask (rows, L) is int64: 8 bytes per token slot


def handoff_bytes_per_token(run: RunSetup, cfg: CollectConfig) -> tuple[int, int]:
    """Bytes a handed prefix holds per token: every block's keys and values, and the stored layers'
    hidden states (kept only where the later pass stores a position among those tokens)."""
    conf = run.lm.model.config
    heads = getattr(conf, "num_attention_heads", 1)
    head_dim = getattr(conf, "head_dim", None) or run.lm.hidden_size // heads
    kv_heads = getattr(conf, "num_key_value_heads", None) or heads
    model_bytes = next(run.lm.model.parameters()).element_size()
    return (run.lm.num_layers * 2 * kv_heads * head_dim * model_bytes,
            len(run.layers) * run.lm.hidden_size * np.dtype(cfg.act_dtype).itemsize)


def handoff_held_bytes(run: RunSetup, src: Dataset, dst: Dataset, lengths: np.ndarray, P: int) -> int:
    """The most any shard's handed prefixes hold at once (``HandoffStore.nbytes``): the source
    pass exports per micro-batch (rows longest prompt first, as ``read_shard_rows`` orders them), each
    as wide as its longest handed prefix, so the padding counts too. For the starting micro-batch
    size: after an out-of-memory back-off the micro-batches, hence the padding, differ. The later
    pass briefly holds a re-padded copy of one micro-batch's rows on top (``select_rows``)."""
    cfg = run.cfg
    kv_bytes, hidden_bytes = handoff_bytes_per_token(run, cfg)
    src_len, dst_len, spans = column_values(src, "seq_len"), column_values(dst, "seq_len"), column_values(dst, "question_token_span")
    opts = column_values(dst, "option_token_spans")
    most = 0
    for i in range(run.n_shards):
        lo, hi = run.shard_rows(i)
        order = [lo + r for r in longest_first(src_len[lo:hi])]
        width = sum(len(c) * int(lengths[c].max()) for c in
                    (order[k:k + run.micro_batch] for k in range(0, len(order), run.micro_batch)))
        positions = [kept_positions(cfg.positions, int(dst_len[r]), tuple(spans[r]), options_end(opts[r]))
                     for r in range(lo, hi)]
        per_token = kv_bytes + MASK_BYTES + (hidden_bytes if exports_hidden(positions, lengths[lo:hi], P) else 0)
        most = max(most, width * per_token)
    return most


def plan_and_prepare(run: RunSetup, prompts: dict[str, Dataset], contexts: dict[str, PassContext]) -> Plan:
    """Print the plan (sizes, free disk, time from a warm-up batch); unless it is a dry run, check it
    fits and prepare the output folder (run_config.json, partial files of an interrupted run removed)."""
    cfg, out, state = run.cfg, run.out, run.state
    plan = Plan(passes=[plan_pass(p, column_values(prompts[p], "seq_len"), column_values(prompts[p], "question_token_span"),
                                  cfg.positions, run.layers, run.lm.hidden_size, cfg.act_dtype,
                                  column_values(prompts[p], "option_token_spans")) for p in cfg.passes],
                layers=run.layers, hidden=run.lm.hidden_size, act_dtype=cfg.act_dtype, free_bytes=free_bytes(out),
                done_bytes=existing_bytes(out, cfg.passes) if not cfg.overwrite else 0)
    writers, rows = writer_count(run.device, cfg), min(cfg.shard_rows, len(run.questions))
    plan.notes.append(f"host memory for activation buffers: up to "
                      f"{fmt_bytes(host_buffer_bytes(plan, rows, writers + 1, run.micro_batch))} "
                      f"({writers + 1} shards of {rows} rows + 2 micro-batches; lower --save_every to shrink it)")
    ctx, where = contexts[cfg.passes[0]], "host" if run.device.type == "cpu" else "GPU"
    if cfg.max_new_tokens > 0 and ctx.decode_max_rows > run.micro_batch:
        plan.notes.append(f"merged decoding: continuations of up to {ctx.decode_max_rows} rows decoded together, "
                          f"holding up to {fmt_bytes(ctx.decode_kv_budget)} of KV cache in {where} memory")
    for p in cfg.passes:  # run each pass's prefix now: a model whose cache cannot be shared says so here
        contexts[p].shared_prefix()
    shared = {p: len(contexts[p].prefix_ids or ()) for p in cfg.passes}
    if any(shared.values()):
        plan.notes.append("shared prompt prefix, run once per pass: " + ", ".join(
            f"{p} {n} tokens ({n * len(prompts[p]) / max(1, pp.prompt_tokens):.0%} of its prompt tokens)"
            for (p, n), pp in zip(shared.items(), plan.passes)) + "; --no_share_prefix turns it off")
    pairs = handoff_pairs(cfg, prompts, contexts)  # after the prefixes: a model that cannot share has none
    for later, (earlier, lengths) in pairs.items():
        pp, n = plan.passes[cfg.passes.index(later)], int(lengths.sum())
        per_q = n / max(1, len(prompts[later]))
        held = handoff_held_bytes(run, prompts[earlier], prompts[later], lengths, shared[later])
        plan.notes.append(f"{later} runs on {earlier}'s per-question prefixes (its shard i right after {earlier}'s): "
                          f"{per_q:.1f} tokens per question ({n / max(1, pp.prompt_tokens):.0%} of its prompt "
                          f"tokens) not run again; one shard's prefixes held at a time, up to {fmt_bytes(held)} "
                          f"of {where} memory")
    run_tokens = sum(pp.prompt_tokens - shared[p] * len(prompts[p]) - (int(pairs[p][1].sum()) if p in pairs else 0)
                     for p, pp in zip(cfg.passes, plan.passes))
    first = cfg.passes[0]
    plan.seconds = warmup_seconds(contexts[first], prompts[first], run_tokens)
    if state.is_main_process:
        print(str(plan), file=sys.stderr)
    if cfg.dry_run:
        return plan
    check_fits(plan, str(out), cfg.force)
    if state.is_main_process:
        resuming = prepare_output_dir(out, run.run_config, overwrite=cfg.overwrite, passes=cfg.passes)
        removed = clean_partial_files(out, cfg.passes)
        repair(out)  # damaged shards are named in a warning, removed, and collected again
        if resuming:
            logger.info("resuming run %s in %s%s", run.run_id, out,
                        f" (removed {len(removed)} partial file(s))" if removed else "")
    state.wait_for_everyone()
    return plan


def warmup_seconds(ctx: PassContext, prompts: Dataset, total_tokens: int) -> float:
    """Estimated inference time: one micro-batch of the longest prompts, timed and extrapolated by
    the count of tokens run (``total_tokens``: shared prefixes counted once). An upper bound (it
    also pays one-off start-up costs, the pass's prefix forward among them), and it proves early
    that the largest batch fits in memory."""
    longest = longest_first(column_values(prompts, "seq_len"))[:ctx.micro_batch]
    rows = prompts.select(longest)
    seqs = rows["input_ids"]
    positions = [kept_positions(ctx.cfg.positions, len(s), tuple(sp), options_end(o))
                 for s, sp, o in zip(seqs, rows["question_token_span"], rows["option_token_spans"])]
    t0 = time.perf_counter()
    run_with_backoff(ctx, list(range(len(seqs))), seqs, positions, rows["question_id"])
    elapsed = time.perf_counter() - t0
    return elapsed * total_tokens / max(1, sum(len(s) - len(ctx.prefix_ids or ()) for s in seqs))
