"""Plots of directions and transfer (matplotlib, Agg): held-out scores per layer, layer x layer
cosine heatmaps, cosines between passes with their null band, self vs other with the residual
norms, cross-run cosines, and transfer curves. Each function writes one PNG and returns its path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

KIND_STYLE = {"probe": "-o", "meandiff": "--s"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> Path:
    from matplotlib.ticker import MaxNLocator

    for ax in fig.axes:
        if ax.get_xlabel().startswith("layer"):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    _pyplot().close(fig)
    return path


def _col(rows, key) -> np.ndarray:
    return np.array([np.nan if r[key] is None else r[key] for r in rows], dtype=float)


def plot_scores(sweep, path, other=None) -> Path:
    """Held-out r^2 of the projection on the probe and mean-diff directions vs layer, one line per pass.

    Example:
        >>> plot_scores(sweep, "scores.png")               # doctest: +SKIP
    """
    plt = _pyplot()
    runs = [sweep] + ([other] if other is not None else [])
    fig, axes = plt.subplots(1, len(runs), figsize=(6.2 * len(runs), 3.6), squeeze=False, sharey=True)
    for ax, sw in zip(axes[0], runs):
        for i, p in enumerate(sw.passes):
            rows = sw.per_pass[p]
            x = _col(rows, "layer")
            for kind in ("probe", "meandiff"):
                ax.plot(x, _col(rows, f"{kind}_score"), KIND_STYLE[kind], ms=3, color=f"C{i}",
                        label=f"{p} {kind} ({sw.targets[p]})")
        ax.axhline(0, color="0.4", lw=0.7)
        ax.set_xlabel("layer (residual index)")
        ax.set_ylabel("held-out r$^2$ of the projection")
        ax.set_title(f"{Path(sw.run).name} @ {sw.position}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    return _save(fig, path)


def plot_layer_heatmaps(sweep, path) -> Path:
    """Layer x layer cosine of each pass's directions (rows: probe, mean-diff; columns: passes)."""
    plt = _pyplot()
    kinds = ("probe", "meandiff")
    fig, axes = plt.subplots(2, len(sweep.passes), figsize=(3.3 * len(sweep.passes) + 0.8, 6.2), squeeze=False)
    layers = sweep.layers
    for j, p in enumerate(sweep.passes):
        for i, kind in enumerate(kinds):
            ax = axes[i, j]
            im = ax.imshow(sweep.layer_matrix(p, kind), vmin=-1, vmax=1, cmap="RdBu_r", origin="lower")
            ticks = np.linspace(0, len(layers) - 1, min(6, len(layers))).round().astype(int)
            ax.set_xticks(ticks, [layers[t] for t in ticks], fontsize=7)
            ax.set_yticks(ticks, [layers[t] for t in ticks], fontsize=7)
            ax.set_title(f"{p} {kind}", fontsize=9)
    fig.colorbar(im, ax=axes, shrink=0.7, label="cosine")
    fig.savefig(Path(path), dpi=90)
    plt.close(fig)
    return Path(path)


