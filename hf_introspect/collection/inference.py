"""One batch through the model: residual stream, restricted next-token logits and a short
continuation, from a single prompt forward pass whose KV cache the continuation reuses.

The continuation of several prompt batches can run as one decode batch
(:func:`launch_batch` with ``defer_continuation=True``, then :func:`continue_batches`): a decode
step costs about the same for 4 rows as for 32 (a CPU streams every weight once per step, a GPU
is bound by kernel launches), so decoding a shard's micro-batches together cuts that cost by
the number of micro-batches merged.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .forward import (cache_kwarg, cache_of, cache_tensors, forward_hidden, left_pad, pad_left,
                      to_device)
from .prefix import RowPrefix
from .readout import restricted_logits

ACT_DTYPES = {"float16": torch.float16, "float32": torch.float32}


@dataclass
class BatchOutput:
    label_logits: np.ndarray  # (batch, n_labels) float32
    # activations[r][j]: (n_kept_positions_r, hidden) for row r and the j-th stored layer
    activations: list[list[np.ndarray]] | None  # None once a caller has copied them out (collector sink)
    overflow_counts: np.ndarray  # (batch, n_stored_layers) non-finite values after the cast
    generated_ids: list[list[int]]  # continuation token ids, EOS excluded
    # (n_stored, n_kept_total, hidden): the host array the per-row views above point into, rows
    # in batch order; None once a caller has copied them out
    stacked: np.ndarray | None = None


def _sample(logits: torch.Tensor, temperature: float, top_p: float, generators: list[torch.Generator]) -> torch.Tensor:
    """Greedy when temperature == 0, else temperature + nucleus sampling with a per-row generator
    (seeded from the question id, so a row's sample does not depend on its batch)."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1).cpu()
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > top_p  # keep the smallest prefix reaching top_p
        sorted_p[drop] = 0
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    picks = [torch.multinomial(probs[r], 1, generator=generators[r]) for r in range(probs.shape[0])]
    return torch.cat(picks).to(logits.device)


def row_generator(seed: int, question_id: str, pass_name: str) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + zlib.crc32(f"{pass_name}/{question_id}".encode())) % (2**63))
    return g


def _to_host(t: torch.Tensor, dst: torch.Tensor | None = None) -> torch.Tensor:
    """Device -> host copy that does not wait: into pinned memory, ordered on the current stream
    (read it only after the batch's event). On a CPU this is a plain copy (or nothing)."""
    if t.device.type == "cpu":
        return t if dst is None else dst.copy_(t)
    if dst is None:
        dst = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    return dst.copy_(t, non_blocking=True)


@dataclass
class DecodeState:
    """A prompt batch whose continuation has not run yet: what decoding needs from its forward."""

    cache: object  # the prompt's KV cache (transformers DynamicCache)
    next_logits: torch.Tensor  # (batch, vocab) logits of the first generated token
    mask: torch.Tensor  # (batch, T) attention mask of the (left-padded) prompt
    generators: list[torch.Generator]

    @property
    def rows(self) -> int:
        return self.mask.shape[0]

    def kv_bytes(self) -> int:
        kv = cache_tensors(self.cache)
        return sum(k.nbytes + v.nbytes for k, v in kv) if kv is not None else 0


