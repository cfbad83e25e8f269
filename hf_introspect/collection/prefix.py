"""Shared prompt prefix: the tokens every prompt of a pass starts with go through the model once.

Every prompt of a pass opens with the same tokens: the chat template's system turn and the
template's first line (SmolLM2: 35-36 tokens, a fifth to a third of each prompt). In a causal
model the hidden states and keys/values of those positions do not depend on anything after
them, so they are computed once per pass (:func:`compute_shared_prefix`) and every micro-batch
runs only its rows' remaining tokens on top of that cache. The stored activations of the prefix
positions are copied from the one prefix forward. Values equal an unshared forward up to float
rounding (different matrix shapes sum in a different order), as any change of batch size does.

Example:
    >>> common_prefix_len([[1, 2, 3, 9], [1, 2, 3, 4, 5], [1, 2, 7]])
    2
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .forward import cache_of, cache_tensors, forward_hidden, pad_left, to_device

# Below this many shared tokens a separate prefix forward is not worth its fixed cost.
MIN_SHARED_TOKENS = 8


def common_prefix_len(seqs: list[list[int]]) -> int:
    """Tokens every sequence starts with, leaving each sequence at least one token of its own (the
    readout position must be computed in the row's own forward).

    Example:
        >>> common_prefix_len([[5, 6, 7], [5, 6, 7]])
        2
    """
    if not seqs:
        return 0
    first = seqs[0]
    n = min(len(s) for s in seqs) - 1
    for s in seqs[1:]:
        if n <= 0:
            break
        i = 0
        while i < n and s[i] == first[i]:
            i += 1
        n = i
    return max(n, 0)


@dataclass
class SharedPrefix:
    """The prefix's forward, reused by every micro-batch of a pass."""

    ids: list[int]  # (P,) the shared token ids
    kv: list[tuple[torch.Tensor, torch.Tensor]]  # per block: keys, values (1, kv_heads, P, head_dim)
    hidden: dict[int, torch.Tensor]  # stored residual index -> (P, hidden), model dtype, on its layer's device

    @property
    def length(self) -> int:
        return len(self.ids)

    def cache_for(self, batch: int):
        """A fresh DynamicCache holding the prefix for ``batch`` rows (the forward appends to it)."""
        from transformers.cache_utils import DynamicCache

        cache = DynamicCache()
        for i, (k, v) in enumerate(self.kv):
            cache.update(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1), i)
        return cache


@torch.inference_mode()
def compute_shared_prefix(net, ids: list[int], layers: list[int]) -> SharedPrefix | None:
    """Run the shared prefix once and keep its KV cache and the stored layers' hidden states.

    None when the model's cache is not a plain full-attention DynamicCache (sliding windows,
    quantized caches): such models run every prompt whole.

    Example:
        >>> p = compute_shared_prefix(net, prompts[0][:36], layers=[0, 15, 30])   # doctest: +SKIP
        >>> p.hidden[15].shape                                                      # doctest: +SKIP
        torch.Size([36, 576])
    """
    device = next(net.parameters()).device
    x = to_device(torch.tensor([ids], dtype=torch.long), device)
    mask = torch.ones_like(x)
    pos = torch.arange(len(ids), device=device)[None]
    out, hidden = forward_hidden(net, x, mask, pos, use_cache=True)  # hidden: n_layers + 1 x (1, P, hidden)
    kv = cache_tensors(cache_of(out))
    if kv is None:
        return None
    return SharedPrefix(list(ids), kv, {i: hidden[i][0] for i in layers})


# --- per-question prefixes handed from one pass to the next ------------------------------------
#
# Two passes whose prompts put the same question block first (``self_conf`` and ``other_conf``:
# system turn, "Here is a multiple-choice question", the question and its options, "Do not answer
# it. Instead,") share each question's first tokens. The earlier pass's forward exports those
# tokens' keys/values (and stored layers' hidden states) per row; the later pass runs only the
# rest of its prompt on top of them. The shared prefix above is the part every question has.


