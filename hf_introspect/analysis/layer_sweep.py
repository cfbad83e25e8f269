"""The per-layer probe sweep: one target, every chosen layer, the same splits -> :class:`ProbeResult`.

Per layer (one layer's ``(n_questions, hidden)`` float32 matrix in memory at a time):

- the probe's test metric on each of the random train/test splits (A-probe's ``score_splits``):
  test R^2 for a numeric target, AUROC for a binary one, accuracy for classes; its mean
  (``score``), std, and central 95% interval over the splits;
- a label-permutation null: the same fits with the target permuted (``permutations`` times), its
  95th percentile and the p-value ``(1 + #(null >= score)) / (1 + P)``;
- the mean-difference direction (top minus bottom quartile of the target; positives minus
  negatives for a binary target), fitted on each split's training questions and scored on its
  test questions (r^2 of the projection, or its AUROC), averaged over the splits; and the cosine
  between that direction and the probe's direction, both fitted on all questions.

Splits are drawn once over the questions with a value (``make_splits(n, ...)`` with the seed), so
every layer sees the same splits and the same seed gives the same numbers.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import UserError
from . import stats

log = logging.getLogger("hf_introspect")

MIN_QUESTIONS = 5
METHODS = ("ridge", "logistic", "ep")


@dataclass
class LayerScore:
    """One layer's row of the JSON contract."""

    layer: int
    score: float
    score_std: float
    ci_low: float
    ci_high: float
    null_p95: float
    p_value: float
    meandiff_score: float
    cos_probe_meandiff: float


@dataclass
class SweepHeader:
    """What a layer sweep analysed: the first keys of every sweep's JSON (probe, surface)."""

    target: str
    pass_name: str
    position: str
    method: str
    metric: str
    n_questions: int


@dataclass
class ProbeResult(SweepHeader):
    """A sweep's result. ``to_json()`` gives exactly the contract's keys; the rest is for summaries."""

    best_layer: int | None
    layers: list[LayerScore]
    # --- beyond the JSON contract ---
    run: str = ""
    n_masked: int = 0
    n_splits: int = 0
    test_size: float = 0.2
    permutations: int = 0
    seed: int = 0
    chance: float = 0.0            # the metric's no-signal level: 0 (R^2), 0.5 (AUROC), 1/classes (accuracy)
    majority: float = float("nan")  # share of the commonest class (classification): accuracy of always guessing it
    seconds: float = 0.0
    q_values: list[float] = field(default_factory=list)   # Benjamini-Hochberg over layers
    best_p_corrected: float = float("nan")  # the best layer's p against the max over layers of each null copy

    def to_json(self) -> dict:
        from .serialize import jsonable

        # the contract's keys, then one addition readers may ignore: the best layer's p-value
        # corrected for having picked the best of all layers (stats.max_null_p)
        return {"target": self.target, "pass": self.pass_name, "position": self.position, "method": self.method,
                "metric": self.metric, "n_questions": self.n_questions, "best_layer": self.best_layer,
                "layers": [jsonable(row) for row in self.layers],
                "best_p_corrected": jsonable(self.best_p_corrected)}

    def layer(self, index: int) -> LayerScore:
        return next(row for row in self.layers if row.layer == index)

    @property
    def best(self) -> LayerScore | None:
        return None if self.best_layer is None else self.layer(self.best_layer)


def _meandiff_split_scores(X: np.ndarray, y: np.ndarray, kind: str, splits) -> float:
    """Mean over splits of the test score of the training questions' mean-diff direction (NaN for classes).

    All splits at once: each split's direction is one row of ``W X`` with ``W`` (S, n) holding
    +1/|top| and -1/|bottom| on its training rows (as :func:`~.directions.meandiff_direction`), and
    the test projections are one product ``X D^T`` (n, S).
    """
    from .directions import correlation_r2, quantile_masks, unit_rows

    if kind == "multiclass":
        return float("nan")
    W = np.zeros((len(splits), len(y)))  # (S, n)
    for s, (train, _) in enumerate(splits):
        try:
            # a binary target splits positives vs negatives inside quantile_masks
            top, bottom = quantile_masks(y[train], 0.25)
        except UserError:  # a training split with one class, or whose quartiles coincide: no direction there
            W[s] = np.nan
            continue
        W[s, train] = top / top.sum() - bottom / bottom.sum()
    X64 = np.asarray(X, dtype=np.float64)
    D = unit_rows(W @ X64)  # (S, d) one unit direction per split (NaN rows: none)
    P = X64 @ D.T  # (n, S) every question projected on every split's direction
    scores = np.full(len(splits), np.nan)
    for s, (_, test) in enumerate(splits):
        if not np.isfinite(D[s]).all():
            continue
        proj = P[test, s]  # (t,) the test questions on this split's direction
        scores[s] = stats.auroc(proj, y[test]) if kind == "binary" else correlation_r2(proj, y[test])
    return float(np.nanmean(scores)) if np.isfinite(scores).any() else float("nan")