def merge_decode_states(states: list[DecodeState]) -> DecodeState | None:
    """One decode batch from several prompt batches: every cache and mask left-padded (with masked
    zeros) to the longest prompt and stacked along the batch. Positions are unaffected: decode
    position ids come from each row's count of real tokens, and RoPE is already in the keys.
    Consumes the states (each layer's source tensors are dropped as soon as they are copied, so
    the peak is one layer over the merged size). None when a cache is not a plain DynamicCache.

    Example:
        >>> merged = merge_decode_states([a.decode, b.decode])   # doctest: +SKIP
        >>> merged.rows == a.decode.rows + b.decode.rows          # doctest: +SKIP
        True
    """
    from transformers.cache_utils import DynamicCache

    if len(states) == 1:
        return states[0]
    per_state = [cache_tensors(s.cache) for s in states]
    if any(kv is None for kv in per_state) or len({len(kv) for kv in per_state}) != 1:
        return None
    n_layers = len(per_state[0])
    del per_state  # no references to the sources beyond the caches: each layer is freed once merged
    width = max(s.mask.shape[1] for s in states)

    def left(t: torch.Tensor, dim: int) -> torch.Tensor:
        return pad_left(t, dim, width)

    merged = DynamicCache()
    for i in range(n_layers):
        keys = torch.cat([left(s.cache.layers[i].keys, 2) for s in states])  # (rows, kv_heads, width, head_dim)
        values = torch.cat([left(s.cache.layers[i].values, 2) for s in states])
        for s in states:  # free the sources layer by layer
            s.cache.layers[i].keys = s.cache.layers[i].values = None
        merged.update(keys, values, i)
        del keys, values
    mask = torch.cat([left(s.mask, 1) for s in states])  # (rows, width)
    logits = torch.cat([s.next_logits for s in states])
    gens = [g for s in states for g in s.generators]
    for s in states:
        s.cache = None
    return DecodeState(merged, logits, mask, gens)


def tokens_to_ids(tokens: list[list[int]], eos_ids: set[int]) -> list[list[int]]:
    """Each row's generated ids up to (excluding) its first EOS."""
    generated: list[list[int]] = []
    for row in tokens:
        ids = []
        for t in row:
            if t in eos_ids:
                break
            ids.append(t)
        generated.append(ids)
    return generated


@torch.inference_mode()
def continue_batches(net, states: list[DecodeState], *, max_new_tokens: int, temperature: float = 0.0,
                     top_p: float = 1.0, eos_ids: set[int] = frozenset()) -> list[list[list[int]]]:
    """The continuations of several deferred batches (``launch_batch(defer_continuation=True)``),
    decoded as ONE batch; returns, per state, each row's generated ids (EOS excluded). Waits for
    the result. Falls back to one decode per state where the caches cannot be merged.

    Example:
        >>> a = launch_batch(net, seqs[:4], defer_continuation=True, max_new_tokens=10, **kw)  # doctest: +SKIP
        >>> b = launch_batch(net, seqs[4:], defer_continuation=True, max_new_tokens=10, **kw)  # doctest: +SKIP
        >>> ids_a, ids_b = continue_batches(net, [a.decode, b.decode], max_new_tokens=10)      # doctest: +SKIP
    """
    sizes = [s.rows for s in states]
    merged = merge_decode_states(states)
    groups = [merged] if merged is not None else states
    rows: list[list[int]] = []
    for g in groups:
        tokens = _continue(net, g.cache, g.next_logits, g.mask, max_new_tokens, temperature, top_p, eos_ids,
                           g.generators)
        rows += tokens_to_ids(tokens.cpu().tolist(), eos_ids)
        g.cache = None
    bounds = np.cumsum([0] + sizes)
    return [rows[bounds[i]:bounds[i + 1]] for i in range(len(states))]


@dataclass
class PendingBatch:
    """A batch whose device work and device-to-host copies are queued but maybe not finished.
    :meth:`result` waits for them (one event) and returns the :class:`BatchOutput`."""

    label_logits: torch.Tensor  # host (batch, n_labels) float32
    stacked: torch.Tensor  # host (n_stored, n_kept_total, hidden)
    overflow: torch.Tensor  # host (batch, n_stored) int64
    tokens: torch.Tensor | None  # host (batch, steps) generated tokens, EOS and after included
    offsets: np.ndarray  # (batch + 1,) row r's kept positions are stacked[:, offsets[r]:offsets[r + 1]]
    eos_ids: set[int]
    event: torch.cuda.Event | None  # recorded after the copies; None on a CPU (already done)
    # With defer_continuation: the continuation still to run (continue_batches); until then the
    # result's generated_ids are empty.
    decode: DecodeState | None = None
    # With export=: the rows' per-question prefixes for a later pass (prefix.RowPrefix), or None.
    handoff: object | None = None

    def result(self) -> BatchOutput:
        if self.event is not None:
            self.event.synchronize()
        host = self.stacked.numpy()
        n = len(self.offsets) - 1
        generated = tokens_to_ids(self.tokens.tolist(), self.eos_ids) if self.tokens is not None else [[] for _ in range(n)]
        # Per-row views into one contiguous host array: no further copies before Arrow encoding.
        activations = [[host[j, self.offsets[r]:self.offsets[r + 1]] for j in range(host.shape[0])] for r in range(n)]
        return BatchOutput(label_logits=self.label_logits.numpy(), activations=activations,
                           overflow_counts=self.overflow.numpy(), generated_ids=generated, stacked=host)


