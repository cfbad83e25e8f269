"""Re-run a run's own prompts with edits at the readout token, and read out as the collector does.

An edit at the readout (last prompt) token leaves every earlier position's keys and values
unchanged (attention is causal). So each batch of prompts runs ONCE without its last token, and
its KV cache is reused by every edit. The edits of a question then run as a row of readout
tokens "packed" side by side: R copies of the readout token, all at the readout's position, each
attending to the cached prompt and to itself only (a custom 4D attention mask), each with its own
edit. One step computes R edits for every question of the batch on the batch's cache: no copy of
the cache per edit, one token forward per edit instead of a whole prompt (~200 tokens for a
TriviaMC confidence prompt).

Readout: the next-token logits at each readout token, restricted to the pass's label tokens with
:func:`hf_introspect.collection.readout.restricted_logits` (logsumexp over each label's token
forms), exactly as the collector stores ``logits``. Models whose attention takes no custom mask
(flash attention) or whose cache is not a plain one run every edited prompt whole instead.
"""

from __future__ import annotations

import numpy as np
import torch

from ...collection.forward import cache_kwarg, cache_of, cache_tensors, left_pad, to_device
from ...collection.readout import restricted_logits
from .hooks import NONE, RowEdits, intervene

MAX_TOKENS = 1024  # readout tokens per step (batch x packed edits): bounds the logits (tokens x vocab)
MASKED_ATTENTION = ("sdpa", "eager")  # attention implementations that take a custom 4D mask


