"""Plots of causal results: dose-response per layer with the random-direction band, patching
shift per layer with its interval and the random-pairing band."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..figures import save_png


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_steering(result, path) -> Path:
    """One panel per layer: mean confidence vs strength for the tested direction, and the band
    (min-max, and the 25-75% range) of the random orthogonal directions.

    Example:
        >>> plot_steering(steer_result, "plots/steer.png")   # doctest: +SKIP
    """
    plt = _pyplot()
    n = len(result.layers)
    cols = min(n, 4)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False, sharey=True)
    ylabel = "P(chosen letter) %" if result.pass_name == "mcq" else "mean expected confidence %"
    xlabel = "strength (x mean readout norm)" if result.strength_unit == "mean_norm" else "strength (raw)"
    for ax, r in zip(axes.ravel(), result.layers):
        s = np.asarray(r.strengths)
        c = np.asarray(r.control_mean_confidence)  # (controls, strengths)
        if c.size:
            ax.fill_between(s, c.min(0), c.max(0), color="0.85", label=f"{len(c)} random orthogonal (min-max)")
            ax.fill_between(s, *np.percentile(c, [25, 75], axis=0), color="0.65", label="random (25-75%)")
        ax.plot(s, r.mean_confidence, "o-", color="C3", label="tested direction")
        ax.set_title(f"layer {r.layer}: slope {r.slope:.2f}, q={r.p_fdr:.2g}", fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel, fontsize=8)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    axes.ravel()[0].legend(fontsize=7, loc="best")
    fig.suptitle(f"steering {result.pass_name}, {result.n_questions} questions", fontsize=10)
    return save_png(fig, path, dpi=110)


def plot_patching(result, path) -> Path:
    """Normalised shift per layer with its bootstrap interval, over the random-pairing band.

    Example:
        >>> plot_patching(patch_result, "plots/patch.png")   # doctest: +SKIP
    """
    plt = _pyplot()
    layers = [r.layer for r in result.layers]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    null = [np.asarray(r.null_shifts, dtype=np.float64) for r in result.layers]
    if all(v.size for v in null):
        ax.fill_between(layers, [np.nanmin(v) for v in null], [np.nanmax(v) for v in null], color="0.85",
                        label="random pairings (min-max)")
    shift = [r.normalised_shift for r in result.layers]
    err = np.array([[s - r.interval[0], r.interval[1] - s] for s, r in zip(shift, result.layers)]).T
    ax.errorbar(layers, shift, yerr=err, fmt="o-", color="C0", capsize=3, label="low/high-entropy pairs (95% CI)")
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xlabel("residual index")
    ax.set_ylabel("normalised shift")
    ax.set_title(f"patching {result.source_pass} -> {result.target_pass}, {result.n_pairs} pairs", fontsize=10)
    ax.legend(fontsize=7)
    return save_png(fig, path, dpi=110)