@torch.inference_mode()
def launch_batch(net, sequences: list[list[int]], *, pad_id: int, label_ids: dict[str, list[int]],
                 layers: list[int], keep_positions: list[np.ndarray], act_dtype: str = "float16",
                 max_new_tokens: int = 0, temperature: float = 0.0, top_p: float = 1.0,
                 eos_ids: set[int] = frozenset(), generators: list[torch.Generator] | None = None,
                 host_alloc: Callable[[tuple, torch.dtype], torch.Tensor] | None = None,
                 defer_continuation: bool = False, prefix=None, row_prefix=None,
                 export: list[int] | None = None, export_hidden: bool = False) -> PendingBatch:
    """Queue one batch: forward, gather of the stored layers x positions, readout and the
    continuation, with the results copied to host memory without waiting for them. Calling it for
    the next batch before :meth:`PendingBatch.result` of this one keeps a GPU busy while the host
    handles the previous batch. :func:`run_batch` is ``launch_batch(...).result()``.

    ``layers`` index the residual stack: 0 = embedding output, i = output of block i (the last
    one before the final norm). ``keep_positions[r]`` are prompt token indices (0..len-1) to keep.
    ``host_alloc(shape, dtype)``, if given, returns reusable host memory (pinned on CUDA) for the
    stored activations, which then stay valid only until it hands the same memory out again;
    without it every batch gets fresh memory (page faults on every call: ~1 s per GB on a small VM).
    ``defer_continuation=True`` leaves the continuation to :func:`continue_batches` (the
    returned batch keeps the prompt's KV cache in ``.decode``; its hidden states are freed).
    ``prefix`` (a :class:`hf_introspect.collection.prefix.SharedPrefix` every sequence starts with) skips
    recomputing those tokens: only the rest of each row runs, on top of the prefix's cache.
    ``row_prefix`` (a :class:`hf_introspect.collection.prefix.RowPrefix`, rows in this batch's order) goes
    further: row r's next ``row_prefix.lengths[r]`` tokens were run by another pass's forward,
    and only the tokens after them run here. ``export[r]`` asks for the opposite: the keys/values
    (and, with ``export_hidden``, the stored layers' hidden states) of row r's first ``export[r]``
    tokens after the shared prefix, returned as ``PendingBatch.handoff`` for a later pass.
    """
    device = next(net.parameters()).device
    b = len(sequences)
    P = prefix.length if prefix is not None else 0
    if P and any(s[:P] != prefix.ids for s in sequences):
        raise ValueError("launch_batch: a sequence does not start with the shared prefix's tokens")
    if row_prefix is not None and export is not None:
        raise ValueError("launch_batch: a batch run on row prefixes cannot export its own (no chained hand-offs)")
    Q = np.array(row_prefix.lengths if row_prefix is not None else [0] * b, dtype=np.int64)  # (batch,)
    if row_prefix is not None and any(s[P:P + q] != t for s, q, t in zip(sequences, Q, row_prefix.tokens)):
        raise ValueError("launch_batch: a sequence does not continue with its row prefix's tokens")
    # Only each row's own tokens go through the model, on top of the prefix's cache and the row
    # prefix's: mask (batch, P + L + T) = prefix ones + row prefixes + the left-padded rest;
    # row r's positions continue at P + Q[r].
    ids, mask, pos = left_pad([s[P + q:] for s, q in zip(sequences, Q)], pad_id, device)
    extra = {}
    if P or row_prefix is not None:
        pos = pos + to_device(torch.as_tensor(P + Q)[:, None], device)
        extra[cache_kwarg(net)] = _prefix_cache(prefix, row_prefix, b)
        parts = [torch.ones((b, P), dtype=mask.dtype, device=device)] if P else []
        if row_prefix is not None:
            parts.append(row_prefix.mask.to(device=device, dtype=mask.dtype))
        mask = torch.cat(parts + [mask], dim=1)
    out, hidden = forward_hidden(net, ids, mask, pos, use_cache=max_new_tokens > 0 or bool(extra) or bool(export),
                                 **extra)
    next_logits = out.logits[:, -1, :]  # (batch, vocab)
    label_index = {label: to_device(torch.tensor(ids, dtype=torch.long), device) for label, ids in label_ids.items()}
    label_logits = _to_host(restricted_logits(next_logits, label_index))

    # Only the stored layers and positions are gathered (on the device), cast and copied: padding
    # and unstored positions never cross to the host. (n_stored, n_kept_total, hidden)
    width = ids.shape[1]
    lens = np.array([len(s) for s in sequences], dtype=np.int64)  # (batch,)
    counts = [len(k) for k in keep_positions]
    row_of = np.repeat(np.arange(b), counts)  # (n_kept,) the row of each kept position
    full = np.concatenate([np.asarray(k, dtype=np.int64) for k in keep_positions]) if row_of.size else \
        np.zeros(0, np.int64)  # (n_kept,) index in the whole prompt
    start = P + Q[row_of]  # (n_kept,) where the row's tokens run here begin
    cols = width - (lens[row_of] - start) + (full - start)  # in this forward's output
    own, from_prefix = full >= start, full < P
    from_row = ~own & ~from_prefix  # from the row prefix: its hidden states, right-aligned
    if from_row.any() and (row_prefix is None or row_prefix.hidden is None):
        raise ValueError("launch_batch: kept positions fall in a row prefix exported without hidden states")
    shape, dtype = (len(layers), len(row_of), hidden[0].shape[-1]), ACT_DTYPES[act_dtype]
    # On a CPU the host buffer itself is the gather target (no second copy).
    on_host = device.type == "cpu" and host_alloc is not None
    kept = host_alloc(shape, dtype) if on_host else torch.empty(shape, dtype=dtype, device=device)
    row_of_t = to_device(row_of, device)
    # Index arrays per source: own (rows, cols in this forward), prefix (positions), row prefix
    # (rows, cols in its width); the destinations are positions in the stacked output.
    src = {"own": (row_of[own], cols[own]), "prefix": (full[from_prefix],),
           "row": (row_of[from_row], (row_prefix.width - Q[row_of] + full - P)[from_row] if row_prefix is not None
                   else np.zeros(0, np.int64))}
    dst = {k: to_device(np.flatnonzero(m), device) for k, m in (("own", own), ("prefix", from_prefix), ("row", from_row))}
    on_dev: dict = {}  # (source, device) -> index tensors there (device_map="auto": several GPUs)

    def at(name: str, dev) -> tuple:
        if (name, dev) not in on_dev:
            on_dev[name, dev] = tuple(to_device(a, dev) for a in src[name])
        return on_dev[name, dev]

    for j, i in enumerate(layers):
        h = hidden[i]
        if own.all():  # one gather, cast straight into the layer's slot (no float32 stack, one pass less)
            kept[j].copy_(h[at("own", h.device)])
            continue
        kept[j].index_copy_(0, dst["own"], h[at("own", h.device)].to(device=device, dtype=dtype))
        if from_prefix.any():
            kept[j].index_copy_(0, dst["prefix"], prefix.hidden[i][at("prefix", prefix.hidden[i].device)]
                                .to(device=device, dtype=dtype))
        if from_row.any():
            rh = row_prefix.hidden[i]
            kept[j].index_copy_(0, dst["row"], rh[at("row", rh.device)].to(device=device, dtype=dtype))
    handoff = _export_rows(out, hidden, sequences, P, width, export, layers if export_hidden else None, dtype) \
        if export is not None and max(export, default=0) > 0 else None
    del hidden
    # Non-finite values after the cast (float16 overflow), per row and layer: (batch, n_stored).
    if device.type == "cpu":  # counted only when there are any: one isfinite pass + all() usually
        overflow = torch.zeros((len(sequences), len(layers)), dtype=torch.int64)
        if not bool(torch.isfinite(kept).all()):
            overflow.index_add_(0, row_of_t, (~torch.isfinite(kept)).sum(dim=-1).T)
    else:  # counted on the device every time: asking first would make the host wait for the GPU
        overflow = torch.zeros((len(sequences), len(layers)), dtype=torch.int64, device=device)
        overflow = _to_host(overflow.index_add_(0, row_of_t, (~torch.isfinite(kept)).sum(dim=-1).T))
    stacked = kept if on_host else _to_host(kept, host_alloc(shape, dtype) if host_alloc is not None else None)
    del kept

    tokens = decode = None
    if max_new_tokens > 0:
        gens = generators or [torch.Generator() for _ in sequences]
        if defer_continuation and cache_tensors(cache_of(out)) is not None:  # else no merge: decode now
            decode = DecodeState(cache_of(out), next_logits, mask, gens)
        else:
            tokens = _to_host(_continue(net, cache_of(out), next_logits, mask, max_new_tokens, temperature, top_p,
                                        eos_ids, gens))
    del out  # the hidden states of every layer: only the gathered copy is kept
    event = None
    if device.type == "cuda":
        event = torch.cuda.Event()
        event.record()
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return PendingBatch(label_logits, stacked, overflow, tokens, offsets, set(eos_ids), event, decode, handoff)


