"""Activation patching: the readout-token residual of a confidence prompt (the recipient) after
block L is replaced by another question's (the donor's) STORED readout activation of the source
pass (``mcq`` by default: no recomputation), pairing low- and high-MCQ-entropy questions
(quartiles) both ways.

Effect: the normalised shift ``(patched - recipient) / (donor - recipient)`` of expected
confidence, pooled over pairs as the least-squares slope through the origin
``sum(dp * dt) / sum(dt^2)`` (dp = patched - recipient, dt = donor - recipient: 1 = the readout
moves all the way to the donor's, 0 = not at all), with a bootstrap interval over pairs. Null:
the same figure for random pairings of the same recipients; p = share of null figures >= it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..stats import permutation_p
from .effects import bootstrap_interval, fdr, readout_score
from .hooks import NONE, REPLACE, RowEdits
from .runner import readout_rows


def shift_ratio(dp: np.ndarray, dt: np.ndarray) -> float:
    """Normalised shift pooled over pairs: sum(dp * dt) / sum(dt^2).

    Example:
        >>> shift_ratio(np.array([1.0, -2.0]), np.array([2.0, -4.0]))
        0.5
    """
    den = float(np.sum(dt * dt))
    return float(np.sum(dp * dt) / den) if den > 0 else float("nan")


@dataclass
class LayerPatch:
    layer: int
    normalised_shift: float
    interval: tuple[float, float]
    null_shifts: list[float]
    p_value: float
    low_to_high: dict  # recipients in the low-entropy quartile, donors from the high one: mean dp, mean dt
    high_to_low: dict
    p_fdr: float = float("nan")


@dataclass
class PatchResult:
    source_pass: str
    target_pass: str
    n_questions: int
    n_pairs: int
    layers: list[LayerPatch] = field(default_factory=list)
    rows: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict:
        return {"source_pass": self.source_pass, "target_pass": self.target_pass, "n_questions": self.n_questions,
                "n_pairs": self.n_pairs, "layers": [{**vars(r), "interval": list(r.interval)} for r in self.layers]}


def quartile_pairs(entropy: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(recipients, donors, is_low) pairing every low-entropy-quartile question with a high one and
    every high one with a low one (donors drawn without replacement while they last).

    Example:
        >>> r, d, low = quartile_pairs(np.arange(8.0))
        >>> sorted(r.tolist()), bool(np.all(np.isin(d[low], [6, 7])))
        ([0, 1, 6, 7], True)
    """
    lo_q, hi_q = np.quantile(entropy, [0.25, 0.75])
    low, high = np.flatnonzero(entropy <= lo_q), np.flatnonzero(entropy >= hi_q)
    rng = np.random.default_rng(seed)

    def draw(pool, k):
        return np.concatenate([rng.permutation(pool) for _ in range(-(-k // len(pool)))])[:k]

    recipients = np.concatenate([low, high])
    donors = np.concatenate([draw(high, len(low)), draw(low, len(high))])
    return recipients, donors, np.arange(len(recipients)) < len(low)


def random_donors(recipients: np.ndarray, n: int, rng) -> np.ndarray:
    """A random other question (of ``n``) for each recipient."""
    d = rng.integers(0, n - 1, len(recipients))
    return d + (d >= recipients)  # skip the recipient itself


def patch(lm, inputs, donor_acts: dict[int, np.ndarray], mcq_entropy: np.ndarray, *, controls: int = 25,
          seed: int = 0, source_pass: str = "mcq", n_boot: int = 1000, batch_size: int = 8,
          reuse_prefix: bool = True, progress=None) -> PatchResult:
    """Patch donors' stored activations into recipients' readout token, per layer.

    ``donor_acts``: {layer: (n, hidden) float32} stored source-pass readout activations of ``inputs``'
    questions (same order); ``mcq_entropy``: (n,) for the quartiles.

    Example:
        >>> res = patch(lm, inputs, {15: X15}, entropy, controls=25)   # doctest: +SKIP
        >>> res.layers[0].normalised_shift, res.layers[0].interval      # doctest: +SKIP
    """
    layers, n = sorted(donor_acts), inputs.n
    recipients, donors, is_low = quartile_pairs(mcq_entropy, seed)
    rng = np.random.default_rng(seed + 1)
    null_donors = [random_donors(recipients, n, rng) for _ in range(controls)]
    all_donors = np.concatenate([donors, *null_donors])  # (P * (1 + C),)
    all_recipients = np.tile(recipients, 1 + controls)
    m = len(all_donors)
    table = torch.from_numpy(np.concatenate([np.asarray(donor_acts[layer], np.float32) for layer in layers]))
    question = np.concatenate([np.arange(n), np.tile(all_recipients, len(layers))])
    layer = np.concatenate([np.full(n, -1), np.repeat(layers, m)])
    op = np.concatenate([np.full(n, NONE), np.full(m * len(layers), REPLACE)])
    index = np.concatenate([np.zeros(n, np.int64), (np.arange(len(layers))[:, None] * n + all_donors[None]).ravel()])
    edits = RowEdits(layer, op, index, np.ones(len(question), np.float32), table)
    t0 = time.perf_counter()
    logits = readout_rows(lm, inputs.seqs, question, edits, inputs.label_ids, batch_size=batch_size,
                          reuse_prefix=reuse_prefix, progress=progress)
    seconds = time.perf_counter() - t0
    chosen = inputs.logits.argmax(axis=1)[question] if inputs.pass_name == "mcq" else None
    score = readout_score(logits, inputs.pass_name, chosen)
    base, patched = score[:n], score[n:].reshape(len(layers), 1 + controls, len(recipients))
    dt = (base[all_donors] - base[all_recipients]).reshape(1 + controls, len(recipients))  # (1 + C, P)
    res = PatchResult(source_pass, inputs.pass_name, n, len(recipients), rows=len(question), seconds=seconds)
    for i, layer_i in enumerate(layers):
        dp = patched[i] - base[recipients][None]  # (1 + C, P)
        obs = shift_ratio(dp[0], dt[0])
        null = [shift_ratio(dp[c], dt[c]) for c in range(1, 1 + controls)]
        pairs = np.stack([dp[0], dt[0]], axis=1)  # (P, 2)
        interval = bootstrap_interval(pairs, lambda x: shift_ratio(x[:, 0], x[:, 1]), n_boot, seed)
        p = permutation_p(obs, np.asarray([v for v in null if np.isfinite(v)]))
        res.layers.append(LayerPatch(
            layer_i, obs, interval, null, p,
            {"mean_shift": float(dp[0][is_low].mean()), "mean_gap": float(dt[0][is_low].mean())},
            {"mean_shift": float(dp[0][~is_low].mean()), "mean_gap": float(dt[0][~is_low].mean())}))
    for r, q in zip(res.layers, fdr([r.p_value for r in res.layers])):
        r.p_fdr = q
    return res
