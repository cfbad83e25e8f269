"""Directions to intervene with: the tested ones (from ``hf-introspect directions`` or a ``.npy``)
and random control directions orthogonal to them."""

from __future__ import annotations

import numpy as np

from ...errors import UserError


def tested_directions(path, layers: list[int], num_layers: int, hidden: int, *, pass_name: str | None = None,
                      method: str | None = None) -> dict[int, np.ndarray]:
    """Unit direction per requested residual index -> {layer: (hidden,) float32}.

    Accepts what :func:`hf_introspect.analysis.directions.save_directions` writes, a ``.npy`` of
    shape ``(hidden,)`` (the same direction at every layer) or ``(num_layers + 1, hidden)``.

    Example:
        >>> np.save("/tmp/d.npy", np.ones(4, np.float32))
        >>> tested_directions("/tmp/d.npy", [1, 2], 2, 4)[2].tolist()
        [0.5, 0.5, 0.5, 0.5]
    """
    from ..directions import load_directions

    dirs = load_directions(path)
    if dirs.hidden != hidden:
        raise UserError(f"directions in {path} have hidden size {dirs.hidden}, the model {hidden}; "
                        "pass directions computed on this model's run")
    if not dirs.meta.get("any_layer") and dirs.num_layers != num_layers:
        raise UserError(f"directions in {path} have {dirs.num_layers + 1} rows, the model {num_layers + 1} residual "
                        "indices; pass (hidden,) or (num_layers + 1, hidden)")
    out = {}
    for layer in layers:
        v = np.asarray(dirs.layer(layer, pass_name, method), dtype=np.float64)
        norm = np.linalg.norm(v)
        if not np.isfinite(norm) or norm == 0:
            raise UserError(f"the direction for layer {layer} in {path} is zero or not finite")
        out[layer] = (v / norm).astype(np.float32)
    return out


def orthogonal_controls(direction: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """``count`` random unit directions orthogonal to ``direction`` -> (count, hidden) float32.

    Example:
        >>> d = np.array([1.0, 0, 0, 0], np.float32)
        >>> c = orthogonal_controls(d, 3)
        >>> bool(np.abs(c @ d).max() < 1e-6), np.allclose(np.linalg.norm(c, axis=1), 1)
        (True, True)
    """
    d = np.asarray(direction, dtype=np.float64)
    d = d / np.linalg.norm(d)
    g = np.random.default_rng(seed).standard_normal((count, d.size))  # (count, hidden)
    g -= np.outer(g @ d, d)
    return (g / np.linalg.norm(g, axis=1, keepdims=True)).astype(np.float32)
