"""Ablation: project a direction out of the readout token's residual, ``x - (x.d) d``, after a
block, and measure the change in mean confidence and in the calibration it is supposed to carry
(the Pearson correlation between the stated confidence and the MCQ entropy of the same question),
against the same change for random orthogonal directions (pooled over layers, BH over layers)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .effects import fdr, null_p_value, readout_score
from .hooks import ABLATE, NONE, RowEdits
from .runner import readout_rows
from .vectors import orthogonal_controls


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r (NaN when either is constant)."""
    if np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


@dataclass
class LayerAblate:
    layer: int
    baseline_mean_confidence: float
    ablated_mean_confidence: float
    delta_mean: float
    control_delta_means: list[float]
    baseline_corr: float  # r(stated confidence, MCQ entropy) without ablation
    ablated_corr: float
    delta_corr: float
    control_delta_corrs: list[float]
    p_value_mean: float = float("nan")
    p_fdr_mean: float = float("nan")
    p_value_corr: float = float("nan")
    p_fdr_corr: float = float("nan")


@dataclass
class AblateResult:
    pass_name: str
    n_questions: int
    layers: list[LayerAblate] = field(default_factory=list)
    rows: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict:
        return {"pass": self.pass_name, "n_questions": self.n_questions,
                "layers": [dict(vars(r)) for r in self.layers]}


def ablate(lm, inputs, directions: dict[int, np.ndarray], mcq_entropy: np.ndarray, *, controls: int = 25,
           seed: int = 0, batch_size: int = 8, reuse_prefix: bool = True, progress=None) -> AblateResult:
    """Ablate each layer's direction (and ``controls`` random orthogonal ones) at the readout token.

    ``mcq_entropy``: (n,) the MCQ entropy of each of ``inputs``' questions (same order).

    Example:
        >>> res = ablate(lm, inputs, {20: d}, entropy, controls=25)   # doctest: +SKIP
        >>> res.layers[0].delta_corr, res.layers[0].p_fdr_corr         # doctest: +SKIP
    """
    layers = sorted(directions)
    K, n = 1 + controls, inputs.n
    table = np.concatenate([np.vstack([directions[layer][None], orthogonal_controls(directions[layer], controls, seed + layer)])
                            for layer in layers])  # (L * K, hidden)
    per_q = 1 + len(layers) * K
    question = np.repeat(np.arange(n), per_q)
    layer = np.tile(np.concatenate([[-1], np.repeat(layers, K)]), n)
    op = np.tile(np.concatenate([[NONE], np.full(len(layers) * K, ABLATE)]), n)
    index = np.tile(np.concatenate([[0], np.arange(len(layers) * K)]), n)
    edits = RowEdits(layer, op, index, np.ones(len(question), np.float32), torch.from_numpy(table))
    t0 = time.perf_counter()
    logits = readout_rows(lm, inputs.seqs, question, edits, inputs.label_ids, batch_size=batch_size,
                          reuse_prefix=reuse_prefix, progress=progress)
    seconds = time.perf_counter() - t0
    chosen = np.repeat(inputs.logits.argmax(axis=1), per_q) if inputs.pass_name == "mcq" else None
    score = readout_score(logits, inputs.pass_name, chosen).reshape(n, per_q)
    base = score[:, 0]  # (n,)
    ablated = score[:, 1:].reshape(n, len(layers), K)  # (n, L, K)
    d_mean = ablated.mean(axis=0) - base.mean()  # (L, K)
    r0 = _corr(base, mcq_entropy)
    d_corr = np.array([[_corr(ablated[:, i, k], mcq_entropy) - r0 for k in range(K)] for i in range(len(layers))])
    res = AblateResult(inputs.pass_name, n, rows=len(question), seconds=seconds)
    for i, layer_i in enumerate(layers):
        res.layers.append(LayerAblate(
            layer_i, float(base.mean()), float(ablated[:, i, 0].mean()), float(d_mean[i, 0]), d_mean[i, 1:].tolist(),
            r0, float(r0 + d_corr[i, 0]), float(d_corr[i, 0]), d_corr[i, 1:].tolist(),
            null_p_value(d_mean[i, 0], d_mean[:, 1:].ravel()), p_value_corr=null_p_value(d_corr[i, 0], d_corr[:, 1:].ravel())))
    for r, qm, qc in zip(res.layers, fdr([r.p_value_mean for r in res.layers]), fdr([r.p_value_corr for r in res.layers])):
        r.p_fdr_mean, r.p_fdr_corr = qm, qc
    return res
