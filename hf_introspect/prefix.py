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

from .inference import _cache_of, _cache_tensors, forward_hidden, to_device

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
    kv = _cache_tensors(_cache_of(out))
    if kv is None:
        return None
    return SharedPrefix(list(ids), kv, {i: hidden[i][0] for i in layers})
