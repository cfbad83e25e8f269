"""Collection: questions -> three prompt passes -> sharded, resumable `Dataset.map` over the model.

Per pass, the prompt dataset is cut into shards of ``save_every * batch_size`` rows. Each shard is
one ``Dataset.map(batched=True)`` whose ``cache_file_name`` is the shard's final Arrow file, so a
shard either exists whole or not at all; a rerun skips the shards that exist. Under
``accelerate launch`` the shards are dealt round-robin to processes (shard i -> rank i % N), so a
resumed run may use a different number of processes than the first attempt.
"""

from __future__ import annotations

import errno
import logging
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from datasets import Dataset, DatasetDict, Features, load_from_disk
from datasets.arrow_writer import OptimizedTypedSequence
from datasets.utils import logging as ds_logging

from .. import __version__
from ..config import CollectConfig, config_hash, kept_positions, options_end, parse_layers
from ..errors import UserError
from .run_lock import holding_run_lock
from .multi_process import check_device_map, deal_shards, idle_ranks_hint, process_state
from .integrity import commit_shard, repair, writing_path
from .multi_process import check_device_map, deal_shards, idle_ranks_hint, process_state
from .integrity import commit_shard, repair, writing_path
from .context_check import check_long, find_long, max_positions
from .inference import BatchOutput, PendingBatch, continue_batches, launch_batch, row_generator
from ..models.load import LoadedModel, load_model
from .pipeline import HostBuffers, ShardJob, ShardPrefetcher
from .planning import Plan, check_fits, fmt_bytes, free_bytes, host_buffer_bytes, plan_pass
from .prompt_dataset import build_prompt_dataset
from .prefix import MIN_SHARED_TOKENS, HandoffStore, SharedPrefix, compute_shared_prefix, handoff_lengths
from ..passes import PROMPT_TYPES, labels_for_pass
from .prompts import load_templates
from .readout import entropy_nats, expected_confidence, logit_margin, parse_label, resolve_label_token_ids, softmax_np
from ..schema import layer_column, pass_features
from .storage import (check_output_dir, clean_partial_files, existing_bytes, finalize_run, finalize_split,
                      prepare_output_dir, shard_path, split_is_final)

logger = logging.getLogger("hf_introspect")

RESIDUAL_DOC = ("activations_layer_00 = embedding output; activations_layer_i = residual stream after "
                "block i; the last index is the last block's output BEFORE the final norm")


def _versions() -> dict:
    # From the installed packages' metadata: importing peft only to read its version took 0.3 s.
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    return {"hf_introspect": __version__, "python": platform.python_version(), "torch": torch.__version__,
            **{name: installed(name) for name in ("transformers", "datasets", "accelerate", "peft", "pyarrow")},
            "numpy": np.__version__}


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


# Continuations of consecutive micro-batches are decoded as one batch of up to this many rows and
# this many bytes of KV cache. Measured on the 2-core CPU VM (SmolLM2, float32): a decode step
# takes 92 ms for 4 rows, 148 for 16, 226 for 32, 398 for 64 (memory-bound: every weight is read
# once per step), so 4 merged micro-batches cost 2.5x less than 4 separate ones. On a GPU a step
# is bound by kernel launches whatever the rows, so merging saves more; the KV budget keeps the
# deferred caches small next to the model (on a GPU also at most a tenth of its memory: a merged
# decode step briefly holds the cache twice).
DECODE_MAX_ROWS = {"cpu": 64, "cuda": 256}
DECODE_KV_BUDGET = {"cpu": 512 * 2**20, "cuda": 4 * 2**30}