def _prefix_cache(prefix, row_prefix, b: int):
    """The cache a batch runs on: the shared prefix (expanded to ``b`` rows, no copy) followed by
    the rows' own prefixes."""
    from transformers.cache_utils import DynamicCache

    if row_prefix is None:
        return prefix.cache_for(b)
    cache = DynamicCache()
    for i, (k, v) in enumerate(row_prefix.kv):
        if prefix is not None:
            pk, pv = prefix.kv[i]
            k = torch.cat([pk.expand(b, -1, -1, -1).to(k.device), k], dim=2)
            v = torch.cat([pv.expand(b, -1, -1, -1).to(v.device), v], dim=2)
        cache.update(k, v, i)
    return cache


def _export_rows(out, hidden, sequences, P: int, width: int, export: list[int], layers: list[int] | None, dtype):
    """Row r's first ``export[r]`` tokens after the shared prefix, from this forward: keys/values of
    every block and (``layers`` given) those layers' hidden states, as a RowPrefix right-aligned in
    the width of the longest. None when the cache is not a plain DynamicCache."""
    kv = cache_tensors(cache_of(out))
    if kv is None:
        return None
    n = np.asarray(export, dtype=np.int64)  # (batch,)
    own = np.array([len(s) for s in sequences]) - P  # (batch,) tokens each row ran in this forward
    if (n > own).any():
        raise ValueError("launch_batch: export reaches past a row's tokens")
    L, b = int(n.max()), len(sequences)
    k_idx = np.arange(L)[None, :] - (L - n)[:, None]  # (batch, L) index among the row's tokens, < 0: padding
    hcols = (width - own)[:, None] + np.clip(k_idx, 0, None)  # (batch, L) column in this forward's output
    cache_cols = kv[0][0].shape[2] - width + hcols  # (batch, L) the cache holds the prefixes first
    index: dict = {}  # device -> (rows, cache cols, hidden cols): with device_map="auto" blocks live on several

    def at(dev) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if dev not in index:
            index[dev] = tuple(to_device(a, dev) for a in (np.arange(b)[:, None], cache_cols, hcols))
        return index[dev]

    # keys[rows, :, cols] -> (batch, L, kv_heads, head_dim) -> (batch, kv_heads, L, head_dim)
    kv_rows = [(k[at(k.device)[0], :, at(k.device)[1]].transpose(1, 2).contiguous(),
                v[at(v.device)[0], :, at(v.device)[1]].transpose(1, 2).contiguous()) for k, v in kv]
    mask = to_device(torch.as_tensor(k_idx >= 0, dtype=torch.long), kv[0][0].device)
    hid = None
    if layers is not None:  # (batch, L, hidden) per stored layer
        hid = {i: hidden[i][at(hidden[i].device)[0], at(hidden[i].device)[2]].to(dtype) for i in layers}
    tokens = [list(s[P:P + m]) for s, m in zip(sequences, n)]
    return RowPrefix(tokens, kv_rows, mask, hid)


