"""Decoding: the short continuation after a prompt batch, from its KV cache.

The continuation of several prompt batches can run as one decode batch
(:func:`hf_introspect.collection.inference.launch_batch` with ``defer_continuation=True``, then
:func:`continue_batches`): a decode step costs about the same for 4 rows as for 32 (a CPU streams
every weight once per step, a GPU is bound by kernel launches), so decoding a shard's
micro-batches together cuts that cost by the number of micro-batches merged. The ``output_text``
column is these tokens, decoded by the tokenizer.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import torch

from .forward import cache_kwarg, cache_of, cache_tensors, pad_left, to_device


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
        >>> a = launch_batch(net, seqs[:4], spec, keep[:4], defer_continuation=True)   # doctest: +SKIP
        >>> b = launch_batch(net, seqs[4:], spec, keep[4:], defer_continuation=True)   # doctest: +SKIP
        >>> ids_a, ids_b = continue_batches(net, [a.decode, b.decode], max_new_tokens=10)      # doctest: +SKIP
    """
    sizes = [s.rows for s in states]
    merged = merge_decode_states(states)
    groups = [merged] if merged is not None else states
    rows: list[list[int]] = []
    for g in groups:
        tokens = continue_prompt(net, g.cache, g.next_logits, g.mask, max_new_tokens, temperature, top_p, eos_ids,
                           g.generators)
        rows += tokens_to_ids(tokens.cpu().tolist(), eos_ids)
        g.cache = None
    bounds = np.cumsum([0] + sizes)
    return [rows[bounds[i]:bounds[i + 1]] for i in range(len(states))]


# A decode batch drops its finished rows once at least this share of them has ended: on a CPU a
# step costs ~5 ms per row on top of ~66 ms for streaming the weights (SmolLM2, 2-core VM), and
# about a fifth of the rows run to max_new_tokens while most end after 2-4 tokens. Dropping rows
# copies the surviving cache once (about what each step's cache concatenation costs anyway).
COMPACT_SHARE = 0.125


def continue_prompt(net, cache, next_logits, mask, max_new_tokens, temperature, top_p, eos_ids, gens,
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