def _decode_kv_budget(device: torch.device) -> int:
    budget = DECODE_KV_BUDGET.get(device.type, 0)
    if device.type == "cuda":
        budget = min(budget, torch.cuda.get_device_properties(device).total_memory // 10)
    return budget


@dataclass
class PassContext:
    """What the shard computation needs, gathered once per pass (kept out of map's fingerprinting)."""

    cfg: CollectConfig
    lm: LoadedModel
    pass_name: str
    labels: tuple[str, ...]
    label_ids: dict[str, list[int]]
    layers: list[int]
    eos_ids: set[int]
    micro_batch: int
    buffers: HostBuffers
    overflow_layers: set[int] = field(default_factory=set)
    decode_max_rows: int = 1  # rows decoded together (1 = each micro-batch on its own)
    decode_kv_budget: int = 0
    prefix_ids: list[int] | None = None  # tokens every prompt of the pass starts with (None: no sharing)
    _prefix: SharedPrefix | None = field(default=None, repr=False)
    # Per-question prefixes handed between passes (see _handoff_pairs): this pass exports them to
    # ``handoff_to`` / runs on those exported by ``handoff_from``.
    handoff_to: str | None = None
    handoff_from: str | None = None
    handoffs: dict[int, HandoffStore] = field(default_factory=dict)  # shard index -> exported for this pass
    # Set while one shard is computed: what to export (row -> tokens), where, and what to run on.
    export_lengths: list[int] | None = None
    export_hidden: bool = False
    exported: HandoffStore | None = None
    row_prefixes: HandoffStore | None = None
    prompt_only: bool = False  # forwards only (no continuation): re-exporting for a resumed pass

    def shared_prefix(self) -> SharedPrefix | None:
        """The pass's shared prefix, run through the model on first use (in whichever thread asks)."""
        if self.prefix_ids and self._prefix is None:
            self._prefix = compute_shared_prefix(self.lm.model, self.prefix_ids, self.layers)
            if self._prefix is None:
                self.prefix_ids = None  # the model's cache cannot be shared: whole prompts
        return self._prefix

    def launch_rows(self, seqs, positions, qids, host_alloc=None, rows=None, export=False) -> PendingBatch:
        """One micro-batch of the shard's ``rows`` (indices in the shard)."""
        gens = [row_generator(self.cfg.seed, q, self.pass_name) for q in qids] if self.cfg.temperature > 0 else None
        row_prefix = self.row_prefixes.for_rows(rows) if self.row_prefixes is not None and rows is not None else None
        export = [self.export_lengths[r] for r in rows] if export and self.export_lengths is not None else None
        return launch_batch(self.lm.model, seqs, pad_id=self.lm.tokenizer.pad_token_id, label_ids=self.label_ids,
                            layers=self.layers, keep_positions=positions, act_dtype=self.cfg.act_dtype,
                            max_new_tokens=0 if self.prompt_only else self.cfg.max_new_tokens,
                            temperature=self.cfg.temperature, top_p=self.cfg.top_p, eos_ids=self.eos_ids,
                            generators=gens, host_alloc=host_alloc,
                            defer_continuation=self.decode_max_rows > len(seqs), prefix=self.shared_prefix(),
                            row_prefix=row_prefix, export=export, export_hidden=self.export_hidden)

    def continue_rows(self, group: list[tuple[list[int], PendingBatch, BatchOutput]], seqs, qids) -> None:
        """Decode the deferred continuations of ``group`` as one batch and fill each
        ``BatchOutput.generated_ids``. On out-of-memory (the caches are consumed by then), merging
        is switched off and the group's prompts are run again, continuation included, keeping no
        positions (their activations are already stored)."""
        states = [pending.decode for _, pending, _ in group]
        for _, pending, _ in group:
            pending.decode = None
        ids = None
        try:
            ids = continue_batches(self.lm.model, states, max_new_tokens=self.cfg.max_new_tokens,
                                   temperature=self.cfg.temperature, top_p=self.cfg.top_p, eos_ids=self.eos_ids)
        except (torch.OutOfMemoryError, RuntimeError) as exc:
            if not _is_oom(exc):
                raise
        if ids is None:  # recovered outside the except block, whose traceback holds the failed decode's cache
            del states
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            rows = [r for chunk, _, _ in group for r in chunk]
            self.decode_max_rows = 1
            logger.warning("out of memory decoding %d rows together: continuations are now decoded per micro-batch "
                           "(those rows' prompts run again, without storing anything)", len(rows))
            # The activations are stored already: gather none. OOM here halves the micro-batch as usual.
            redo = _run_with_backoff(self, rows, seqs, {r: np.zeros(0, np.int64) for r in rows}, qids)
            ids = [[redo[r][0].generated_ids[redo[r][1]] for r in chunk] for chunk, _, _ in group]
        for (_, _, out), rows_ids in zip(group, ids):
            out.generated_ids = rows_ids


def _run_with_backoff(ctx: PassContext, rows: list[int], seqs, positions, qids,
                      sink: tuple[list[np.ndarray], np.ndarray] | None = None,
                      check_stop=lambda: None, export: bool = False) -> dict[int, tuple[BatchOutput, int]]:
    """Run rows in micro-batches of ctx.micro_batch, halving it on out-of-memory.

    Micro-batch k + 1 is launched before k's results are read, so the device computes while the
    host waits for, copies and scatters the previous one. With ``sink = (flats, offsets)``, row
    r's activations of stored layer j are copied into ``flats[j][offsets[r]:offsets[r + 1]]``
    (from the two alternating staging buffers) and ``BatchOutput.activations`` becomes None.
    With ``export``, each micro-batch's row prefixes for a later pass go to ``ctx.exported``."""
    results: dict[int, tuple[BatchOutput, int]] = {}
    # Finished micro-batches whose continuation is deferred, to be decoded together.
    group: list[tuple[list[int], PendingBatch, BatchOutput]] = []
    group_kv = [0]

    def decode_group() -> None:
        if group:
            ctx.continue_rows(group, seqs, qids)
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
        if pending.handoff is not None and ctx.exported is not None:
            ctx.exported.add(chunk, pending.handoff)
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
                                      [qids[r] for r in chunk], host_alloc=staging, rows=chunk, export=export)
        except (torch.OutOfMemoryError, RuntimeError) as exc:
            if not _is_oom(exc):
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