def handoff_lengths(seqs_a: list[list[int]], seqs_b: list[list[int]], shared: int) -> list[int]:
    """Per row, how many tokens after the pass-wide shared prefix (``shared`` tokens) pass B's
    prompt has in common with pass A's for the same question; each B row keeps its last token.

    Example:
        >>> handoff_lengths([[1, 2, 3, 4, 9]], [[1, 2, 3, 4, 7, 7]], shared=1)
        [3]
    """
    return [max(common_prefix_len([a, b]) - shared, 0) for a, b in zip(seqs_a, seqs_b)]


@dataclass
class RowPrefix:
    """Rows' per-question prefixes, exported by another pass's forward: row r's ``lengths[r]``
    tokens after the shared prefix, right-aligned (left-padded) in a width of ``max(lengths)``."""

    tokens: list[list[int]]  # row r's exported token ids (length lengths[r])
    kv: list[tuple[torch.Tensor, torch.Tensor]]  # per block: keys, values (rows, kv_heads, L, head_dim)
    mask: torch.Tensor  # (rows, L) 1 at real tokens
    hidden: dict[int, torch.Tensor] | None  # stored residual index -> (rows, L, hidden) in the stored dtype

    @property
    def lengths(self) -> list[int]:
        return [len(t) for t in self.tokens]

    @property
    def width(self) -> int:
        return self.mask.shape[1]

    def nbytes(self) -> int:
        n = sum(k.nbytes + v.nbytes for k, v in self.kv) + self.mask.nbytes
        return n + (sum(h.nbytes for h in self.hidden.values()) if self.hidden else 0)


def select_rows(parts: list[tuple[RowPrefix, int]]) -> RowPrefix:
    """One :class:`RowPrefix` holding the given (part, row) pairs in order, re-padded to the
    widest of them (no copy when they are all of one part, in its order)."""
    first = parts[0][0]
    if all(p is first for p, _ in parts) and [r for _, r in parts] == list(range(len(first.tokens))):
        return first
    width = max(len(p.tokens[r]) for p, r in parts)

    def row(t: torch.Tensor, p: RowPrefix, r: int, dim: int) -> torch.Tensor:
        real = t[r:r + 1].narrow(dim, p.width - len(p.tokens[r]), len(p.tokens[r]))  # real tokens only
        return pad_left(real, dim, width)

    kv = [(torch.cat([row(p.kv[i][0], p, r, 2) for p, r in parts]), torch.cat([row(p.kv[i][1], p, r, 2) for p, r in parts]))
          for i in range(len(first.kv))]
    mask = torch.cat([row(p.mask, p, r, 1) for p, r in parts])
    hidden = None if first.hidden is None else \
        {i: torch.cat([row(p.hidden[i], p, r, 1) for p, r in parts]) for i in first.hidden}
    return RowPrefix([p.tokens[r] for p, r in parts], kv, mask, hidden)


class HandoffStore:
    """A shard's exported row prefixes, by the row's index in the shard.

    Example:
        >>> store = HandoffStore()
        >>> store.for_rows([0, 1]) is None   # nothing exported: those rows run whole
        True
    """

    def __init__(self):
        self._rows: dict[int, tuple[RowPrefix, int]] = {}

    def add(self, rows: list[int], part: RowPrefix) -> None:
        for k, r in enumerate(rows):
            self._rows[r] = (part, k)

    def __len__(self) -> int:
        return len(self._rows)

    def nbytes(self) -> int:
        return sum(p.nbytes() for p in {id(p): p for p, _ in self._rows.values()}.values())

    def for_rows(self, rows: list[int]) -> RowPrefix | None:
        if not rows or any(r not in self._rows for r in rows):
            return None
        return select_rows([self._rows[r] for r in rows])


@dataclass
class ShardHandoff:
    """One shard's hand-off state, passed explicitly through its computation (a pass is a source or
    a target of hand-offs, never both): what it runs on, or what it exports for the later pass.

    Example:
        >>> ShardHandoff().row_prefixes is None and not ShardHandoff().prompt_only
        True
    """

    export_lengths: list[int] | None = None  # row -> its tokens to export after the shared prefix
    export_hidden: bool = False  # export the stored layers' hidden states too (the later pass stores some)
    exported: HandoffStore | None = None  # filled as the micro-batches run
    row_prefixes: HandoffStore | None = None  # the earlier pass's exports this shard runs on
    prompt_only: bool = False  # forwards only (no continuation): re-exporting for a resumed pass
