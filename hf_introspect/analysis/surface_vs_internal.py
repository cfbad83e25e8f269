"""Surface vs internal: how much of a target do the activations carry beyond the question's surface?

On the same splits (by question) and for each layer:

- ``surface``: the target predicted from the surface-feature columns alone (``char_length``,
  ``token_length``, ``has_negation``, ``has_ambiguity``, ``token_rarity_mean``, ``token_rarity_max``
  and ``question_type`` one-hot): one score for the run, the floor a probe must beat;
- ``activations``: from the layer's activations alone (the probe of ``probe``);
- ``both``: from the activations and the surface features side by side (``ridge``: the surface
  columns unpenalised, like the intercept, so ``both`` is never worse than ``surface`` by shrinkage);
- ``unique`` = score(both) - score(surface): what the activations add to the surface;
- ``residual`` (numeric targets): the activations' R^2 on the target with the surface features
  regressed out (ordinary least squares on all questions with a value; a dozen parameters, so the
  in-sample fit barely flatters it).

Each score is the mean over splits with its 95% interval over splits; ``activations`` and
``residual`` carry the permutation null of ``probe`` (95th percentile, p-value).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import UserError
from . import stats
from .layer_sweep import SweepHeader, check_sweep_inputs, constant_rows

SURFACE_COLUMNS = ("char_length", "token_length", "has_negation", "has_ambiguity", "token_rarity_mean",
                   "token_rarity_max")


@dataclass
class SurfaceLayer:
    layer: int
    activations: float
    activations_ci: tuple[float, float]
    both: float
    both_ci: tuple[float, float]
    unique: float
    residual: float
    residual_ci: tuple[float, float]
    null_p95: float
    p_value: float
    residual_null_p95: float
    residual_p_value: float


@dataclass
class SurfaceResult(SweepHeader):
    features: list[str]
    surface: float
    surface_ci: tuple[float, float]
    surface_null_p95: float
    surface_p_value: float
    best_layer: int | None
    layers: list[SurfaceLayer] = field(default_factory=list)
    run: str = ""
    n_masked: int = 0
    n_splits: int = 0
    permutations: int = 0
    seed: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict:
        from .serialize import jsonable

        out = jsonable(self)
        out["pass"] = out.pop("pass_name")
        return out


def surface_matrix(data, pass_name: str, rows: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """(n, k) float64 surface features of ``rows`` (question_type one-hot), and their names."""
    from .data import column_values

    ds = data.split(pass_name)
    cols, names = [], []
    for name in SURFACE_COLUMNS:
        if name in ds.column_names:
            cols.append(column_values(ds, name)[rows].astype(np.float64))
            names.append(name)
    if "question_type" in ds.column_names:
        kinds = column_values(ds, "question_type")[rows].astype(str)
        for kind in sorted(set(kinds))[1:]:                 # one level dropped: the intercept covers it
            cols.append((kinds == kind).astype(np.float64))
            names.append(f"question_type={kind}")
    if not cols:
        raise UserError(f"pass {pass_name} has no surface-feature columns ({', '.join(SURFACE_COLUMNS)}); "
                        "this run predates them, recollect it")
    S = np.stack(cols, axis=1)                              # (n, k)
    varying = S.std(axis=0) > 0
    return S[:, varying], [n for n, v in zip(names, varying) if v]


def regress_out(y: np.ndarray, S: np.ndarray) -> np.ndarray:
    """y minus its least-squares fit on S (with intercept).

    Example:
        >>> S = np.arange(6.0)[:, None]
        >>> np.round(regress_out(2 * S[:, 0] + np.array([1, -1, -1, 1, 0, 0.0]), S), 6)[:4].tolist()
        [1.0, -1.0, -1.0, 1.0]
    """
    A = np.column_stack([np.ones(len(y)), S])
    coef, *_ = np.linalg.lstsq(A, y, rcond=None)
    return y - A @ coef


def _summ(res) -> tuple[float, tuple[float, float], float, float]:
    scores = np.asarray(res.scores, dtype=np.float64)
    score = float(np.nanmean(scores))
    null = np.asarray(res.null, dtype=np.float64)
    return score, stats.split_interval(scores), stats.null_quantile(null), stats.permutation_p(score, null)


def surface_sweep(data, pass_name: str, target: str, *, position="answer", layers=None, n_splits: int = 100,
                  test_size: float = 0.2, method: str = "ridge", permutations: int = 100, seed: int = 0,
                  device=None) -> SurfaceResult:
    """Surface features vs activations vs both for ``target``, per layer, on the same splits.

    Example:
        >>> res = surface_sweep(open_run_data("runs/trivia500"), "mcq", "entropy")   # doctest: +SKIP
        >>> round(res.surface, 3), res.best_layer                                    # doctest: +SKIP
    """
    from .split_fits import make_splits, score_splits

    t0 = time.perf_counter()
    tgt = data.target(pass_name, target)
    valid = np.flatnonzero(tgt.valid)
    y = tgt.values[valid]
    check_sweep_inputs(len(y), n_splits, test_size, method, tgt.name)
    type(tgt)(tgt.name, tgt.kind, y, np.ones(len(y), bool), tgt.classes).require_variation()
    layers = data.check_layers(pass_name, list(layers) if layers is not None else data.layers(pass_name))
    data.position_rows(pass_name, position)
    S, names = surface_matrix(data, pass_name, valid)
    splits = make_splits(len(y), n_splits=n_splits, test_size=test_size, seed=seed)
    fit = dict(method=method, task=tgt.kind, seed=seed, device=device)
    # Few surface columns: the reference's PCA(100) cannot apply; ridge (or logistic) fits them directly.
    surface_fit = dict(fit, method="logistic" if method == "logistic" else "ridge")
    s_score, s_ci, s_null, s_p = _summ(score_splits(S, y, splits, permutations=permutations, **surface_fit))
    resid = regress_out(y, S) if tgt.kind == "regression" else None
    out = []
    for layer in layers:
        X = data.matrix(pass_name, layer, position, rows=valid)          # (n, hidden) float32
        if constant_rows(X):  # the same vector for every question (layer 0 at the readout token)
            nan, nan2 = float("nan"), (float("nan"), float("nan"))
            out.append(SurfaceLayer(int(layer), nan, nan2, nan, nan2, nan, nan, nan2, nan, nan, nan, nan))
            continue
        a_score, a_ci, a_null, a_p = _summ(score_splits(X, y, splits, permutations=permutations, **fit))
        Sz = ((S - S.mean(0)) / S.std(0)).astype(np.float32)             # (n, k) on the activations' footing
        if method == "ridge":  # surface columns unpenalised beside the intercept: penalised like any of
            # ~1000 activation dimensions they were shrunk away, and "both" scored below "surface" alone
            both = score_splits(X, y, splits, permutations=0, free=Sz.astype(np.float64), **fit)
        else:
            both = score_splits(np.hstack([X, Sz]), y, splits, permutations=0, **fit)
        b_score, b_ci, _, _ = _summ(both)
        if resid is not None:
            r_score, r_ci, r_null, r_p = _summ(score_splits(X, resid, splits, permutations=permutations, **fit))
        else:
            r_score, r_ci, r_null, r_p = float("nan"), (float("nan"), float("nan")), float("nan"), float("nan")
        out.append(SurfaceLayer(int(layer), a_score, a_ci, b_score, b_ci, b_score - s_score, r_score, r_ci,
                                a_null, a_p, r_null, r_p))
    finite = [r for r in out if np.isfinite(r.unique)]
    return SurfaceResult(
        target=tgt.name, pass_name=pass_name, position=str(position), method=method, metric=tgt.metric,
        n_questions=int(len(y)), features=names, surface=s_score, surface_ci=s_ci, surface_null_p95=s_null,
        surface_p_value=s_p, best_layer=max(finite, key=lambda r: r.unique).layer if finite else None,
        layers=out, run=str(data.source), n_masked=tgt.n_missing, n_splits=n_splits,
        permutations=permutations, seed=seed, seconds=time.perf_counter() - t0)


def summary(res: SurfaceResult) -> str:
    m = res.metric
    lines = [f"surface vs internal: {res.target} from {res.pass_name} @ {res.position} ({res.run}), {res.method}, "
             f"{m} over {res.n_splits} splits, {res.n_questions} questions"
             + (f" ({res.n_masked} masked)" if res.n_masked else "") + f"; {res.seconds:.1f} s",
             f"surface features alone ({len(res.features)}: {', '.join(res.features)}): {m} {res.surface:.4f} "
             f"[{res.surface_ci[0]:.4f}, {res.surface_ci[1]:.4f}], null p95 {res.surface_null_p95:.4f}, "
             f"p {res.surface_p_value:.4f}",
             f"{'layer':>5} {'acts':>8} {'null p95':>9} {'p':>7} {'both':>8} {'unique':>8} {'residual':>9} {'p(res)':>7}"]
    for r in res.layers:
        mark = " *" if r.layer == res.best_layer else ""
        lines.append(f"{r.layer:>5} {r.activations:>8.4f} {r.null_p95:>9.4f} {r.p_value:>7.4f} {r.both:>8.4f} "
                     f"{r.unique:>8.4f} {r.residual:>9.4f} {r.residual_p_value:>7.4f}{mark}")
    lines.append("unique = both - surface; residual = activations' R^2 on the target with the surface features "
                 "regressed out")
    return "\n".join(lines)


def plot_surface(res: SurfaceResult, path) -> None:
    """Activations / both / residual per layer, the surface-only level as a horizontal band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.array([r.layer for r in res.layers])
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.axhspan(*res.surface_ci, color="0.7", alpha=0.4, lw=0)
    ax.axhline(res.surface, color="0.3", lw=1, label=f"surface features alone ({res.surface:.3f})")
    for key, style in (("activations", "-o"), ("both", "-s"), ("residual", "-^")):
        vals = np.array([getattr(r, key) for r in res.layers], dtype=float)
        if np.isfinite(vals).any():
            ax.plot(x, vals, style, ms=3, label=key)
    null = np.array([r.null_p95 for r in res.layers], dtype=float)
    if np.isfinite(null).any():
        ax.plot(x, null, ":", color="0.4", lw=1, label="activations null p95")
    ax.set_xlabel("layer (residual index, 0 = embeddings)")
    ax.set_ylabel(res.metric)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_title(f"{res.target} from {res.pass_name} @ {res.position}: surface vs internal", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