def _array2d_storage(flat: np.ndarray, offsets: np.ndarray) -> pa.Array:
    """``Array2D((None, hidden))`` storage (list<list<dtype>>) over a (tokens, hidden) buffer, zero-copy.

    offsets: (rows + 1,) int32 row starts, in tokens.
    """
    tokens, hidden = flat.shape
    if (tokens + 1) * hidden >= 2**31:
        raise UserError(f"a shard of {tokens} stored positions x hidden {hidden} exceeds Arrow's int32 list "
                        "offsets; lower --save_every or --batch_size")
    inner = pa.ListArray.from_arrays(pa.array(np.arange(0, (tokens + 1) * hidden, hidden, dtype=np.int32)),
                                     pa.array(flat.reshape(-1)))
    return pa.ListArray.from_arrays(pa.array(offsets), inner)


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


def _shard_rows(ctx: PassContext, prompts: Dataset, job: ShardJob):
    """A shard's prompts: token ids, question ids and kept positions per row, and the order its
    micro-batches take them in (longest first: similar lengths share a micro-batch, less padding,
    and an OOM shows early)."""
    batch = prompts.with_format("arrow")[job.lo:job.hi]
    seqs = batch.column("input_ids").to_pylist()
    spans = batch.column("question_token_span").to_pylist()
    opts = batch.column("option_token_spans").to_pylist()
    qids = batch.column("question_id").to_pylist()
    positions = [kept_positions(ctx.cfg.positions, len(s), tuple(sp), options_end(o)) for s, sp, o in zip(seqs, spans, opts)]
    return seqs, qids, positions, _longest_first([len(s) for s in seqs])


def _column(ds: Dataset, name: str) -> list:
    """A whole column as a Python list, read once through Arrow: ``ds[name]`` is a lazy Column
    whose rows are fetched one ``__getitem__`` at a time (~36 us each: 3.6 s per 100k rows)."""
    return ds.with_format("arrow")[:].column(name).to_pylist()


def _longest_first(lengths) -> list[int]:
    """Row indices, longest prompt first (stable: equal lengths keep their order). The plan's
    hand-off memory figure relies on the shards using exactly this order."""
    return sorted(range(len(lengths)), key=lambda r: -lengths[r])


def _compute_shard(ctx: PassContext, prompts: Dataset, job: ShardJob, slot: int, check_stop) -> ShardData:
    """Inference for one shard (runs on the prefetch thread). With ``ctx.export_lengths`` set, its
    row prefixes for the next pass are exported into ``ctx.exported`` on the way."""
    seqs, qids, positions, order = _shard_rows(ctx, prompts, job)
    n = len(seqs)
    offsets = np.zeros(n + 1, dtype=np.int32)  # row r -> rows offsets[r]:offsets[r + 1] of the flat buffers
    np.cumsum([len(p) for p in positions], out=offsets[1:])
    flats = ctx.buffers.shard(slot, int(offsets[-1]))
    results = _run_with_backoff(ctx, order, seqs, positions, qids, sink=(flats, offsets), check_stop=check_stop,
                                export=ctx.export_lengths is not None)
    return ShardData(seqs, qids, positions, offsets, flats, results)


def _handoff_plan(src: PassContext, dst: PassContext, src_prompts: Dataset, dst_prompts: Dataset,
                  job: ShardJob) -> None:
    """Set ``src`` up to export, while it computes shard ``job.index``, the row prefixes ``dst``
    will run on: per row the tokens both passes' prompts share after the shared prefix, with
    hidden states only if ``dst`` stores a position among them."""
    src_seqs = src_prompts.with_format("arrow")[job.lo:job.hi].column("input_ids").to_pylist()
    dst_seqs, _, dst_positions, _ = _shard_rows(dst, dst_prompts, job)
    P = len(src.prefix_ids or ())
    src.export_lengths = handoff_lengths(src_seqs, dst_seqs, P)
    src.export_hidden = _exports_hidden(dst_positions, src.export_lengths, P)
    src.exported = HandoffStore()


def _exports_hidden(dst_positions: list[np.ndarray], lengths, P: int) -> bool:
    """Whether a shard's handed prefixes carry hidden states: only if the later pass stores a
    position among the handed tokens (P .. P + length - 1) of some row."""
    return any(((p >= P) & (p < P + q)).any() for p, q in zip(dst_positions, lengths))


def _end_export(src: PassContext) -> HandoffStore:
    store = src.exported
    src.export_lengths, src.export_hidden, src.exported = None, False, None
    return store


def _export_again(src: PassContext, dst: PassContext, src_prompts: Dataset, dst_prompts: Dataset, job: ShardJob,
                  check_stop) -> HandoffStore:
    """The row prefixes of a shard whose source pass is already stored (a resumed run): the source's
    prompt forwards run again, in the same micro-batches, storing nothing, so the handed values are
    bit-identical to an uninterrupted run's (as long as the micro-batch size is the same: one
    halved by out of memory in the first attempt is not remembered, as for any resumed shard)."""
    _handoff_plan(src, dst, src_prompts, dst_prompts, job)
    seqs, qids, _, order = _shard_rows(src, src_prompts, job)
    src.prompt_only = True
    try:
        _run_with_backoff(src, order, seqs, {r: np.zeros(0, np.int64) for r in order}, qids, check_stop=check_stop,
                          export=True)
    finally:
        src.prompt_only = False
        store = _end_export(src)  # also on an error: no export plan or held prefixes left behind
    return store