class PromptBatch:
    """One batch of prompts whose part before the readout token has run once (its KV cache kept)."""

    def __init__(self, net, seqs: list[list[int]], pad_id: int, reuse_prefix: bool = True):
        if any(len(s) < 2 for s in seqs):
            raise ValueError("PromptBatch: every prompt needs at least 2 tokens")
        self.net, self.seqs, self.pad_id = net, seqs, pad_id
        self.device = next(net.parameters()).device
        self.kv = None  # per block (keys, values) (batch, kv_heads, T - 1, head_dim); None: whole prompts
        self.attn = getattr(net.config, "_attn_implementation", None)
        if reuse_prefix and self.attn in MASKED_ATTENTION:
            ids, mask, pos = left_pad([s[:-1] for s in seqs], pad_id, self.device)
            with torch.inference_mode():
                out = net(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
            self.kv = cache_tensors(cache_of(out))
            self.mask = mask.bool()  # (batch, T - 1)
        self.last = torch.tensor([s[-1] for s in seqs], dtype=torch.long)  # (batch,)
        self.lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)  # (batch,)

    @torch.inference_mode()
    def readout(self, question: np.ndarray, edits: RowEdits, label_index: dict[str, torch.Tensor],
                max_tokens: int = MAX_TOKENS) -> np.ndarray:
        """Label logits (rows, n_labels) float32 for row r = question ``question[r]`` of the batch
        with edit r, in steps of at most ``max_tokens`` readout tokens."""
        out = np.zeros((len(question), len(label_index)), dtype=np.float32)
        if self.kv is None:
            for start in range(0, len(question), 16):
                rows = np.arange(start, min(start + 16, len(question)))
                out[rows] = self._whole(question[rows], edits.select(rows), label_index)
            return out
        per_q = [np.flatnonzero(question == j) for j in range(len(self.seqs))]  # each question's rows
        width = max(1, max_tokens // max(1, sum(len(r) > 0 for r in per_q)))  # edits per question per step
        for start in range(0, max(len(r) for r in per_q), width):
            chunks = {j: r[start:start + width] for j, r in enumerate(per_q) if len(r) > start}
            rows = np.concatenate(list(chunks.values()))
            out[rows] = self._packed(chunks, edits, label_index)
        return out

    def _whole(self, q: np.ndarray, edits: RowEdits, label_index) -> np.ndarray:
        """Whole prompts, readout token last (left padding), one row per edit."""
        ids, mask, pos = left_pad([self.seqs[i] for i in q], self.pad_id, self.device)
        with intervene(self.net, edits):
            res = self.net(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False, logits_to_keep=1)
        return _restricted(res.logits[:, -1, :], label_index)

    def _packed(self, chunks: dict[int, np.ndarray], edits: RowEdits, label_index) -> np.ndarray:
        """Per question j of ``chunks``, its rows' edits as R readout tokens on j's cached prompt;
        returns their logits in the order of the concatenated chunks."""
        js = np.fromiter(chunks, dtype=np.int64)  # (b,) questions of this step
        b, R = len(js), max(len(r) for r in chunks.values())
        jt = torch.as_tensor(js)
        ids = to_device(self.last[jt][:, None].expand(b, R), self.device)  # (b, R) the readout token R times
        pos = to_device((self.lengths[jt] - 1)[:, None].expand(b, R), self.device)  # all at its position
        prefix = self.mask[jt.to(self.mask.device)]  # (b, W) the prompt's real tokens
        eye = torch.eye(R, dtype=torch.bool, device=prefix.device)  # each readout token sees itself only
        mask = torch.cat([prefix[:, None, None, :].expand(b, 1, R, prefix.shape[1]), eye.expand(b, 1, R, R)], dim=-1)
        if self.attn == "eager":  # additive float mask
            dtype = next(self.net.parameters()).dtype
            mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
        # slot s = i * R + t holds chunk i's t-th row; unused slots carry no edit
        slots = np.concatenate([i * R + np.arange(len(r)) for i, r in enumerate(chunks.values())])
        rows = np.concatenate(list(chunks.values()))
        flat = RowEdits.none(b * R, edits.table.shape[-1])
        flat.table = edits.table
        for name in ("layer", "op", "index", "scale"):
            getattr(flat, name)[slots] = getattr(edits, name)[rows]
        cache = _PrefixCache.of([(k if b == len(self.seqs) else k[jt.to(k.device)],
                                  v if b == len(self.seqs) else v[jt.to(v.device)]) for k, v in self.kv])
        with intervene(self.net, flat, every_position=True):
            res = self.net(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=R,
                           **{cache_kwarg(self.net): cache})
        logits = res.logits.reshape(b * R, -1)[torch.as_tensor(slots, device=res.logits.device)]
        return _restricted(logits, label_index)


def _restricted(logits: torch.Tensor, label_index) -> np.ndarray:
    """(rows, n_labels) float32 on the host; label ids moved to the logits' device (with
    device_map="auto" the head may sit on another GPU than the embeddings)."""
    index = {k: v.to(logits.device) for k, v in label_index.items()}
    return restricted_logits(logits, index).cpu().numpy()


class _PrefixCache:
    """Builds a DynamicCache whose layers hold the prompts' keys/values and, on update, return them
    with the new tokens' appended, without keeping those (the cache is used for one step)."""

    @staticmethod
    def of(kv):
        from transformers.cache_utils import DynamicCache, DynamicLayer

        class PrefixLayer(DynamicLayer):
            def __init__(self, keys, values):
                super().__init__()
                self.keys, self.values, self.device, self.is_initialized = keys, values, keys.device, True

            def update(self, key_states, value_states, *args, **kwargs):
                return torch.cat([self.keys, key_states], dim=-2), torch.cat([self.values, value_states], dim=-2)

        cache = DynamicCache()
        cache.layers = [PrefixLayer(k, v) for k, v in kv]
        return cache


def label_index(label_ids: dict[str, list[int]], device) -> dict[str, torch.Tensor]:
    """Label token ids as index tensors on the logits' device (as the collector builds them).

    Example:
        >>> label_index({"A": [49, 330]}, "cpu")["A"]
        tensor([ 49, 330])
    """
    return {label: to_device(torch.tensor(ids, dtype=torch.long), device) for label, ids in label_ids.items()}


def readout_rows(lm, seqs: list[list[int]], question: np.ndarray, edits: RowEdits, label_ids: dict[str, list[int]],
                 *, batch_size: int = 8, reuse_prefix: bool = True, max_tokens: int = MAX_TOKENS,
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
        out[rows] = batch.readout(local[question[rows]], edits.select(rows), index, max_tokens)
        del batch
        if progress is not None:
            progress(len(rows))
    return out
