"""Interventions on the residual stream at the readout token, as hooks that live for one forward.

Residual indices follow the stored activation columns: 0 = the embedding output, i = the output
of block i (1-based), the last index (num_layers) = the last block's output BEFORE the final norm.
So index 0 is edited at the embedding module's output and index i at block i's output: what the
next block (or the final norm) reads is the edited tensor.

Each row of a batch carries its own edit (layer, operation, vector), so one forward can hold many
(layer, strength, direction) combinations. Only the last position of the forward is edited: the
runner feeds the readout token as the last column of every row (left padding).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from ...models.load import final_norm

NONE, ADD, ABLATE, REPLACE = 0, 1, 2, 3  # per-row operations


@dataclass
class RowEdits:
    """One edit per batch row at the last position: row r uses ``scale[r] * table[index[r]]``.

    ``layer[r] < 0`` or ``op[r] == NONE`` leaves row r alone. ADD: ``x + v``; ABLATE: ``x - (x.v) v``
    (``v`` a unit vector); REPLACE: ``x := v``. The vectors live once in ``table`` (directions or
    stored activations), so thousands of rows cost an index each, not a hidden-size vector each.

    Example:
        >>> e = RowEdits(np.array([2, -1]), np.array([ADD, NONE]), np.array([0, 0]), np.array([2.0, 0]),
        ...              torch.ones(1, 4))
        >>> e.layers(), e.vectors(np.array([0])).tolist()
        ([2], [[2.0, 2.0, 2.0, 2.0]])
    """

    layer: np.ndarray  # (rows,) residual index of each row's edit, -1 = none
    op: np.ndarray  # (rows,) NONE | ADD | ABLATE | REPLACE
    index: np.ndarray  # (rows,) row of ``table`` each row uses
    scale: np.ndarray  # (rows,) factor on it
    table: torch.Tensor  # (n_vectors, hidden) float32

    def layers(self) -> list[int]:
        return sorted({int(i) for i, o in zip(self.layer, self.op) if i >= 0 and o != NONE})

    def select(self, rows: np.ndarray) -> "RowEdits":
        return RowEdits(self.layer[rows], self.op[rows], self.index[rows], self.scale[rows], self.table)

    def vectors(self, rows: np.ndarray) -> torch.Tensor:
        """(len(rows), hidden) float32: the vector each of ``rows`` uses."""
        scale = torch.as_tensor(np.asarray(self.scale[rows], dtype=np.float32))[:, None]
        return self.table[torch.as_tensor(self.index[rows], dtype=torch.long)].float() * scale

    @staticmethod
    def none(rows: int, hidden: int) -> "RowEdits":
        """``rows`` rows without an edit."""
        return RowEdits(np.full(rows, -1, np.int64), np.zeros(rows, np.int64), np.zeros(rows, np.int64),
                        np.zeros(rows, np.float32), torch.zeros(1, hidden))


def _decoder(net):
    base = net.get_base_model() if hasattr(net, "get_base_model") else net
    return base.get_decoder() if hasattr(base, "get_decoder") else base.model


def residual_module(net, layer: int) -> torch.nn.Module:
    """The module whose output is residual index ``layer`` (embeddings for 0, block ``layer`` else).

    Example:
        >>> residual_module(net, 30) is net.model.layers[29]   # doctest: +SKIP
        True
    """
    decoder = _decoder(net)
    if layer == 0:
        return decoder.get_input_embeddings() if hasattr(decoder, "get_input_embeddings") else decoder.embed_tokens
    return decoder.layers[layer - 1]


def edit_last(h: torch.Tensor, rows: torch.Tensor, op: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``h`` (batch, T, hidden) with the last position of ``rows`` edited; a new tensor (the module's
    output is not changed in place, so nothing else holding it sees the edit).

    Example:
        >>> h = torch.zeros(2, 3, 2)
        >>> edit_last(h, torch.tensor([1]), torch.tensor([ADD]), torch.tensor([[1.0, 2.0]]))[1, -1]
        tensor([1., 2.])
    """
    x = h[rows, -1].float()  # (k, hidden)
    v = v.to(device=h.device, dtype=torch.float32)
    op = op.to(h.device)[:, None]
    added = x + v
    ablated = x - (x * v).sum(-1, keepdim=True) * v
    new = torch.where(op == ADD, added, torch.where(op == ABLATE, ablated, torch.where(op == REPLACE, v, x)))
    out = h.clone()
    out[rows, -1] = new.to(h.dtype)
    return out


@contextmanager
def intervene(net, edits: RowEdits, every_position: bool = False):
    """Register the hooks for one batch's edits, and remove them on exit, error or not.

    Edit r applies to the last position of batch row r; with ``every_position`` to token r of the
    flattened (batch x positions) instead (the runner's packed readouts: one token per edit).

    Example:
        >>> with intervene(net, edits):       # doctest: +SKIP
        ...     out = net(input_ids=ids, attention_mask=mask)
    """
    handles = []
    try:
        for layer in edits.layers():
            sel = np.flatnonzero((edits.layer == layer) & (edits.op != NONE))
            handles.append(residual_module(net, layer).register_forward_hook(
                _hook(torch.as_tensor(sel), torch.as_tensor(edits.op[sel]), edits.vectors(sel), every_position)))
        yield
    finally:
        for h in handles:
            h.remove()


def _hook(rows: torch.Tensor, op: torch.Tensor, v: torch.Tensor, every_position: bool):
    on_device: dict = {}  # device -> (rows, op, v) there (device_map="auto": blocks on several GPUs)

    def hook(_module, _args, output):
        h = output[0] if isinstance(output, tuple) else output
        if h.device not in on_device:
            on_device[h.device] = (rows.to(h.device), op.to(h.device), v.to(h.device))
        if every_position:  # (batch, T, hidden) -> (batch * T, 1, hidden): each token its own row
            new = edit_last(h.reshape(-1, 1, h.shape[-1]), *on_device[h.device]).reshape(h.shape)
        else:
            new = edit_last(h, *on_device[h.device])
        return (new, *output[1:]) if isinstance(output, tuple) else new

    return hook


@contextmanager
def capture_residual(net, layer: int):
    """Capture residual index ``layer`` as the model reads it downstream (the input of the next
    block, or of the final norm for the last index): what a test reads back after an edit.

    Example:
        >>> with capture_residual(net, 3) as got:    # doctest: +SKIP
        ...     net(input_ids=ids)
        >>> got["x"].shape                            # doctest: +SKIP
        torch.Size([1, 12, 64])
    """
    store: dict[str, torch.Tensor] = {}
    layers = _decoder(net).layers
    module = layers[layer] if layer < len(layers) else final_norm(net)

    def hook(_module, args, kwargs):
        x = args[0] if args else kwargs.get("hidden_states")
        store["x"] = x.detach().clone()

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield store
    finally:
        handle.remove()
