"""Steering: add ``strength x unit direction`` at the readout token after a block, and measure the
dose-response of the stated confidence against random orthogonal directions of the same norm.

Per layer the effect is the least-squares slope of the mean expected confidence over strengths;
the null is the same slope for ``controls`` random unit directions orthogonal to the tested one,
pooled over the layers (as the reference research does); p-values are Benjamini-Hochberg
adjusted over the layers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .effects import fdr, null_p_value, readout_score, slope
from .hooks import ADD, NONE, RowEdits
from .runner import readout_rows
from .vectors import orthogonal_controls


@dataclass
class LayerSteer:
    layer: int
    unit: float  # activation norm one strength unit stands for (1.0 with raw strengths)
    strengths: list[float]
    mean_confidence: list[float]  # (n_strengths,) tested direction, mean over questions
    slope: float
    control_mean_confidence: list[list[float]]  # (controls, n_strengths)
    control_slopes: list[float]
    p_value: float = float("nan")
    p_fdr: float = float("nan")


@dataclass
class SteerResult:
    pass_name: str
    n_questions: int
    strength_unit: str  # "mean_norm" | "raw"
    layers: list[LayerSteer] = field(default_factory=list)
    rows: int = 0  # readout forwards run (question x layer x direction x strength, + baselines)
    seconds: float = 0.0

    def to_json(self) -> dict:
        """The contract other tools read (issue 16)."""
        return {"pass": self.pass_name, "n_questions": self.n_questions, "strength_unit": self.strength_unit,
                "layers": [{"layer": r.layer, "strengths": r.strengths, "mean_confidence": r.mean_confidence,
                            "slope": r.slope, "control_slopes": r.control_slopes, "p_value": r.p_value,
                            "p_fdr": r.p_fdr} for r in self.layers]}


def steer(lm, inputs, directions: dict[int, np.ndarray], strengths: list[float], *, units: dict[int, float] | None = None,
          controls: int = 25, seed: int = 0, batch_size: int = 8, reuse_prefix: bool = True,
          progress=None) -> SteerResult:
    """Run the steering grid on ``inputs`` (a :class:`PassInputs`) and compute the statistics.

    ``directions``: {layer: unit (hidden,)}; ``units``: {layer: norm} scales strengths (None: raw).

    Example:
        >>> res = steer(lm, inputs, {30: d}, [-4, 0, 4], units={30: 97.0}, controls=25)  # doctest: +SKIP
        >>> res.layers[0].slope, res.layers[0].p_fdr                                      # doctest: +SKIP
    """
    layers = sorted(directions)
    s = np.asarray(strengths, dtype=np.float64)
    nonzero = np.flatnonzero(s != 0)
    # table rows: layer-major, tested direction first then its controls -> (L * (1 + C), hidden)
    table = np.concatenate([np.vstack([directions[layer][None], orthogonal_controls(directions[layer], controls, seed + layer)])
                            for layer in layers])
    K = 1 + controls
    n = inputs.n
    # rows: per question one baseline, then (layer, direction, nonzero strength)
    grid_l, grid_k, grid_s = np.meshgrid(np.arange(len(layers)), np.arange(K), nonzero, indexing="ij")
    grid_l, grid_k, grid_s = grid_l.ravel(), grid_k.ravel(), grid_s.ravel()
    per_q = 1 + grid_l.size
    unit = np.array([(units or {}).get(layer, 1.0) for layer in layers])  # (L,)
    question = np.repeat(np.arange(n), per_q)
    layer = np.tile(np.concatenate([[-1], np.asarray(layers)[grid_l]]), n)
    op = np.tile(np.concatenate([[NONE], np.full(grid_l.size, ADD)]), n)
    index = np.tile(np.concatenate([[0], grid_l * K + grid_k]), n)
    scale = np.tile(np.concatenate([[0.0], s[grid_s] * unit[grid_l]]), n).astype(np.float32)
    edits = RowEdits(layer, op, index, scale, torch.from_numpy(table))
    t0 = time.perf_counter()
    logits = readout_rows(lm, inputs.seqs, question, edits, inputs.label_ids, batch_size=batch_size,
                          reuse_prefix=reuse_prefix, progress=progress)
    seconds = time.perf_counter() - t0
    chosen = np.repeat(inputs.logits.argmax(axis=1), per_q) if inputs.pass_name == "mcq" else None
    score = readout_score(logits, inputs.pass_name, chosen).reshape(n, per_q)  # (n, 1 + L*K*S')
    conf = np.empty((n, len(layers), K, len(s)))  # (questions, layers, directions, strengths)
    conf[:] = score[:, :1, None, None]  # strength 0 = the unedited readout
    conf[:, grid_l, grid_k, grid_s] = score[:, 1:]
    mean = conf.mean(axis=0)  # (L, K, S)
    slopes = slope(s, mean) if len(s) > 1 else np.full(mean.shape[:2], np.nan)  # (L, K)
    pooled = slopes[:, 1:].ravel()
    res = SteerResult(inputs.pass_name, n, "mean_norm" if units else "raw", rows=len(question), seconds=seconds)
    for i, layer_i in enumerate(layers):
        res.layers.append(LayerSteer(
            layer_i, float(unit[i]), s.tolist(), mean[i, 0].tolist(), float(slopes[i, 0]), mean[i, 1:].tolist(),
            slopes[i, 1:].tolist(), null_p_value(slopes[i, 0], pooled)))
    for r, q in zip(res.layers, fdr([r.p_value for r in res.layers])):
        r.p_fdr = q
    return res