def _direction_cosine(X: np.ndarray, y: np.ndarray, kind: str, method: str) -> float:
    """Cosine between the probe's direction and the mean-diff direction, both on all questions."""
    from .directions import cosine, meandiff_direction
    from .linear_probe import fit_probe

    if kind == "multiclass":
        return float("nan")
    try:
        probe_dir = fit_probe(X, y, method=method, task=kind).direction  # Target.kind names the engine's task
        md = meandiff_direction(X, y)
    except UserError:
        return float("nan")
    return cosine(probe_dir, md)


def constant_rows(X: np.ndarray) -> bool:
    """True when every question has the same activation vector (nothing for a probe to read)."""
    return bool(np.all(X == X[:1]))


def check_sweep_inputs(n: int, n_splits: int, test_size: float, method: str, target_name: str) -> None:
    if method not in METHODS:
        raise UserError(f"--method {method} is unknown; choose {', '.join(METHODS)}")
    if not 0 < test_size < 1:
        raise UserError(f"--test_size must be between 0 and 1 (got {test_size})")
    if n_splits < 1:
        raise UserError(f"--splits must be >= 1 (got {n_splits})")
    if n < MIN_QUESTIONS or math.ceil(n * test_size) < 2 or n - math.ceil(n * test_size) < 3:
        raise UserError(f"target {target_name!r} has a value for {n} question(s); a probe with held-out "
                        f"questions needs at least {MIN_QUESTIONS} (and >= 2 test questions): use a larger run")