def plot_pass_cosines(sweep, path) -> Path:
    """Cosine between passes' directions per layer, with the permuted null's |cos| 95th percentile."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), sharey=True)
    for ax, kind in zip(axes, ("probe", "meandiff")):
        for i, (name, by_kind) in enumerate(sweep.pairs.items()):
            rows = by_kind[kind]
            x, null = _col(rows, "layer"), _col(rows, "null_p95")
            ax.plot(x, _col(rows, "cos"), "-o", ms=3, color=f"C{i}", label=name.replace("~", " vs "))
            ax.fill_between(x, -null, null, color=f"C{i}", alpha=0.12, lw=0)
        ax.axhline(0, color="0.4", lw=0.7)
        ax.set_ylim(-1.05, 1.05)
        ax.set_title(f"{kind} directions: cosine between passes (band: null |cos| p95)", fontsize=9)
        ax.set_xlabel("layer (residual index)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("cosine")
    return _save(fig, path)


def plot_self_vs_other(sweep, path, other=None) -> Path:
    """Self vs other confidence per layer: cosine (probe, mean-diff) with the null band, and the
    residual norm of the unique parts with the 0.1 flag line; ``other``: a second run, dashed."""
    from .directions import RESIDUAL_FLAG

    plt = _pyplot()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 3.6))
    for sw, alpha, tag in ((sweep, 1.0, ""), (other, 0.5, " (compare)")):
        if sw is None or not sw.self_vs_other:
            continue
        rows = sw.self_vs_other
        x = _col(rows, "layer")
        for i, kind in enumerate(("probe", "meandiff")):
            ax.plot(x, _col(rows, f"cos_{kind}"), KIND_STYLE[kind], ms=3, color=f"C{i}", alpha=alpha,
                    label=f"{kind}{tag}")
            if sw is sweep:
                null = _col(rows, f"null_p95_{kind}")
                ax.fill_between(x, -null, null, color=f"C{i}", alpha=0.12, lw=0)
                ax.plot(x, _col(rows, f"null_p95_paired_{kind}"), ":", color=f"C{i}", lw=1,
                        label=f"{kind} paired null p95")
            ax2.plot(x, _col(rows, f"residual_{kind}"), KIND_STYLE[kind], ms=3, color=f"C{i}", alpha=alpha,
                     label=f"{kind}{tag}")
    ax.axhline(0, color="0.4", lw=0.7)
    ax.set_ylim(-1.05, 1.05)
    ax.set_title("self vs other directions: cosine (band: independent null p95; dotted: paired)", fontsize=9)
    ax.set_ylabel("cosine")
    ax2.axhline(RESIDUAL_FLAG, color="C3", lw=0.8, ls=":", label=f"flag < {RESIDUAL_FLAG}")
    ax2.set_ylim(0, 1.05)
    ax2.set_title("residual norm of the Gram-Schmidt unique part", fontsize=9)
    for a in (ax, ax2):
        a.set_xlabel("layer (residual index)")
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    return _save(fig, path)


def plot_cross_run(comparison: dict, path) -> Path:
    """Per-layer cosine between two runs' directions (one line per pass and kind)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.2, 3.6))
    for i, (p, by_kind) in enumerate(comparison.items()):
        for kind, rows in by_kind.items():
            ax.plot(_col(rows, "layer"), _col(rows, "cos"), KIND_STYLE[kind], ms=3, color=f"C{i}",
                    label=f"{p} {kind}")
    ax.set_ylim(-1.05, 1.05)
    ax.axhline(0, color="0.4", lw=0.7)
    ax.set_xlabel("layer (residual index)")
    ax.set_ylabel("cosine, run vs compare_with")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_transfer(result, path, other=None) -> Path:
    """Direct and transferred R^2 per layer (solid: centered, dashed: separate, dotted: shuffled
    control), one panel per run; a second panel with the 2x2 cross-prediction's entries per layer."""
    plt = _pyplot()
    runs = [result] + ([other] if other is not None else [])
    has_cross = any(r.cross for r in runs)
    cols = len(runs) + (1 if has_cross else 0)
    fig, axes = plt.subplots(1, cols, figsize=(5.6 * cols, 3.8), squeeze=False)
    for ax, res in zip(axes[0], runs):
        rows = res.layers
        x = _col(rows, "layer")
        ax.plot(x, _col(rows, "direct"), "-o", ms=3, color="k", label=f"direct ({res.train} -> {res.target})")
        for i, t in enumerate(res.tests):
            ax.plot(x, [r["transfer"][t]["centered"] for r in rows], "-", color=f"C{i}", label=f"{t} centered")
            ax.plot(x, [r["transfer"][t]["separate"] for r in rows], "--", color=f"C{i}", label=f"{t} separate")
            ax.plot(x, [r["transfer"][t]["shuffled_separate"] for r in rows], ":", color=f"C{i}", lw=1,
                    label=f"{t} shuffled (control)")
        ax.axhline(0, color="0.4", lw=0.7)
        low = np.nanmin([np.nanmin(_col(rows, "direct")), -0.2])
        ax.set_ylim(max(low, -1.0), 1.0)
        ax.set_xlabel("layer (residual index)")
        ax.set_ylabel("test R$^2$")
        ax.set_title(f"{Path(res.run).name}: transfer ratio centered/separate " + ", ".join(
            f"{t} {res.best[t]['centered']['ratio']:.2f}/{res.best[t]['separate']['ratio']:.2f}"
            for t in res.tests), fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    if has_cross:
        ax = axes[0][-1]
        res = result if result.cross else other
        x = np.array([c["layer"] for c in res.cross["layers"]], float)
        names = res.cross["passes"]
        for i in range(2):
            for j in range(2):
                ax.plot(x, [c["r2"][i][j] for c in res.cross["layers"]], "-" if i == j else "--", color=f"C{2 * i + j}",
                        label=f"{names[i]} probe on {names[j]}: R$^2$")
                if i != j:  # Pearson r: the same readout, blind to the other target's units
                    ax.plot(x, [c["r"][i][j] for c in res.cross["layers"]], ":", color=f"C{2 * i + j}",
                            label=f"{names[i]} probe on {names[j]}: r")
        ax.axhline(0, color="0.4", lw=0.7)
        ax.set_ylim(-1.0, 1.0)
        ax.set_xlabel("layer (residual index)")
        ax.set_title("2x2 cross-prediction (against the activations' own target)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    return _save(fig, path)
