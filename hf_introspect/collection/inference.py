"""One batch through the model: residual stream, restricted next-token logits and a short
continuation, from a single prompt forward pass whose KV cache the continuation reuses.

:func:`launch_batch` runs in named steps: :func:`pad_batch` (each row's own tokens on top of the
prefixes' cache), the forward (``forward.forward_hidden``), :func:`read_out` (the ``logits``
column), :func:`gather_stored` (the ``activations_layer_NN`` columns), :func:`count_overflow`
(``fp16_overflow_count``), :func:`export_prefixes` (per-question prefixes for a later pass) and
:func:`start_decoding` (the continuation, now or merged later: see ``decode.py``). The pass's
settings come as one :class:`PassSpec`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .decode import DecodeState, continue_prompt, tokens_to_ids
from .forward import cache_kwarg, cache_of, cache_tensors, forward_hidden, left_pad, to_device
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






def _to_host(t: torch.Tensor, dst: torch.Tensor | None = None) -> torch.Tensor:
    """Device -> host copy that does not wait: into pinned memory, ordered on the current stream
    (read it only after the batch's event). On a CPU this is a plain copy (or nothing)."""
    if t.device.type == "cpu":
        return t if dst is None else dst.copy_(t)
    if dst is None:
        dst = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    return dst.copy_(t, non_blocking=True)










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


@dataclass(frozen=True)
class PassSpec:
    """What every batch of one pass runs with: the settings ``launch_batch`` used to take as a
    dozen arguments, gathered once per pass (``PassContext.spec``).

    ``layers`` index the residual stack: 0 = embedding output, i = output of block i (the last
    one before the final norm). ``prefix`` (a :class:`~hf_introspect.collection.prefix.SharedPrefix`
    every prompt of the pass starts with) skips recomputing those tokens.

    Example:
        >>> PassSpec(pad_id=0, label_ids={"A": [10]}, layers=[0, 2]).max_new_tokens
        0
    """

    pad_id: int
    label_ids: dict[str, list[int]]
    layers: list[int]
    act_dtype: str = "float16"
    max_new_tokens: int = 0
    temperature: float = 0.0
    top_p: float = 1.0
    eos_ids: frozenset[int] | set[int] = frozenset()
    prefix: object | None = None  # prefix.SharedPrefix


@dataclass
class Padded:
    """A batch's model input after :func:`pad_batch`: only each row's own tokens, left-padded, on
    top of the cache of the shared prefix (``P`` tokens) and of the row prefixes (``Q[r]``)."""

    ids: torch.Tensor  # (batch, width) the tokens run here
    mask: torch.Tensor  # (batch, P + L + width): prefix ones + row prefixes + the left-padded rest
    pos: torch.Tensor  # (batch, width) position ids, continuing at P + Q[r]
    cache: dict  # {cache kwarg: the prefixes' cache} or {}
    P: int
    Q: np.ndarray  # (batch,) int64 row-prefix lengths

    @property
    def width(self) -> int:
        return self.ids.shape[1]


@torch.inference_mode()
def launch_batch(net, sequences: list[list[int]], spec: PassSpec, keep_positions: list[np.ndarray], *,
                 generators: list[torch.Generator] | None = None,
                 host_alloc: Callable[[tuple, torch.dtype], torch.Tensor] | None = None,
                 defer_continuation: bool = False, row_prefix=None, export: list[int] | None = None,
                 export_hidden: bool = False) -> PendingBatch:
    """Queue one batch: pad, forward, read out, gather the stored layers x positions, export row
    prefixes, start decoding; the results are copied to host memory without waiting for them.
    Calling it for the next batch before :meth:`PendingBatch.result` of this one keeps a GPU busy
    while the host handles the previous batch. :func:`run_batch` is ``launch_batch(...).result()``.

    ``keep_positions[r]`` are prompt token indices (0..len-1) to keep. ``host_alloc(shape, dtype)``,
    if given, returns reusable host memory (pinned on CUDA) for the stored activations, which then
    stay valid only until it hands the same memory out again; without it every batch gets fresh
    memory (page faults on every call: ~1 s per GB on a small VM). ``defer_continuation=True``
    leaves the continuation to :func:`~hf_introspect.collection.decode.continue_batches` (the
    returned batch keeps the prompt's KV cache in ``.decode``). ``row_prefix`` (a
    :class:`~hf_introspect.collection.prefix.RowPrefix`, rows in this batch's order): row r's
    next ``row_prefix.lengths[r]`` tokens after the shared prefix were run by another pass's
    forward, and only the tokens after them run here. ``export[r]`` asks for the opposite: the
    keys/values (and, with ``export_hidden``, the stored layers' hidden states) of row r's first
    ``export[r]`` tokens after the shared prefix, returned as ``PendingBatch.handoff``.
    """
    device = next(net.parameters()).device
    if row_prefix is not None and export is not None:
        raise ValueError("launch_batch: a batch run on row prefixes cannot export its own (no chained hand-offs)")
    padded = pad_batch(net, sequences, spec, row_prefix, device)
    out, hidden = forward_hidden(net, padded.ids, padded.mask, padded.pos,
                                 use_cache=spec.max_new_tokens > 0 or bool(padded.cache) or bool(export),
                                 **padded.cache)
    next_logits = out.logits[:, -1, :]  # (batch, vocab)
    label_logits = _to_host(read_out(next_logits, spec.label_ids, device))
    kept, row_of = gather_stored(hidden, sequences, keep_positions, spec, padded, row_prefix, host_alloc, device)
    handoff = export_prefixes(out, hidden, sequences, padded.P, padded.width, export,
                              spec.layers if export_hidden else None, ACT_DTYPES[spec.act_dtype]) \
        if export is not None and max(export, default=0) > 0 else None
    del hidden
    overflow = count_overflow(kept, row_of, len(sequences), device)
    on_host = device.type == "cpu" and host_alloc is not None  # then kept IS the host buffer
    stacked = kept if on_host else _to_host(kept, host_alloc(kept.shape, kept.dtype) if host_alloc is not None else None)
    del kept
    tokens, decode = start_decoding(net, out, next_logits, padded.mask, spec, generators, defer_continuation)
    del out  # the hidden states of every layer: only the gathered copy is kept
    event = None
    if device.type == "cuda":
        event = torch.cuda.Event()
        event.record()
    offsets = np.concatenate([[0], np.cumsum([len(k) for k in keep_positions])]).astype(np.int64)
    return PendingBatch(label_logits, stacked, overflow, tokens, offsets, set(spec.eos_ids), event, decode, handoff)


def pad_batch(net, sequences: list[list[int]], spec: PassSpec, row_prefix, device) -> Padded:
    """Step 1, pad: each row's own tokens (after the shared prefix and its row prefix), left-padded,
    with the mask and position ids that put them on top of the prefixes' cache."""
    prefix, b = spec.prefix, len(sequences)
    P = prefix.length if prefix is not None else 0
    if P and any(s[:P] != prefix.ids for s in sequences):
        raise ValueError("launch_batch: a sequence does not start with the shared prefix's tokens")
    Q = np.array(row_prefix.lengths if row_prefix is not None else [0] * b, dtype=np.int64)  # (batch,)
    if row_prefix is not None and any(s[P:P + q] != t for s, q, t in zip(sequences, Q, row_prefix.tokens)):
        raise ValueError("launch_batch: a sequence does not continue with its row prefix's tokens")
    ids, mask, pos = left_pad([s[P + q:] for s, q in zip(sequences, Q)], spec.pad_id, device)
    cache = {}
    if P or row_prefix is not None:
        pos = pos + to_device(torch.as_tensor(P + Q)[:, None], device)
        cache[cache_kwarg(net)] = _prefix_cache(prefix, row_prefix, b)
        parts = [torch.ones((b, P), dtype=mask.dtype, device=device)] if P else []
        if row_prefix is not None:
            parts.append(row_prefix.mask.to(device=device, dtype=mask.dtype))
        mask = torch.cat(parts + [mask], dim=1)
    return Padded(ids, mask, pos, cache, P, Q)


def read_out(next_logits: torch.Tensor, label_ids: dict[str, list[int]], device) -> torch.Tensor:
    """Step 3, read out: the next-token logits restricted to the pass's labels, (batch, n_labels)."""
    label_index = {label: to_device(torch.tensor(ids, dtype=torch.long), device) for label, ids in label_ids.items()}
    return restricted_logits(next_logits, label_index)


def gather_stored(hidden, sequences, keep_positions, spec: PassSpec, padded: Padded, row_prefix, host_alloc,
                  device) -> tuple[torch.Tensor, np.ndarray]:
    """Step 4, gather stored rows: the stored layers at the kept positions, cast to the activation
    dtype on the device, so padding and unstored positions never cross to the host. A kept
    position comes from this forward, the shared prefix's hidden states or the row prefix's.
    Returns ``kept`` (n_stored, n_kept_total, hidden), rows in batch order, and ``row_of``
    (n_kept_total,) the batch row of each; on a CPU with ``host_alloc`` ``kept`` is the host buffer."""
    P, Q, width, prefix, layers = padded.P, padded.Q, padded.width, spec.prefix, spec.layers
    b = len(sequences)
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
    shape, dtype = (len(layers), len(row_of), hidden[0].shape[-1]), ACT_DTYPES[spec.act_dtype]
    # On a CPU the host buffer itself is the gather target (no second copy).
    on_host = device.type == "cpu" and host_alloc is not None
    kept = host_alloc(shape, dtype) if on_host else torch.empty(shape, dtype=dtype, device=device)
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
    return kept, row_of


def count_overflow(kept: torch.Tensor, row_of: np.ndarray, rows: int, device) -> torch.Tensor:
    """Non-finite values after the cast (float16 overflow), per row and stored layer: host
    (rows, n_stored) int64. Summed over layers it is the ``fp16_overflow_count`` column.

    Example:
        >>> kept = torch.tensor([[[1.0, float("inf")], [0.0, 0.0]]])   # (1 layer, 2 kept, hidden 2)
        >>> count_overflow(kept, np.array([0, 1]), 2, torch.device("cpu")).tolist()
        [[1], [0]]
    """
    row_of_t = to_device(row_of, device)
    if device.type == "cpu":  # counted only when there are any: one isfinite pass + all() usually
        overflow = torch.zeros((rows, kept.shape[0]), dtype=torch.int64)
        if not bool(torch.isfinite(kept).all()):
            overflow.index_add_(0, row_of_t, (~torch.isfinite(kept)).sum(dim=-1).T)
        return overflow
    # On a GPU counted every time: asking first would make the host wait for the device.
    overflow = torch.zeros((rows, kept.shape[0]), dtype=torch.int64, device=device)
    return _to_host(overflow.index_add_(0, row_of_t, (~torch.isfinite(kept)).sum(dim=-1).T))


def start_decoding(net, out, next_logits, mask, spec: PassSpec, generators: list[torch.Generator] | None,
                   defer: bool) -> tuple[torch.Tensor | None, DecodeState | None]:
    """Step 6, start decoding: with ``defer`` (and a cache that can be merged) keep the prompt's
    cache as a :class:`DecodeState` for a merged decode later, else decode now. Returns
    ``(host tokens (batch, steps) or None, DecodeState or None)``."""
    if spec.max_new_tokens <= 0:
        return None, None
    gens = generators or [torch.Generator() for _ in range(next_logits.shape[0])]
    if defer and cache_tensors(cache_of(out)) is not None:  # else no merge: decode now
        return None, DecodeState(cache_of(out), next_logits, mask, gens)
    return _to_host(continue_prompt(net, cache_of(out), next_logits, mask, spec.max_new_tokens, spec.temperature,
                                    spec.top_p, spec.eos_ids, gens)), None


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


def export_prefixes(out, hidden, sequences, P: int, width: int, export: list[int], layers: list[int] | None, dtype):
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






def run_batch(net, sequences: list[list[int]], spec: PassSpec, keep_positions: list[np.ndarray], **kw) -> BatchOutput:
    """Forward one batch of prompts and read out everything stored for them (waits for the result).
    Arguments as :func:`launch_batch`.

    Example:
        >>> from hf_introspect.testing import tiny_llama
        >>> spec = PassSpec(pad_id=0, label_ids={"A": [5], "B": [6]}, layers=[0, 2])
        >>> out = run_batch(tiny_llama(vocab_size=64, hidden=16), [[1, 5, 9]], spec, [np.arange(3)])
        >>> out.activations[0][1].shape, out.label_logits.shape
        ((3, 16), (1, 2))
    """
    return launch_batch(net, sequences, spec, keep_positions, **kw).result()