def probe_sweep(data, pass_name: str, target: str, *, position="answer", layers=None, n_splits: int = 100,
                test_size: float = 0.2, method: str = "ridge", permutations: int = 100, seed: int = 0,
                rows=None, device=None, selection: str = "gcv") -> ProbeResult:
    """Probe ``target`` from ``pass_name``'s activations at ``position``, layer by layer.

    Args:
        data: a :class:`~hf_introspect.analysis.data.RunData`.
        layers: stored layer indices (default: all stored).
        rows: restrict to these rows of the split (e.g. questions shared with another run), in order.
        permutations: label permutations per layer for the null (0: no null; p-values NaN).
        selection: ridge's penalty criterion inside each training split, ``"gcv"`` or ``"loo"``.

    Example:
        >>> from hf_introspect.analysis.data import open_run_data          # doctest: +SKIP
        >>> res = probe_sweep(open_run_data("runs/trivia500"), "mcq", "entropy")   # doctest: +SKIP
        >>> res.best_layer, round(res.best.score, 3)                       # doctest: +SKIP
        (21, 0.412)
    """
    from .split_fits import make_splits, score_splits

    t0 = time.perf_counter()
    tgt = data.target(pass_name, target)
    keep = np.arange(data.n_questions(pass_name)) if rows is None else np.asarray(rows, dtype=np.int64)
    valid = keep[tgt.valid[keep]]                                   # rows of the split with a value
    y = tgt.values[valid]
    tgt_view = type(tgt)(tgt.name, tgt.kind, y, np.ones(len(y), dtype=bool), tgt.classes)
    check_sweep_inputs(len(y), n_splits, test_size, method, tgt.name)
    tgt_view.require_variation()
    layers = data.check_layers(pass_name, list(layers) if layers is not None else data.layers(pass_name))
    data.position_rows(pass_name, position)                         # a missing position fails before any fit
    splits = make_splits(len(y), n_splits=n_splits, test_size=test_size, seed=seed)
    task = tgt.kind
    rows_out, nulls = [], []
    for layer in layers:
        X = data.matrix(pass_name, layer, position, rows=valid)     # (n, hidden) float32
        if constant_rows(X):
            # e.g. layer 0 at the readout token: the same token embedding for every question. No
            # probe can use it; its score is undefined, not a fit of a zero matrix.
            rows_out.append(LayerScore(int(layer), *([float("nan")] * 8)))
            log.info("layer %d: the activations at %s are the same for every question; score left undefined",
                     layer, position)
            continue
        fit = {"selection": selection} if method == "ridge" else {}
        res = score_splits(X, y, splits, method=method, task=task, permutations=permutations, seed=seed,
                           device=device, **fit)
        scores = np.asarray(res.scores, dtype=np.float64)
        score = float(np.nanmean(scores))
        lo, hi = stats.split_interval(scores)
        null = np.asarray(res.null, dtype=np.float64)
        nulls.append(null)  # (P,) copy j is the same permuted target in every layer (same seed)
        rows_out.append(LayerScore(
            layer=int(layer), score=score, score_std=float(np.nanstd(scores)), ci_low=lo, ci_high=hi,
            null_p95=stats.null_quantile(null), p_value=stats.permutation_p(score, null),
            meandiff_score=_meandiff_split_scores(X, y, tgt.kind, splits),
            cos_probe_meandiff=_direction_cosine(X, y, tgt.kind, method)))
        log.debug("probe %s layer %d: %s %.4f", tgt.name, layer, res.metric, score)
    finite = [r for r in rows_out if np.isfinite(r.score)]
    best = max(finite, key=lambda r: r.score).layer if finite else None
    majority = float(np.bincount(y.astype(np.int64)).max() / len(y)) if tgt.kind != "regression" else float("nan")
    if tgt.kind == "multiclass":
        chance = 1.0 / len(tgt.classes)
    else:
        chance = 0.5 if tgt.kind == "binary" else 0.0
    return ProbeResult(
        target=tgt.name, pass_name=pass_name, position=str(position), method=method, metric=tgt.metric,
        n_questions=int(len(y)), best_layer=best, layers=rows_out, run=str(data.source),
        n_masked=int(len(keep) - len(valid)), n_splits=n_splits, test_size=test_size, permutations=permutations,
        seed=seed, chance=chance, majority=majority, seconds=time.perf_counter() - t0,
        q_values=stats.benjamini_hochberg([r.p_value for r in rows_out]).tolist(),
        best_p_corrected=(stats.max_null_p(max(r.score for r in finite), nulls)
                          if finite and permutations else float("nan")))


def summary(result: ProbeResult) -> str:
    """A readable table of a sweep."""
    head = (f"probe {result.target} from {result.pass_name} @ {result.position} ({result.run}): {result.method}, "
            f"{result.metric} over {result.n_splits} splits (test {result.test_size:g}), {result.n_questions} questions"
            + (f" ({result.n_masked} without a value, masked)" if result.n_masked else "")
            + f", {result.permutations} permutations; chance {result.chance:.3f}"
            + (f" (majority class {result.majority:.3f})" if np.isfinite(result.majority) else "")
            + f"; {result.seconds:.1f} s")
    lines = [head, f"{'layer':>5} {'score':>8} {'std':>7} {'95% over splits':>19} {'null p95':>9} {'p':>7} "
                   f"{'q(BH)':>7} {'meandiff':>9} {'cos':>6}"]
    for row, q in zip(result.layers, result.q_values):
        mark = " *" if row.layer == result.best_layer else ""
        lines.append(f"{row.layer:>5} {row.score:>8.4f} {row.score_std:>7.4f} [{row.ci_low:>8.4f},{row.ci_high:>8.4f}] "
                     f"{row.null_p95:>9.4f} {row.p_value:>7.4f} {q:>7.4f} {row.meandiff_score:>9.4f} "
                     f"{row.cos_probe_meandiff:>6.3f}{mark}")
    if result.best is not None:
        b = result.best
        lines.append(f"best layer {b.layer}: {result.metric} {b.score:.4f} (95% over splits {b.ci_low:.4f}-{b.ci_high:.4f}; "
                     f"null p95 {b.null_p95:.4f}, p {b.p_value:.4f}; p {result.best_p_corrected:.4f} for the best of "
                     f"{sum(np.isfinite(r.score) for r in result.layers)} layers, against the max over layers of each "
                     f"permuted copy)")
    return "\n".join(lines)