def _shard_table(ctx: PassContext, features: Features, batch: pa.Table, data: ShardData) -> pa.Table:
    """The shard's output table (map over ``with_format("arrow")`` returns it): the input columns
    pass through untouched, the metadata columns are encoded as map would, and each activation
    column is one flat buffer wrapped zero-copy (no per-row encoding, which was the slowest part
    of a write)."""
    cfg, lm = ctx.cfg, ctx.lm
    mcq = ctx.pass_name == "mcq"
    n = batch.num_rows
    if batch.column("question_id").to_pylist() != data.qids:  # the thread and map must agree on the rows
        raise RuntimeError(f"{ctx.pass_name}: shard rows out of step with the inference thread")
    correct_letters = batch.column("correct_answer_letter").to_pylist()
    out: dict[str, list] = {k: [] for k in ("model_name", "checkpoint_id", "temperature", "top_p",
                                            "max_new_tokens", "output_text", "parsed_answer", "parse_source",
                                            "logits", "probs", "entropy", "activation_positions",
                                            "fp16_overflow_count")}
    extra = ("is_correct", "logit_margin", "answer_token_index") if mcq else \
        ("confidence_token_index", "self_confidence" if ctx.pass_name == "self_conf" else "other_confidence")
    out.update({k: [] for k in extra})
    for r in range(n):
        res, k = data.results[r]
        logits = res.label_logits[k].astype(np.float32)
        probs = softmax_np(logits.astype(np.float64))
        text = lm.tokenizer.decode(res.generated_ids[k], skip_special_tokens=True)
        parsed = parse_label(text, ctx.labels)
        source = "output_text" if parsed is not None else "argmax"
        if parsed is None:
            parsed = ctx.labels[int(np.argmax(logits))]
        out["model_name"].append(lm.source.model_name)
        out["checkpoint_id"].append(lm.checkpoint_id)
        out["temperature"].append(cfg.temperature)
        out["top_p"].append(cfg.top_p)
        out["max_new_tokens"].append(cfg.max_new_tokens)
        out["output_text"].append(text)
        out["parsed_answer"].append(parsed)
        out["parse_source"].append(source)
        out["logits"].append(logits)
        out["probs"].append(probs.astype(np.float32))
        out["entropy"].append(float(entropy_nats(probs)))
        readout_index = len(data.seqs[r]) - 1
        if mcq:
            correct = correct_letters[r]
            out["is_correct"].append(parsed == correct)
            out["logit_margin"].append(logit_margin(logits, ctx.labels.index(correct)))
            out["answer_token_index"].append(readout_index)
        else:
            out["confidence_token_index"].append(readout_index)
            out[extra[1]].append(expected_confidence(probs))
        out["activation_positions"].append(data.positions[r].astype(np.int32))
        overflow = res.overflow_counts[k]
        out["fp16_overflow_count"].append(int(overflow.sum()))
        if overflow.any():
            new = {ctx.layers[j] for j in np.flatnonzero(overflow)} - ctx.overflow_layers
            if new:
                ctx.overflow_layers |= new
                logger.warning("%s: non-finite values after the cast to %s in layers %s (counted in "
                               "fp16_overflow_count); rerun with --act_dtype float32 to keep them",
                               ctx.pass_name, cfg.act_dtype, sorted(ctx.overflow_layers))
    table = batch
    for name, values in out.items():
        table = table.append_column(name, pa.array(OptimizedTypedSequence(values, type=features[name], col=name)))
    for i, flat in zip(ctx.layers, data.flats):
        table = table.append_column(layer_column(i), _array2d_storage(flat, data.offsets))
    return table


