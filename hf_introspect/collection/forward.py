"""One forward through the model and the tensors around it: every layer's residual stream
(:func:`forward_hidden`, the last entry taken before the final norm), left padding, host -> device
copies and access to the KV cache across transformers versions.

The primitives that :mod:`~hf_introspect.collection.inference` (one batch),
:mod:`~hf_introspect.collection.prefix` (the shared prefix) and the causal experiments build on.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager

import torch

from ..models.load import final_norm


@contextmanager
def capture_pre_norm(net):
    """Capture the input of the final norm (the last block's residual output, before the norm).

    transformers' ``hidden_states[-1]`` is taken AFTER the final norm for Llama; every other entry
    is a raw residual, so we swap the last one for the pre-norm tensor to keep the stack uniform.
    """
    store: dict[str, torch.Tensor] = {}

    def hook(_module, args):
        store.setdefault("x", args[0])  # first call = the prompt forward; decode steps ignored

    handle = final_norm(net).register_forward_pre_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


def forward_hidden(net, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, *, use_cache: bool, **extra):
    """One forward with every layer's residual stream: returns (model output, hidden), hidden being
    n_layers + 1 tensors of (batch, T, hidden) whose last entry is taken before the final norm."""
    with capture_pre_norm(net) as pre_norm:
        out = net(input_ids=ids, attention_mask=mask, position_ids=pos, output_hidden_states=True,
                  use_cache=use_cache, logits_to_keep=1, **extra)
    hidden = list(out.hidden_states)
    hidden[-1] = pre_norm["x"]
    return out, hidden


def to_device(x, device) -> torch.Tensor:
    """Host -> device copy that does not make the host wait for the GPU.

    A copy from pageable memory synchronises the stream first (CUDA semantics): the host would wait
    for every queued kernel, e.g. the previous batch's forward, and the GPU would then idle while
    the host launches the next one. From pinned memory the copy is queued like a kernel."""
    t = torch.as_tensor(x)
    device = torch.device(device)
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def left_pad(sequences: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-pad token lists. Returns input_ids, attention_mask (batch, T) and position_ids that
    start at 0 at each row's first real token, as in an unpadded forward."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for r, seq in enumerate(sequences):
        ids[r, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
        mask[r, width - len(seq):] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return to_device(ids, device), to_device(mask, device), to_device(pos, device)


def cache_kwarg(net) -> str:
    """transformers >= 5.2x names the KV-cache argument ``cache``; earlier 5.x ``past_key_values``."""
    base = net.get_base_model() if hasattr(net, "get_base_model") else net
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def cache_of(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def cache_tensors(cache) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """Per layer (keys, values), each (batch, kv_heads, T, head_dim), of a plain full-attention
    DynamicCache; None for any other cache (sliding windows, quantized...): those are not merged."""
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    if not layers or any(type(layer) is not DynamicLayer or getattr(layer, "keys", None) is None
                         for layer in layers):
        return None
    return [(layer.keys, layer.values) for layer in layers]


def pad_left(t: torch.Tensor, dim: int, width: int) -> torch.Tensor:
    """``t`` zero-padded on the left of dimension ``dim`` to ``width`` (caches and masks of
    left-padded rows keep their real tokens right-aligned)."""
    pad = [0, 0] * (t.dim() - 1 - dim) + [width - t.shape[dim], 0]
    return torch.nn.functional.pad(t, pad)
