"""Hooks: the edit is exact (read back downstream), per row, and gone after an exception."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hf_introspect.analysis.causal.hooks import ABLATE, ADD, NONE, REPLACE, RowEdits, capture_residual, intervene
from hf_introspect.testing import tiny_llama


@pytest.fixture(scope="module")
def net():
    return tiny_llama(vocab_size=50, num_layers=3, hidden=16)


def _ids():
    return torch.tensor([[3, 7, 9, 11], [4, 4, 8, 2], [5, 6, 7, 8]])


def _edits(layer: int, op, table):
    table = torch.as_tensor(np.asarray(table, np.float32))
    n = len(op)
    return RowEdits(np.full(n, layer), np.asarray(op), np.arange(n) % len(table), np.ones(n, np.float32), table)


@pytest.mark.parametrize("layer", [0, 1, 3])  # embeddings, a middle block, the last index (pre final norm)
def test_edit_is_read_back_exactly(net, layer):
    rng = np.random.default_rng(layer)
    v = rng.standard_normal((3, 16)).astype(np.float32)
    d = v[1] / np.linalg.norm(v[1])
    table = np.stack([v[0], d, v[2]])
    with torch.no_grad(), capture_residual(net, layer) as clean:
        net(input_ids=_ids())
    x = clean["x"]  # (3, 4, 16)
    with torch.no_grad(), capture_residual(net, layer) as got, intervene(net, _edits(layer, [ADD, ABLATE, REPLACE], table)):
        net(input_ids=_ids())
    y = got["x"]
    torch.testing.assert_close(y[:, :-1], x[:, :-1], rtol=0, atol=0)  # earlier positions untouched
    torch.testing.assert_close(y[0, -1], x[0, -1] + torch.from_numpy(v[0]), rtol=0, atol=1e-6)
    dt = torch.from_numpy(d)
    torch.testing.assert_close(y[1, -1], x[1, -1] - (x[1, -1] @ dt) * dt, rtol=0, atol=1e-5)
    assert abs(float(y[1, -1] @ dt)) < 1e-5  # nothing left along the ablated direction
    torch.testing.assert_close(y[2, -1], torch.from_numpy(v[2]), rtol=0, atol=0)


def test_rows_without_edit_are_unchanged_and_scale_applies(net):
    table = torch.ones(1, 16)
    edits = RowEdits(np.array([2, -1, 2]), np.array([ADD, ADD, NONE]), np.zeros(3, np.int64),
                     np.array([3.0, 1.0, 1.0], np.float32), table)
    with torch.no_grad(), capture_residual(net, 2) as clean:
        net(input_ids=_ids())
    with torch.no_grad(), capture_residual(net, 2) as got, intervene(net, edits):
        net(input_ids=_ids())
    torch.testing.assert_close(got["x"][1:], clean["x"][1:], rtol=0, atol=0)
    torch.testing.assert_close(got["x"][0, -1], clean["x"][0, -1] + 3.0, rtol=0, atol=1e-6)


def _hook_count(net) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in net.modules())


def test_hooks_are_gone_after_an_exception(net):
    before = _hook_count(net)
    with torch.no_grad():
        ref = net(input_ids=_ids()).logits
    edits = _edits(1, [ADD, ADD, ADD], np.full((1, 16), 5.0))
    with pytest.raises(RuntimeError, match="inside the batch"):
        with intervene(net, edits):
            assert _hook_count(net) == before + 1
            raise RuntimeError("failure inside the batch")
    assert _hook_count(net) == before
    with torch.no_grad():
        torch.testing.assert_close(net(input_ids=_ids()).logits, ref, rtol=0, atol=0)  # the model is clean