def _write_shard(prefetch: ShardPrefetcher, result, ctx: PassContext, features: Features, prompts: Dataset,
                 path: Path, fingerprint: str) -> None:
    """Write one computed shard as one ``Dataset.map`` whose ``cache_file_name`` is the shard's
    final file (map writes a temp file and renames it: the shard exists whole or not), then hand
    its buffers back to the inference thread."""
    job, data = result.job, result.value
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        prompts.select(range(job.lo, job.hi)).with_format("arrow").map(
            lambda batch: _shard_table(ctx, features, batch, data), batched=True, batch_size=job.hi - job.lo,
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


def _writer_count(device: torch.device, cfg: CollectConfig) -> int:
    """Two concurrent shard writers where a run can be disk-bound (a GPU storing more than the last
    positions), one elsewhere (a CPU run is bound by the model, and a writer costs a shard of RAM)."""
    return 2 if device.type == "cuda" and not cfg.positions.startswith("last") else 1


PREFIX_SCAN_ROWS = 4096  # prompts read per block when looking for the shared prefix


def _shared_prefix_ids(cfg: CollectConfig, prompts: Dataset) -> list[int] | None:
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


def _handed_lengths(src: Dataset, dst: Dataset, shared: int) -> np.ndarray:
    """Per question, the tokens of ``dst``'s prompt that ``src``'s prompt for the same question
    shares after the first ``shared`` (read in blocks). (rows,) int64"""
    a, b = src.with_format("arrow"), dst.with_format("arrow")
    parts = [handoff_lengths(a[lo:lo + PREFIX_SCAN_ROWS].column("input_ids").to_pylist(),
                             b[lo:lo + PREFIX_SCAN_ROWS].column("input_ids").to_pylist(), shared)
             for lo in range(0, len(src), PREFIX_SCAN_ROWS)]
    return np.asarray([n for part in parts for n in part], dtype=np.int64)


def _handoff_pairs(cfg: CollectConfig, prompts: dict[str, Dataset],
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
            lengths = _handed_lengths(prompts[earlier], prompts[later], len(contexts[later].prefix_ids or ()))
            n = int(lengths.sum())
            if n >= MIN_SHARED_TOKENS * len(prompts[later]) and (best is None or n > int(best[1].sum())):
                best = (earlier, lengths)
        if best is not None:
            pairs[later] = best
            contexts[best[0]].handoff_to, contexts[later].handoff_from = later, best[0]
    return pairs


def _eos_ids(lm: LoadedModel) -> set[int]:
    ids = set()
    for src in (lm.tokenizer.eos_token_id, getattr(getattr(lm.model, "generation_config", None), "eos_token_id", None)):
        if isinstance(src, int):
            ids.add(src)
        elif isinstance(src, (list, tuple)):
            ids.update(int(i) for i in src)
    return ids


def _process_state():
    """accelerate's view of this process. Without CUDA, PartialState(cpu=True) is what makes
    `accelerate launch --multi_gpu --num_processes N` see N ranks (plain PartialState says 1 of 1)."""
    state = process_state()  # with a barrier timeout that fits a long run (multi_process.py)
    if not state.is_main_process:
        logger.setLevel(logging.WARNING)  # one copy of the plan and progress, from rank 0
    return state


def build_run_config(cfg: CollectConfig, lm: LoadedModel, templates: dict, layers: list[int], label_ids: dict,
                     questions: Dataset, shard_plan: dict) -> dict:
    identity = {"config": cfg.identity(), "model": lm.identity, "templates": templates,
                "use_chat_template": lm.use_chat_template, "label_token_ids": label_ids,
                "question_ids_hash": config_hash({"ids": questions["question_id"]})}
    return {
        "run_id": config_hash(identity),
        "config": cfg.to_dict(),
        "model_name": lm.source.model_name,
        "checkpoint_id": lm.checkpoint_id,
        "num_layers": lm.num_layers,
        "hidden_size": lm.hidden_size,
        "layers_stored": layers,
        "residual_stream": RESIDUAL_DOC,
        "num_questions": len(questions),
        "question_sources": sorted(set(questions["question_source"])),
        "shards": shard_plan,
        "versions": _versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "identity": identity,
    }


def _load_question_set(cfg: CollectConfig, questions: Dataset | None) -> Dataset:
    if questions is None:
        from ..questions.sources import load_questions, parse_question_columns

        columns = parse_question_columns(cfg.question_columns) if cfg.question_columns else None
        return load_questions(cfg.questions, num_questions=cfg.num_questions, seed=cfg.seed,
                              shuffle_options=cfg.shuffle_options, question_ids=cfg.question_ids,
                              source_format=cfg.question_format, columns=columns)
    if cfg.num_questions is not None:
        if cfg.num_questions > len(questions):
            raise UserError(f"--num_questions {cfg.num_questions} is more than the {len(questions)} questions available")
        return questions.select(range(cfg.num_questions))
    return questions


def _warmup_seconds(ctx: PassContext, prompts: Dataset, total_tokens: int) -> float:
    """Estimated inference time: one micro-batch of the longest prompts, timed and extrapolated by
    the count of tokens run (``total_tokens``: shared prefixes counted once). An upper bound (it
    also pays one-off start-up costs, the pass's prefix forward among them), and it proves early
    that the largest batch fits in memory."""
    longest = _longest_first(_column(prompts, "seq_len"))[:ctx.micro_batch]
    rows = prompts.select(longest)
    seqs = rows["input_ids"]
    positions = [kept_positions(ctx.cfg.positions, len(s), tuple(sp), options_end(o))
                 for s, sp, o in zip(seqs, rows["question_token_span"], rows["option_token_spans"])]
    t0 = time.perf_counter()
    _run_with_backoff(ctx, list(range(len(seqs))), seqs, positions, rows["question_id"])
    elapsed = time.perf_counter() - t0
    return elapsed * total_tokens / max(1, sum(len(s) - len(ctx.prefix_ids or ()) for s in seqs))


@holding_run_lock
def collect(cfg: CollectConfig, *, lm: LoadedModel | None = None, questions: Dataset | None = None) -> DatasetDict | Plan:
    """Run every pass for every question and write the dataset to ``cfg.output_dir``.

    Prints a plan (rows, tokens, bytes, free disk, estimated time) first; with ``cfg.dry_run`` it
    returns that :class:`Plan` and writes nothing. ``lm`` and ``questions`` may be passed in
    (tests, notebooks) to skip loading them again.

    Example:
        >>> ds = collect(CollectConfig(output_dir="test_run_base", num_questions=10, batch_size=4))  # doctest: +SKIP
        >>> ds["mcq"].features["activations_layer_30"]                                              # doctest: +SKIP
        Array2D(shape=(None, 576), dtype='float16')
    """
    state = _process_state()
    check_device_map(cfg.device_map, state.num_processes)
    out = Path(cfg.output_dir)
    # Cheap checks first: a conflicting folder is refused before minutes of model loading.
    check_output_dir(out, cfg.identity(), overwrite=cfg.overwrite, passes=cfg.passes)
    questions = _load_question_set(cfg, questions)
    templates = load_templates(cfg.prompt_templates)
    if lm is None:
        lm = load_model(cfg.model, lora_checkpoint=cfg.lora_checkpoint, dtype=cfg.dtype,
                        device=None if cfg.device_map else state.device, device_map=cfg.device_map,
                        allow_missing_weights=cfg.allow_missing_weights)
    layers = parse_layers(cfg.layers, lm.num_layers + 1)
    label_ids = {p: resolve_label_token_ids(lm.tokenizer, labels_for_pass(p)) for p in cfg.passes}
    n_shards = -(-len(questions) // cfg.shard_rows)
    hint = idle_ranks_hint(len(questions), cfg.nominal_batch_size, cfg.save_every, state.num_processes)
    if hint and state.is_main_process:
        logger.warning(hint)
    shard_plan = {"rows_per_shard": cfg.shard_rows, "num_shards": n_shards}
    device = next(lm.model.parameters()).device
    run = RunSetup(cfg=cfg, state=state, out=out, questions=questions, lm=lm, layers=layers, label_ids=label_ids,
                   n_shards=n_shards, device=device,
                   run_config=build_run_config(cfg, lm, templates, layers, label_ids, questions, shard_plan),
                   micro_batch=(cfg.shard_rows if device.type == "cuda" else 8) if cfg.batch_size == "auto"
                   else cfg.nominal_batch_size)

    progress_was_on = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()  # our own bars, one per pass, instead of one per map call
    t_start = time.perf_counter()
    try:
        prompts = {p: build_prompt_dataset(questions, p, templates[p], lm.tokenizer, lm.use_chat_template,
                                           fingerprint=f"{run.run_id}-{p}-prompts") for p in cfg.passes}
        prompts, run = _fit_context(run, prompts, templates)  # over-long prompts: refused, or dropped
        questions = run.questions
        buffers = HostBuffers(len(layers), lm.hidden_size, cfg.act_dtype, pin=device.type == "cuda")
        contexts = {p: PassContext(cfg, lm, p, labels_for_pass(p), label_ids[p], layers, _eos_ids(lm),
                                   run.micro_batch, buffers, decode_max_rows=DECODE_MAX_ROWS.get(device.type, 1),
                                   decode_kv_budget=_decode_kv_budget(device),
                                   prefix_ids=_shared_prefix_ids(cfg, prompts[p])) for p in cfg.passes}
        plan = _plan_and_prepare(run, prompts, contexts)
        if cfg.dry_run:
            return plan
        try:
            _write_shards(run, prompts, contexts, t_start)
        finally:
            buffers.release()
    finally:
        if progress_was_on:
            ds_logging.enable_progress_bar()
    if state.is_main_process:
        finalize_run(out, cfg.passes)
    state.wait_for_everyone()
    return load_from_disk(str(out))


def _fit_context(run: "RunSetup", prompts: dict[str, Dataset], templates: dict) -> tuple[dict[str, Dataset], "RunSetup"]:
    """Refuse prompts longer than the model's context, or with ``--skip_long`` drop their questions
    from every pass (a question is collected in all passes or none) and record them."""
    from dataclasses import replace

    first = next(iter(prompts.values()))
    found = find_long({p: _column(ds, "seq_len") for p, ds in prompts.items()}, _column(first, "question_id"),
                      max_positions(run.lm.model.config), run.cfg.max_new_tokens)
    keep = check_long(found, run.cfg.skip_long)
    if keep is None:
        return prompts, run
    questions = run.questions.select(keep).flatten_indices(keep_in_memory=True)
    prompts = {p: ds.select(keep).flatten_indices(keep_in_memory=True) for p, ds in prompts.items()}
    n_shards = -(-len(questions) // run.cfg.shard_rows)
    run_config = build_run_config(run.cfg, run.lm, templates, run.layers, run.label_ids, questions,
                                  {"rows_per_shard": run.cfg.shard_rows, "num_shards": n_shards})
    run_config["skipped_long"] = found.record()
    return prompts, replace(run, questions=questions, n_shards=n_shards, run_config=run_config)


@dataclass
class RunSetup:
    """What one collection run works with, resolved once by :func:`collect`."""

    cfg: CollectConfig
    state: object  # accelerate.PartialState
    out: Path
    questions: Dataset
    lm: LoadedModel
    layers: list[int]
    label_ids: dict[str, dict[str, list[int]]]  # pass -> label -> token ids
    n_shards: int
    device: torch.device
    run_config: dict
    micro_batch: int

    @property
    def run_id(self) -> str:
        return self.run_config["run_id"]

    def shard_rows(self, index: int) -> tuple[int, int]:
        return index * self.cfg.shard_rows, min((index + 1) * self.cfg.shard_rows, len(self.questions))

    def my_shards(self) -> list[int]:
        """This process's shards: shard i -> rank i % N (so a resume may use another N)."""
        return deal_shards(self.out, self.cfg.passes, self.n_shards, self.state)


MASK_BYTES = 8  # a handed prefix's mask (rows, L) is int64: 8 bytes per token slot


def _handoff_bytes_per_token(run: RunSetup, cfg: CollectConfig) -> tuple[int, int]:
    """Bytes a handed prefix holds per token: every block's keys and values, and the stored layers'
    hidden states (kept only where the later pass stores a position among those tokens)."""
    conf = run.lm.model.config
    heads = getattr(conf, "num_attention_heads", 1)
    head_dim = getattr(conf, "head_dim", None) or run.lm.hidden_size // heads
    kv_heads = getattr(conf, "num_key_value_heads", None) or heads
    model_bytes = next(run.lm.model.parameters()).element_size()
    return (run.lm.num_layers * 2 * kv_heads * head_dim * model_bytes,
            len(run.layers) * run.lm.hidden_size * np.dtype(cfg.act_dtype).itemsize)


def _handoff_held_bytes(run: RunSetup, src: Dataset, dst: Dataset, lengths: np.ndarray, P: int) -> int:
    """The most any shard's handed prefixes hold at once (``HandoffStore.nbytes``): the source
    pass exports per micro-batch (rows longest prompt first, as ``_shard_rows`` orders them), each
    as wide as its longest handed prefix, so the padding counts too. For the starting micro-batch
    size: after an out-of-memory back-off the micro-batches, hence the padding, differ. The later
    pass briefly holds a re-padded copy of one micro-batch's rows on top (``select_rows``)."""
    cfg = run.cfg
    kv_bytes, hidden_bytes = _handoff_bytes_per_token(run, cfg)
    src_len, dst_len, spans = _column(src, "seq_len"), _column(dst, "seq_len"), _column(dst, "question_token_span")
    opts = _column(dst, "option_token_spans")
    most = 0
    for i in range(run.n_shards):
        lo, hi = run.shard_rows(i)
        order = [lo + r for r in _longest_first(src_len[lo:hi])]
        width = sum(len(c) * int(lengths[c].max()) for c in
                    (order[k:k + run.micro_batch] for k in range(0, len(order), run.micro_batch)))
        positions = [kept_positions(cfg.positions, int(dst_len[r]), tuple(spans[r]), options_end(opts[r]))
                     for r in range(lo, hi)]
        per_token = kv_bytes + MASK_BYTES + (hidden_bytes if _exports_hidden(positions, lengths[lo:hi], P) else 0)
        most = max(most, width * per_token)
    return most


def _plan_and_prepare(run: RunSetup, prompts: dict[str, Dataset], contexts: dict[str, PassContext]) -> Plan:
    """Print the plan (sizes, free disk, time from a warm-up batch); unless it is a dry run, check it
    fits and prepare the output folder (run_config.json, partial files of an interrupted run removed)."""
    cfg, out, state = run.cfg, run.out, run.state
    plan = Plan(passes=[plan_pass(p, _column(prompts[p], "seq_len"), _column(prompts[p], "question_token_span"),
                                  cfg.positions, run.layers, run.lm.hidden_size, cfg.act_dtype,
                                  _column(prompts[p], "option_token_spans")) for p in cfg.passes],
                layers=run.layers, hidden=run.lm.hidden_size, act_dtype=cfg.act_dtype, free_bytes=free_bytes(out),
                done_bytes=existing_bytes(out, cfg.passes) if not cfg.overwrite else 0)
    writers, rows = _writer_count(run.device, cfg), min(cfg.shard_rows, len(run.questions))
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
    pairs = _handoff_pairs(cfg, prompts, contexts)  # after the prefixes: a model that cannot share has none
    for later, (earlier, lengths) in pairs.items():
        pp, n = plan.passes[cfg.passes.index(later)], int(lengths.sum())
        per_q = n / max(1, len(prompts[later]))
        held = _handoff_held_bytes(run, prompts[earlier], prompts[later], lengths, shared[later])
        plan.notes.append(f"{later} runs on {earlier}'s per-question prefixes (its shard i right after {earlier}'s): "
                          f"{per_q:.1f} tokens per question ({n / max(1, pp.prompt_tokens):.0%} of its prompt "
                          f"tokens) not run again; one shard's prefixes held at a time, up to {fmt_bytes(held)} "
                          f"of {where} memory")
    run_tokens = sum(pp.prompt_tokens - shared[p] * len(prompts[p]) - (int(pairs[p][1].sum()) if p in pairs else 0)
                     for p, pp in zip(cfg.passes, plan.passes))
    first = cfg.passes[0]
    plan.seconds = _warmup_seconds(contexts[first], prompts[first], run_tokens)
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


def _write_shards(run: RunSetup, prompts: dict[str, Dataset], contexts: dict[str, PassContext], t_start: float) -> None:
    """Every pass's missing shards of this process: computed by the prefetch thread, in the order
    they are written, one shard ahead of the writer(s); the passes once all their shards exist.

    Shards go in shard order, each shard's passes together (mcq 0, self_conf 0, other_conf 0,
    mcq 1, ...), so a pass that runs on another's per-question prefixes finds them exported by the
    shard just before; the prefixes of one shard are held at a time."""
    from tqdm.auto import tqdm

    cfg, out, state, lm = run.cfg, run.out, run.state, run.lm
    t_shards = time.perf_counter()
    mine = run.my_shards()
    open_passes = [p for p in cfg.passes if not split_is_final(out, p)]
    jobs = [ShardJob(p, i, *run.shard_rows(i)) for i in mine for p in open_passes
            if not shard_path(out, p, i, run.n_shards).is_file()]
    todo = {(job.pass_name, job.index) for job in jobs}

    def compute(job: ShardJob, slot: int, check_stop) -> ShardData:
        ctx = contexts[job.pass_name]
        if ctx.handoff_from is not None:  # run on the source pass's exports (made again if it is stored already)
            src = contexts[ctx.handoff_from]
            ctx.row_prefixes = ctx.handoffs.pop(job.index, None)
            if ctx.row_prefixes is None:
                ctx.row_prefixes = _export_again(src, ctx, prompts[src.pass_name], prompts[job.pass_name], job,
                                                 check_stop)
        if ctx.handoff_to is not None and (ctx.handoff_to, job.index) in todo:
            _handoff_plan(ctx, contexts[ctx.handoff_to], prompts[job.pass_name], prompts[ctx.handoff_to], job)
        try:
            data = _compute_shard(ctx, prompts[job.pass_name], job, slot, check_stop)
            if ctx.exported is not None:
                contexts[ctx.handoff_to].handoffs[job.index] = ctx.exported
            return data
        finally:
            _end_export(ctx)
            ctx.row_prefixes = None

    features = {p: pass_features(p, len(labels_for_pass(p)), run.layers, lm.hidden_size, cfg.act_dtype)
                for p in open_passes}
    writers = ShardWriters(_writer_count(run.device, cfg))
    try:
        with ShardPrefetcher(jobs, compute, device=run.device, slots=writers.n + 1) as prefetch:
            bar = tqdm(total=len(mine) * len(open_passes), initial=len(mine) * len(open_passes) - len(jobs),
                       desc="shards", unit="shard", disable=not state.is_local_main_process)
            for job in jobs:
                result = prefetch.take()
                if (result.job.pass_name, result.job.index) != (job.pass_name, job.index):
                    prefetch.release(result)
                    raise RuntimeError(f"inference thread out of step: it computed {result.job.pass_name} "
                                       f"shard {result.job.index}, the writer is at {job.pass_name} shard {job.index}")
                bar.set_postfix_str(f"{job.pass_name} {job.index}")
                writers.submit(_write_shard, prefetch, result, contexts[job.pass_name], features[job.pass_name],
                               prompts[job.pass_name], shard_path(out, job.pass_name, job.index, run.n_shards),
                               f"{run.run_id}-{job.pass_name}-{job.index:05d}")
                bar.update(1)
            writers.drain()
            bar.close()
            state.wait_for_everyone()
            if state.is_main_process:
                for pass_name in open_passes:
                    description = (f"hf_introspect {PROMPT_TYPES[pass_name]} pass of {lm.source.model_name} "
                                   f"({lm.checkpoint_id}); {RESIDUAL_DOC}; label token ids {run.label_ids[pass_name]}")
                    finalize_split(out, pass_name, run.n_shards, len(run.questions), f"{run.run_id}-{pass_name}",
                                   description)
            state.wait_for_everyone()
        if jobs:
            # Which side bounds the run: a writer that waits means inference is the bottleneck.
            logger.info("%s; setup (prompts, plan, warm-up batch) took %.1f s, the shards %.1f s",
                        prefetch.summary(), t_shards - t_start, time.perf_counter() - t_shards)
    finally:
        writers.close()