# A decode batch drops its finished rows once at least this share of them has ended: on a CPU a
# step costs ~5 ms per row on top of ~66 ms for streaming the weights (SmolLM2, 2-core VM), and
# about a fifth of the rows run to max_new_tokens while most end after 2-4 tokens. Dropping rows
# copies the surviving cache once (about what each step's cache concatenation costs anyway).
COMPACT_SHARE = 0.125


def _continue(net, cache, next_logits, mask, max_new_tokens, temperature, top_p, eos_ids, gens,
              compact: bool = True) -> torch.Tensor:
    """The continuation from the prompt's KV cache: (batch, steps) token ids on the device; a row's
    tokens after its EOS are EOS.

    EOS is tracked on the device: the host learns only how many rows have ended (one small copy
    per step, so a batch that answered in two tokens stops after two steps), never the tokens
    themselves until the end. With ``compact`` (and a plain DynamicCache) ended rows leave the
    batch, cache included, so the remaining steps run on the rows still generating; a row's
    tokens do not depend on it (each row has its own generator, and attention is per row)."""
    device = next_logits.device
    b = next_logits.shape[0]
    lengths = mask.sum(-1)  # (rows,) next position id per row
    eos = to_device(torch.tensor(sorted(eos_ids), dtype=torch.long), device) if eos_ids else None
    compact = compact and eos is not None and cache_tensors(cache) is not None
    # (batch, max_new_tokens): rows that left the batch keep EOS in their remaining steps
    out = torch.full((b, max_new_tokens), min(eos_ids) if eos_ids else 0, dtype=torch.long, device=device)
    rows = torch.arange(b, device=device)  # (alive,) original row of each row still decoded
    done = torch.zeros(b, dtype=torch.bool, device=device)
    logits, steps = next_logits, 0
    for step in range(max_new_tokens):
        tok = _sample(logits, temperature, top_p, gens)  # (alive,)
        out[rows, step] = tok
        steps = step + 1
        if step == max_new_tokens - 1:
            break
        if eos is not None:
            done |= torch.isin(tok, eos)
            n_done = int(done.sum())  # the one host sync of the step
            if n_done == len(rows):
                break
            if compact and n_done >= max(1, COMPACT_SHARE * len(rows)):
                keep = (~done).nonzero().squeeze(1)  # (alive',)
                cache.reorder_cache(keep)
                mask, lengths, rows, tok = mask[keep], lengths[keep], rows[keep], tok[keep]
                gens = [gens[i] for i in keep.tolist()] if temperature > 0 else gens
                done = done[keep]
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=-1)
        step_out = net(input_ids=tok[:, None], attention_mask=mask, position_ids=(lengths + step)[:, None],
                       use_cache=True, logits_to_keep=1, **{cache_kwarg(net): cache})
        cache = cache_of(step_out)
        logits = step_out.logits[:, -1, :]
    return out[:, :steps]


def run_batch(net, sequences: list[list[int]], **kw) -> BatchOutput:
    """Forward one batch of prompts and read out everything stored for them (waits for the result).
    Arguments as :func:`launch_batch`.

    Example:
        >>> out = run_batch(net, [[1, 5, 9]], pad_id=0, label_ids={"A": [5], "B": [6]},
        ...                 layers=[0, 2], keep_positions=[np.arange(3)])   # doctest: +SKIP
        >>> out.activations[0][1].shape                                      # doctest: +SKIP
        (3, 64)
    """
    return launch_batch(net, sequences, **kw).result()
