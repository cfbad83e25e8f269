"""Score-vs-layer plots: each target's mean test score per layer, its 95% band over splits, and the
permutation null's band (chance level up to the null's 95th percentile).

Targets with different metrics (R^2, AUROC, accuracy) go on stacked panels of one figure, sharing
the layer axis, so where the entropy signal emerges and where the answer letter becomes decodable
can be read off together. ``compare`` puts two runs side by side with the same y-limits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .figures import save_png

METRIC_LABEL = {"r2": "test R$^2$", "auroc": "test AUROC", "accuracy": "test accuracy"}


def _draw(ax, results, colors) -> None:
    for res in results:
        color = colors[res.target]
        x = np.array([r.layer for r in res.layers])
        score = np.array([r.score for r in res.layers], dtype=float)
        lo = np.array([r.ci_low for r in res.layers], dtype=float)
        hi = np.array([r.ci_high for r in res.layers], dtype=float)
        null = np.array([r.null_p95 for r in res.layers], dtype=float)
        ax.plot(x, score, "-o", ms=3, color=color, label=f"{res.target} ({res.pass_name} @ {res.position})")
        ax.fill_between(x, lo, hi, color=color, alpha=0.18, lw=0)
        if np.isfinite(null).any():
            ax.fill_between(x, np.full_like(null, res.chance), null, color=color, alpha=0.12, hatch="//",
                            edgecolor=color, lw=0)
            ax.plot(x, null, ":", color=color, lw=1)
        if res.best_layer is not None:
            ax.axvline(res.best_layer, color=color, lw=0.6, ls="--", alpha=0.6)
        if np.isfinite(getattr(res, "majority", np.nan)) and res.metric == "accuracy":
            # always answering the commonest class: the baseline that matters when answers are skewed
            ax.axhline(res.majority, color=color, lw=0.8, ls="-.", label=f"{res.target}: majority class")
    chance = {res.chance for res in results}
    for c in chance:
        ax.axhline(c, color="0.4", lw=0.7)
    ax.set_ylabel(METRIC_LABEL.get(results[0].metric, results[0].metric))
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)


def _panels(results) -> dict:
    by_metric: dict = {}
    for res in results:
        by_metric.setdefault(res.metric, []).append(res)
    return by_metric


def plot_layer_curves(results, path, title: str | None = None, compare=None, labels=("run", "compare_with")) -> Path:
    """Write the score-vs-layer figure of ``results`` (ProbeResults) to ``path`` (PNG).

    compare: the other run's ProbeResults (same targets): drawn in a second column, same y-limits.
    Bands: the 95% interval over splits (solid); the null from chance to its 95th percentile (hatched).

    Example:
        >>> plot_layer_curves([result], "entropy.png")           # doctest: +SKIP
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [results] if compare is None else [results, compare]
    panels = [_panels(col) for col in columns]
    metrics = list(panels[0])
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colors = {t: cycle[i % len(cycle)] for i, t in enumerate(dict.fromkeys(r.target for r in results))}
    fig, axes = plt.subplots(len(metrics), len(columns), figsize=(6.4 * len(columns), 3.2 * len(metrics) + 0.6),
                             squeeze=False, sharex=True)
    for j, panel in enumerate(panels):
        for i, metric in enumerate(metrics):
            if metric in panel:
                _draw(axes[i, j], panel[metric], colors)
            if compare is not None and i == 0:
                axes[i, j].set_title(f"{labels[j]}: {Path(str(columns[j][0].run)).name}", fontsize=9)
        axes[-1, j].set_xlabel("layer (residual index, 0 = embeddings)")
        axes[-1, j].xaxis.get_major_locator().set_params(integer=True)
    if compare is not None:
        for i in range(len(metrics)):
            lims = [axes[i, j].get_ylim() for j in range(2)]
            for j in range(2):
                axes[i, j].set_ylim(min(lo for lo, _ in lims), max(hi for _, hi in lims))
    fig.suptitle(title or "probe score by layer (band: 95% over splits; hatched: permutation null to its 95th pct)",
                 fontsize=9)
    return save_png(fig, path, dpi=90)
