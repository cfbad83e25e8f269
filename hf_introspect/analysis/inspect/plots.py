"""PNG plots of an inspection report (matplotlib, Agg backend: no display needed).

Files written by :func:`write_plots`:

========================== ===================================================================
reliability.png            accuracy vs mean self-confidence per bin, with the diagonal and counts
confidence_bins.png        histograms of the chosen confidence bin (S-Z), self and other
entropy_vs_confidence.png  MCQ entropy vs self-confidence, coloured by correctness
layer_similarity.png       (comparison) cosine similarity of the two runs per layer
========================== ===================================================================
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...passes import CONFIDENCE_LABELS, CONFIDENCE_RANGES

_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")
_PASS_COLORS = {"mcq": "#1f77b4", "self_conf": "#d62728", "other_conf": "#2ca02c"}


def _pyplot():
    import logging

    import matplotlib

    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # font-cache chatter
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def reliability(path: Path, curves: list[tuple[str, list[dict], float | None]]) -> Path:
    """Reliability diagram. ``curves``: (name, 10-bin reliability table, ECE) per run.

    >>> table = build_report(open_run("test_run_base"))["calibration"]["reliability_10_bins"]   # doctest: +SKIP
    >>> reliability(Path("plots/reliability.png"), [("base", table, 0.15)])                    # doctest: +SKIP
    PosixPath('plots/reliability.png')
    """
    plt = _pyplot()
    fig, (ax, axn) = plt.subplots(2, 1, figsize=(6.4, 6.4), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    width = 0.1 / (len(curves) + 1)
    for k, (name, table, ece) in enumerate(curves):
        color = _COLORS[k % len(_COLORS)]
        conf = np.array([r["confidence"] for r in table], dtype=float)
        acc = np.array([r["accuracy"] for r in table], dtype=float)
        counts = np.array([r["count"] for r in table])
        ok = counts > 0
        label = f"{name} (ECE {ece:.3f})" if ece is not None and np.isfinite(ece) else name
        ax.plot(conf[ok], acc[ok], marker="o", color=color, label=label)
        for x, y, n in zip(conf[ok], acc[ok], counts[ok]):
            ax.annotate(str(n), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7, color=color)
        lo = np.array([r["lo"] for r in table])
        axn.bar(lo + width * (k + 0.5), counts, width=width, align="edge", color=color, label=name)
    ax.set(xlim=(0, 1), ylim=(-0.02, 1.02), ylabel="MCQ accuracy in bin",
           title="Reliability of self-confidence vs MCQ correctness\n(10 equal-width bins; numbers = questions per bin)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    axn.set(xlabel="self-confidence (expected value over the 8 bins, as a probability)", ylabel="questions")
    axn.set_xticks(np.linspace(0, 1, 11))
    axn.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def confidence_bins(path: Path, series: dict[str, list[tuple[str, dict]]],
                    mean_probs: dict[str, list[tuple[str, dict]]] | None = None) -> Path:
    """Bar charts of the confidence bin chosen, one panel per pass. ``series``: pass -> [(name, counts)];
    ``mean_probs``: pass -> [(name, mean probability per bin)], drawn as lines on a second axis.

    >>> counts = {"S": 10, "T": 0, "U": 0, "V": 0, "W": 0, "X": 0, "Y": 0, "Z": 0}
    >>> confidence_bins(Path("plots/bins.png"), {"self_conf": [("argmax", counts)]})   # doctest: +SKIP
    PosixPath('plots/bins.png')
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(series), figsize=(5.6 * len(series), 4.4), squeeze=False)
    x = np.arange(len(CONFIDENCE_LABELS))
    titles = {"self_conf": "self-confidence: how sure am I?", "other_conf": "other-confidence: share of people who know"}
    for ax, (name, runs) in zip(axes[0], series.items()):
        width = 0.8 / max(1, len(runs))
        for k, (label, counts) in enumerate(runs):
            values = [counts.get(b, 0) for b in CONFIDENCE_LABELS]
            ax.bar(x - 0.4 + width * (k + 0.5), values, width=width, color=_COLORS[k % len(_COLORS)], label=label)
        handles, labels = ax.get_legend_handles_labels()
        if mean_probs and mean_probs.get(name):
            ax2 = ax.twinx()
            for k, (label, probs) in enumerate(mean_probs[name]):
                ax2.plot(x, [probs.get(b, 0.0) for b in CONFIDENCE_LABELS], color="black" if len(mean_probs[name]) == 1
                         else _COLORS[k % len(_COLORS)], marker="D", ms=4, ls="--", lw=1, label=label)
            ax2.set_ylim(0, 1)
            ax2.set_ylabel("mean probability of the bin")
            h2, l2 = ax2.get_legend_handles_labels()
            handles, labels = handles + h2, labels + l2
        ax.set_xticks(x, [f"{b}\n{r}" for b, r in zip(CONFIDENCE_LABELS, CONFIDENCE_RANGES)], fontsize=8)
        ax.set(title=f"{name} ({titles.get(name, name)})", xlabel="confidence bin", ylabel="questions")
        ax.title.set_fontsize(10)
        ax.grid(alpha=0.3, axis="y")
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.07 * (1 + (len(labels) - 1) // 4), 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def entropy_scatter(path: Path, panels: list[tuple[str, np.ndarray, np.ndarray, np.ndarray, float]]) -> Path:
    """MCQ entropy vs self-confidence. ``panels``: (name, entropy, self_confidence 0-100, correct, rho).

    >>> entropy_scatter(Path("plots/entropy.png"), [("base", np.array([1.2, 1.3]), np.array([25.0, 30.0]),
    ...                 np.array([True, False]), 0.1)])                                   # doctest: +SKIP
    PosixPath('plots/entropy.png')
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(max(6.4, 5.2 * len(panels)), 4.6), squeeze=False, sharey=True)
    for ax, (name, entropy, conf, correct, rho) in zip(axes[0], panels):
        correct = np.asarray(correct, dtype=bool)
        for mask, color, label in ((correct, "#2ca02c", "MCQ correct"), (~correct, "#d62728", "MCQ wrong")):
            ax.scatter(entropy[mask], conf[mask], s=18, alpha=0.7, color=color, label=f"{label} ({int(mask.sum())})",
                       edgecolors="none")
        rho_text = f"Spearman rho = {rho:.2f}" if rho is not None and np.isfinite(rho) else "Spearman rho n/a"
        ax.set(title=f"{name}: {rho_text}", xlabel="MCQ answer entropy (nats; max ln 4 = 1.39)")
        ax.title.set_fontsize(10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    axes[0][0].set_ylabel("self-confidence (0-100)")
    fig.suptitle("Does stated self-confidence track the model's own answer uncertainty?", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def layer_similarity(path: Path, similarity: dict[str, dict], names: list[str]) -> Path:
    """Mean cosine similarity per layer (band: 25th-75th percentile), one line per pass.

    >>> sim = build_comparison(open_run("base"), open_run("lora"))["layer_similarity"]   # doctest: +SKIP
    >>> layer_similarity(Path("plots/layers.png"), sim, ["base", "lora"])              # doctest: +SKIP
    PosixPath('plots/layers.png')
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.0, 4.2))
    for name, s in similarity.items():
        if not s["n"]:
            continue
        layers = np.array(s["layers"])
        color = _PASS_COLORS.get(name, "black")
        ax.plot(layers, s["mean"], marker="o", ms=3, color=color, label=f"{name} (n={s['n']})")
        ax.fill_between(layers, s["q25"], s["q75"], color=color, alpha=0.15)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="layer (residual-stream index; 0 = embeddings)", ylabel="cosine similarity",
           title=f"Activations at the answer position: {names[0]} vs {names[1]}\n"
                 "(mean over questions; band = 25th-75th percentile)")
    ax.title.set_fontsize(10)
    lo = min([min(s["q25"]) for s in similarity.values() if s["n"]] + [0.0])
    ax.set_ylim(min(lo, 0.0) - 0.05, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_plots(outdir: str | Path, run_a, run_b, report: dict) -> list[Path]:
    """Write every plot that the runs' passes allow; returns the paths written.

    >>> run = open_run("test_run_base")                                         # doctest: +SKIP
    >>> [p.name for p in write_plots("plots", run, None, build_report(run))]    # doctest: +SKIP
    ['reliability.png', 'confidence_bins.png', 'entropy_vs_confidence.png']
    """
    from .summary import join_passes

    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    runs = [run_a] + ([run_b] if run_b is not None else [])
    if run_b is None:
        names = [run_a.name]
        cals = [report["calibration"]]
        confs = [report["confidence"]]
    else:
        names = report["names"]
        cals = [report["calibration"]["a"], report["calibration"]["b"]]
        from .summary import confidence

        confs = [confidence(run_a), confidence(run_b)]
    written = []
    curves = [(n, c["reliability_10_bins"], c.get("ece_10_bins")) for n, c in zip(names, cals) if "reliability_10_bins" in c]
    if curves:
        written.append(reliability(out / "reliability.png", curves))
    series, probs = {}, {}
    for p in ("self_conf", "other_conf"):
        if run_b is None and p in confs[0]:
            series[p] = [(f"{names[0]}: argmax bin", confs[0][p]["argmax_bins"]),
                         (f"{names[0]}: parsed answer", confs[0][p]["parsed_bins"])]
        elif run_b is not None and all(p in c for c in confs):
            series[p] = [(f"{n}: argmax bin", c[p]["argmax_bins"]) for n, c in zip(names, confs)]
        if p in series:
            probs[p] = [(f"{n}: mean probability", c[p]["mean_probs"]) for n, c in zip(names, confs)]
    if series:
        written.append(confidence_bins(out / "confidence_bins.png", series, probs))
    panels = []
    for name, run, cal in zip(names, runs, cals):
        j = join_passes(run)
        if j.entropy is not None and j.self_conf is not None and j.correct is not None:
            rho = cal.get("spearman", {}).get("self_vs_entropy", {}).get("rho")
            panels.append((name, j.entropy, j.self_conf, j.correct, rho))
    if panels:
        written.append(entropy_scatter(out / "entropy_vs_confidence.png", panels))
    if run_b is not None and any(s["n"] for s in report["layer_similarity"].values()):
        written.append(layer_similarity(out / "layer_similarity.png", report["layer_similarity"], names))
    return written
