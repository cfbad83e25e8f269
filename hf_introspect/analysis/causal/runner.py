"""Re-run a run's own prompts with edits at the readout token, and read out as the collector does.

An edit at the readout (last prompt) token leaves every earlier position's keys and values
unchanged (attention is causal). So each batch of prompts runs ONCE without its last token, and
its KV cache is reused by every edit: only the readout token goes through the model again, one
row per (question, edit). That is one token forward per edit instead of a whole prompt
(~200 tokens for a TriviaMC confidence prompt). Each step's rows get their own copy of their
question's cache (with a free slot for the readout token), so the rows per step are capped by a
byte budget.

Readout: the next-token logits at the readout token, restricted to the pass's label tokens with
:func:`hf_introspect.collection.readout.restricted_logits` (logsumexp over each label's token forms), exactly
as the collector stores ``logits``.
"""

from __future__ import annotations

import numpy as np
import torch

from ...collection.forward import cache_kwarg, cache_of, cache_tensors, left_pad, to_device
from ...collection.readout import restricted_logits
from .hooks import RowEdits, intervene

KV_BUDGET_BYTES = 1 << 30  # bytes of cache rows built per readout step


class PromptBatch:
    """One batch of prompts whose part before the readout token has run once (its KV cache kept)."""

    def __init__(self, net, seqs: list[list[int]], pad_id: int, reuse_prefix: bool = True):
        if any(len(s) < 2 for s in seqs):
            raise ValueError("PromptBatch: every prompt needs at least 2 tokens")
        self.net, self.seqs, self.pad_id = net, seqs, pad_id
        self.device = next(net.parameters()).device
        self.kv = None  # per block (keys, values) (batch, kv_heads, T - 1, head_dim); None: whole prompts
        if reuse_prefix:
            ids, mask, pos = left_pad([s[:-1] for s in seqs], pad_id, self.device)
            with torch.inference_mode():
                out = net(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
            self.kv = cache_tensors(cache_of(out))
            self.mask = mask  # (batch, T - 1)
        self.last = to_device(torch.tensor([[s[-1]] for s in seqs], dtype=torch.long), self.device)  # (batch, 1)
        self.lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)  # (batch,)

    def row_bytes(self) -> int:
        """Cache bytes of one readout row (whole prompt when the cache is not reused)."""
        if self.kv is None:
            return 0
        return sum(k[0].nbytes + v[0].nbytes for k, v in self.kv)

    @torch.inference_mode()
    def readout(self, question: np.ndarray, edits: RowEdits, label_index: dict[str, torch.Tensor],
                budget: int = KV_BUDGET_BYTES) -> np.ndarray:
        """Label logits (rows, n_labels) float32 for row r = question ``question[r]`` of the batch
        with edit r. Rows run in steps that fit ``budget`` bytes of copied cache."""
        step = max(1, budget // max(self.row_bytes(), 1)) if self.kv is not None else 16
        out = []
        for start in range(0, len(question), step):
            rows = np.arange(start, min(start + step, len(question)))
            out.append(self._step(question[rows], edits.select(rows), label_index))
        return np.concatenate(out) if out else np.zeros((0, len(label_index)), np.float32)

    def _step(self, q: np.ndarray, edits: RowEdits, label_index) -> np.ndarray:
        net = self.net
        if self.kv is None:  # whole prompts, readout token last (left padding)
            ids, mask, pos = left_pad([self.seqs[i] for i in q], self.pad_id, self.device)
            with intervene(net, edits):
                res = net(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False, logits_to_keep=1)
            return restricted_logits(res.logits[:, -1, :], label_index).cpu().numpy()
        order = np.argsort(q, kind="stable")  # rows of one question together: their cache is one broadcast copy
        q, edits = q[order], edits.select(order)
        qt = torch.as_tensor(q)
        m = self.mask[qt.to(self.mask.device)]
        mask = torch.cat([m, torch.ones_like(m[:, :1])], dim=1)  # (rows, T)
        ids = self.last[qt.to(self.last.device)]  # (rows, 1)
        pos = to_device((self.lengths[qt] - 1)[:, None], self.device)  # (rows, 1)
        cache = _slot_cache(self.kv, q)
        with intervene(net, edits):
            res = net(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1,
                      **{cache_kwarg(net): cache})
        out = np.empty((len(q), len(label_index)), dtype=np.float32)
        out[order] = restricted_logits(res.logits[:, -1, :], label_index).cpu().numpy()
        return out


def _slot_cache(kv, q: np.ndarray):
    """A cache of the rows' prompts (row r = question ``q[r]``, rows of a question adjacent) with
    one free slot per layer for the readout token: each question's keys/values are broadcast into
    its rows once, and the readout token's are written into the slot (a plain DynamicCache would
    copy the whole cache a second time to append them)."""
    from transformers.cache_utils import DynamicCache, DynamicLayer

    class SlotLayer(DynamicLayer):
        def __init__(self, keys, values):
            super().__init__()
            self.keys, self.values, self.device, self.is_initialized = keys, values, keys.device, True
            self.filled = keys.shape[-2] - 1

        def update(self, key_states, value_states, *args, **kwargs):
            t = key_states.shape[-2]
            self.keys[..., self.filled:self.filled + t, :] = key_states
            self.values[..., self.filled:self.filled + t, :] = value_states
            self.filled += t
            return self.keys, self.values

        def get_seq_length(self) -> int:
            return self.filled

    starts = np.flatnonzero(np.r_[True, q[1:] != q[:-1]])
    bounds = list(zip(starts, np.r_[starts[1:], len(q)], q[starts]))  # (first row, end row, question)
    layers = []
    for k, v in kv:
        rows, heads, width, dim = len(q), k.shape[1], k.shape[2] + 1, k.shape[3]
        keys = torch.empty((rows, heads, width, dim), dtype=k.dtype, device=k.device)
        values = torch.empty((rows, heads, width, dim), dtype=v.dtype, device=v.device)
        for a, b, j in bounds:
            keys[a:b, :, :-1] = k[j]
            values[a:b, :, :-1] = v[j]
        layers.append(SlotLayer(keys, values))
    cache = DynamicCache()
    cache.layers = layers
    return cache


def label_index(label_ids: dict[str, list[int]], device) -> dict[str, torch.Tensor]:
    """Label token ids as index tensors on the logits' device (as the collector builds them).

    Example:
        >>> label_index({"A": [49, 330]}, "cpu")["A"]
        tensor([ 49, 330])
    """
    return {label: to_device(torch.tensor(ids, dtype=torch.long), device) for label, ids in label_ids.items()}


def readout_rows(lm, seqs: list[list[int]], question: np.ndarray, edits: RowEdits, label_ids: dict[str, list[int]],
                 *, batch_size: int = 8, reuse_prefix: bool = True, budget: int = KV_BUDGET_BYTES,
                 progress=None) -> np.ndarray:
    """Label logits (rows, n_labels) for row r = prompt ``seqs[question[r]]`` with edit r.

    Prompts run in batches of ``batch_size`` (similar lengths together, less padding); each
    batch's part before the readout token runs once, then all of its rows' readout tokens.
    ``progress(n_rows_done)`` is called after each batch.

    Example:
        >>> logits = readout_rows(lm, seqs, np.arange(len(seqs)), RowEdits.none(len(seqs), 576),
        ...                       {"A": [49], "B": [50]})    # doctest: +SKIP
    """
    net = lm.model if hasattr(lm, "model") else lm
    pad_id = lm.tokenizer.pad_token_id if hasattr(lm, "tokenizer") else 0
    index = label_index(label_ids, next(net.parameters()).device)
    question = np.asarray(question, dtype=np.int64)
    out = np.zeros((len(question), len(label_ids)), dtype=np.float32)
    used = np.unique(question)
    used = used[np.argsort([len(seqs[q]) for q in used], kind="stable")]
    for start in range(0, len(used), batch_size):
        group = used[start:start + batch_size]
        local = np.full(int(used.max()) + 1, -1, dtype=np.int64)
        local[group] = np.arange(len(group))
        rows = np.flatnonzero(local[question] >= 0)
        batch = PromptBatch(net, [seqs[q] for q in group], pad_id, reuse_prefix=reuse_prefix)
        out[rows] = batch.readout(local[question[rows]], edits.select(rows), index, budget)
        del batch
        if progress is not None:
            progress(len(rows))
    return out
