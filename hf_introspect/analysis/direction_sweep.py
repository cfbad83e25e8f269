"""Directions of one run, layer by layer: what ``hf-introspect directions`` computes.

Per pass and layer (one layer of every pass in memory at a time):

- the probe direction (``ep``: the reference scaler -> PCA(100) -> Ridge(1000) weights mapped back;
  ``ridge``: A-probe's ridge with the penalty chosen by leave-one-out) and the mean-difference
  direction (top minus bottom quartile of the target), both fitted on all the questions;
- their held-out score: the r^2 between the target and the projection on a direction fitted on
  the training questions, on the test questions, averaged over ``n_splits`` random splits (the
  same splits for every layer and pass), and the cosine between the two directions;
- for every pair of passes, the cosine of their directions at each layer, and two nulls for it:
  the cosines between directions fitted on targets permuted independently per pass
  (``permutations`` of them), and ("paired") on targets permuted by the same reordering of the
  questions in every pass, which keeps the targets' correlation across passes and only breaks
  their link to the activations; each null's 95th percentile of |cos| and a two-sided p-value;
- self vs other (when both self_conf and other_conf are analysed): the cosine, the Gram-Schmidt
  unique parts (self minus its projection on other, and the reverse; saved as directions
  ``self_unique`` / ``other_unique``) and their residual norm sqrt(1 - cos^2), flagged below 0.1.

Layer x layer cosine matrices of each pass's directions and across passes are computed from the
saved stacks. Every pass uses the same questions: those present in every pass with a target value.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np

from ..errors import UserError
from . import directions as D

log = logging.getLogger("hf_introspect")

OWN_TARGET = {"mcq": "entropy", "self_conf": "self_confidence", "other_conf": "other_confidence"}
METHODS = ("ep", "ridge")
KINDS = ("probe", "meandiff")


def targets_for(passes: list[str], spec: str) -> dict[str, str]:
    """``--target`` -> one target spec per pass: ``own`` (each pass's readout: mcq entropy,
    self_confidence, other_confidence), one spec for every pass, or one per pass, comma-separated.

    Example:
        >>> targets_for(["mcq", "self_conf"], "own")
        {'mcq': 'entropy', 'self_conf': 'self_confidence'}
        >>> targets_for(["self_conf", "other_conf"], "mcq.entropy")
        {'self_conf': 'mcq.entropy', 'other_conf': 'mcq.entropy'}
    """
    parts = [s.strip() for s in str(spec).split(",") if s.strip()]
    if parts == ["own"]:
        unknown = [p for p in passes if p not in OWN_TARGET]
        if unknown:
            raise UserError(f"--target own knows no readout for pass {unknown[0]!r}; name the target")
        return {p: OWN_TARGET[p] for p in passes}
    if len(parts) == 1:
        return {p: parts[0] for p in passes}
    if len(parts) != len(passes):
        raise UserError(f"--target has {len(parts)} specs for {len(passes)} passes ({','.join(passes)}); give one "
                        "spec, one per pass, or 'own'")
    return dict(zip(passes, parts))


@dataclass
class DirectionSweep:
    """Result of :func:`direction_sweep` (``dirs`` is what ``--out`` saves)."""

    run: str
    model: str
    passes: list[str]
    targets: dict
    position: str
    method: str
    n_questions: int
    layers: list[int]
    n_splits: int
    permutations: int
    seed: int
    dirs: D.DirectionSet
    per_pass: dict = field(default_factory=dict)        # pass -> [{layer, probe_score, meandiff_score, cos_probe_meandiff}]
    pairs: dict = field(default_factory=dict)           # "a~b" -> {kind: [{layer, cos, null_p95, p_value}]}
    self_vs_other: list = field(default_factory=list)   # [{layer, cos_probe, cos_meandiff, residual_*, flag_*, ...}]
    seconds: float = 0.0

    def layer_matrix(self, pass_name: str, kind: str, other: str | None = None) -> np.ndarray:
        """Layer x layer cosines of the stored layers (rows: pass_name, columns: other or the same)."""
        A = self.dirs.get(pass_name, kind)[self.layers]
        return D.cosine_matrix(A, None if other is None else self.dirs.get(other, kind)[self.layers])

    def to_json(self) -> dict:
        from .serialize import jsonable

        within = {p: {k: self.layer_matrix(p, k) for k in KINDS} for p in self.passes}
        across = {f"{a}~{b}": {k: self.layer_matrix(a, k, b) for k in KINDS} for a, b in combinations(self.passes, 2)}
        return jsonable({"run": self.run, "model": self.model, "passes": self.passes, "targets": self.targets,
                         "position": self.position, "method": self.method, "n_questions": self.n_questions,
                         "layers": self.layers, "n_splits": self.n_splits, "permutations": self.permutations,
                         "seed": self.seed, "per_pass": self.per_pass, "pairs": self.pairs,
                         "self_vs_other": self.self_vs_other, "layer_cosines": within,
                         "layer_cosines_across": across, "seconds": round(self.seconds, 2)})


def _rows_and_targets(data, passes, targets, question_ids=None):
    """Rows of each pass holding the questions every pass has (with a valid target), aligned."""
    from .data import align

    ids = None
    values = {}
    for p in passes:
        t = data.target(p, targets[p])
        if t.kind == "multiclass":
            raise UserError(f"target {t.name!r} has classes; a direction needs a numeric or binary target")
        qid = data.question_ids(p)
        values[p] = (qid, t)
        have = set(qid[t.valid])
        ids = have if ids is None else ids & have
    if question_ids is not None:
        ids &= set(np.asarray(question_ids).astype(str))
    order = np.array(sorted(ids), dtype=str)
    rows, ys = {}, {}
    for p in passes:
        qid, t = values[p]
        ia, ib = align(order, qid)
        rows[p], ys[p] = ib, t.values[ib].astype(np.float64)
    if len(order) < 8:
        raise UserError(f"only {len(order)} question(s) have a value in every pass ({', '.join(passes)}); "
                        "directions need at least 8: use a larger run")
    for p in passes:
        if np.all(ys[p] == ys[p][0]):
            raise UserError(f"target {targets[p]!r} is constant over the {len(order)} questions of pass {p}; "
                            "a direction needs a varying target, pick another")
    return order, rows, ys


def _fit_kinds(X, Y, method, quantile, device):
    """Directions for every column of Y (real target first, then permutations) -> {kind: (P+1, d)}."""
    md = D.meandiff_directions(X, Y, quantile)
    if method == "ep":
        pr = D.probe_directions(X, Y, device=device)
    else:
        from .linear_probe import ridge_directions

        pr, _ = ridge_directions(X, Y, device=device)  # each permuted copy chooses its own penalty
    return {"probe": pr, "meandiff": md}


def _heldout(X, y, splits, method, quantile, device) -> dict:
    """Mean over splits of the test r^2 of the projection on training-split directions."""
    out = {"probe": [], "meandiff": []}
    for train, test in splits:
        try:
            dirs = _fit_kinds(X[train], y[train, None], method, quantile, device)
        except UserError:  # a training split whose quartiles coincide
            continue
        for kind in KINDS:
            out[kind].append(D.projection_r2(X[test], y[test], dirs[kind][0]))
    return {k: float(np.mean(v)) if v else float("nan") for k, v in out.items()}


def _null_row(layer, real, null) -> dict:
    """Two-sided: signs of directions depend on the targets' conventions (entropy vs confidence)."""
    a = np.abs(null)
    if not np.isfinite(real) or not np.isfinite(a).all():
        return {"layer": layer, "cos": real, "null_p95": float("nan"), "p_value": float("nan")}
    return {"layer": layer, "cos": real, "null_p95": float(np.quantile(a, 0.95)) if a.size else float("nan"),
            "p_value": float((1 + np.count_nonzero(a >= abs(real))) / (1 + a.size)) if a.size else float("nan")}


def direction_sweep(data, passes, targets: dict, *, position="answer", layers=None, method: str = "ep",
                    quantile: float = 0.25, n_splits: int = 5, test_size: float = 0.2, permutations: int = 100,
                    seed: int = 0, question_ids=None, device=None) -> DirectionSweep:
    """Directions of ``targets[pass]`` in each pass's activations at ``position``, layer by layer.

    Example:
        >>> from hf_introspect.analysis.data import open_run_data                 # doctest: +SKIP
        >>> rd = open_run_data("runs/trivia500")                                 # doctest: +SKIP
        >>> sw = direction_sweep(rd, ["self_conf", "other_conf"], targets_for(["self_conf", "other_conf"], "own"))  # doctest: +SKIP
        >>> sw.self_vs_other[20]["cos_probe"]                                    # doctest: +SKIP
    """
    from .split_fits import make_splits

    t0 = time.perf_counter()
    if method not in METHODS:
        raise UserError(f"--method {method} is unknown for directions; choose {', '.join(METHODS)}")
    if permutations < 0 or n_splits < 0:
        raise UserError("--permutations and --splits must be >= 0")
    passes = list(dict.fromkeys(passes))
    for p in passes:
        data.split(p)
    order, rows, ys = _rows_and_targets(data, passes, targets, question_ids)
    stored = sorted(set.intersection(*(set(data.layers(p)) for p in passes)))
    layers = stored if layers is None else [data.check_layers(p, list(layers)) for p in passes][0]
    for p in passes:
        data.position_rows(p, position)  # a position that was not stored fails before any fit
    n = len(order)
    splits = make_splits(n, n_splits=n_splits, test_size=test_size, seed=seed) if n_splits else []
    rng = np.random.default_rng(seed)
    # (n, 1 + P) per pass: the target, then its permutations (independent across passes)
    # (n, 1 + 2P) per pass: the target; P permutations drawn independently per pass; P permutations
    # of the questions shared by every pass (the "paired" null keeps the targets' correlation across
    # passes, e.g. 0.9 between self and other confidence, and only breaks their link to the activations)
    shared = [rng.permutation(n) for _ in range(permutations)]
    Ys = {p: np.column_stack([ys[p]] + [rng.permutation(ys[p]) for _ in range(permutations)]
                             + [ys[p][perm] for perm in shared]) for p in passes}
    num_layers = max(max(data.layers(p)) for p in passes)
    hidden = None
    vectors, scores = {}, {}
    per_pass = {p: [] for p in passes}
    pairs = {f"{a}~{b}": {k: [] for k in KINDS} for a, b in combinations(passes, 2)}
    for layer in layers:
        fitted = {}
        for p in passes:
            X = data.matrix(p, layer, position, rows=rows[p])         # (n, hidden) float32
            if hidden is None:
                hidden = X.shape[1]
                blank = np.full((num_layers + 1, hidden), np.nan, np.float32)
                for q in passes:
                    for k in KINDS:
                        vectors[(q, k)], scores[(q, k)] = blank.copy(), np.full(num_layers + 1, np.nan)
            fitted[p] = _fit_kinds(X, Ys[p], method, quantile, device)   # {kind: (1 + P, hidden)}
            held = _heldout(X, ys[p], splits, method, quantile, device) if splits else {k: np.nan for k in KINDS}
            for k in KINDS:
                vectors[(p, k)][layer] = fitted[p][k][0]
                scores[(p, k)][layer] = held[k]
            per_pass[p].append({"layer": layer, "probe_score": held["probe"], "meandiff_score": held["meandiff"],
                                "cos_probe_meandiff": D.cosine(fitted[p]["probe"][0], fitted[p]["meandiff"][0])})
        for a, b in combinations(passes, 2):
            for k in KINDS:
                real = D.cosine(fitted[a][k][0], fitted[b][k][0])
                null = np.einsum("pd,pd->p", fitted[a][k][1:], fitted[b][k][1:])  # (2P,)
                row = _null_row(layer, real, null[:permutations])
                paired = _null_row(layer, real, null[permutations:])
                row.update(null_p95_paired=paired["null_p95"], p_value_paired=paired["p_value"])
                pairs[f"{a}~{b}"][k].append(row)
        log.info("directions: layer %d done (%d of %d, %.0f s)", layer, layers.index(layer) + 1, len(layers),
                 time.perf_counter() - t0)
    dirs = D.DirectionSet(vectors, scores, {
        "run": str(data.source), "model": data.model_name, "targets": targets, "position": str(position),
        "probe_method": method, "quantile": quantile, "n_questions": n, "n_splits": n_splits, "seed": seed,
        "score": "held-out r^2 of the projection (mean over splits); unique parts: residual norm"})
    sweep = DirectionSweep(str(data.source), data.model_name, passes, targets, str(position), method, n, list(layers),
                           n_splits, permutations, seed, dirs, per_pass, pairs)
    if "self_conf" in passes and "other_conf" in passes:
        sweep.self_vs_other = _self_vs_other(sweep, num_layers, hidden)
    sweep.seconds = time.perf_counter() - t0
    return sweep


def _self_vs_other(sweep: DirectionSweep, num_layers: int, hidden: int) -> list[dict]:
    """Per layer: cosines, unique parts (added to sweep.dirs) and residual norms, with the null."""
    pair = sweep.pairs["self_conf~other_conf"]
    rows = []
    for k in KINDS:
        for name in ("self_unique", "other_unique"):
            sweep.dirs.vectors[(name, k)] = np.full((num_layers + 1, hidden), np.nan, np.float32)
            sweep.dirs.scores[(name, k)] = np.full(num_layers + 1, np.nan)
    for i, layer in enumerate(sweep.layers):
        row = {"layer": layer}
        for k in KINDS:
            s, o = sweep.dirs.get("self_conf", k)[layer], sweep.dirs.get("other_conf", k)[layer]
            if np.isnan(s).any() or np.isnan(o).any():  # no direction at this layer (constant activations)
                u_self = u_other = np.full(hidden, np.nan)
                res = float("nan")
            else:
                u_self, res = D.unique_part(s, o)
                u_other, _ = D.unique_part(o, s)
            for name, u in (("self_unique", u_self), ("other_unique", u_other)):
                sweep.dirs.vectors[(name, k)][layer] = u
                sweep.dirs.scores[(name, k)][layer] = res
            row.update({f"cos_{k}": pair[k][i]["cos"], f"null_p95_{k}": pair[k][i]["null_p95"],
                        f"p_{k}": pair[k][i]["p_value"], f"null_p95_paired_{k}": pair[k][i]["null_p95_paired"],
                        f"p_paired_{k}": pair[k][i]["p_value_paired"], f"residual_{k}": res,
                        f"flag_{k}": bool(res < D.RESIDUAL_FLAG)})  # NaN compares False: not flagged
        rows.append(row)
    return rows


def compare_runs(a: DirectionSweep, b: DirectionSweep) -> dict:
    """Per (pass, kind), the per-layer cosine between two runs' directions (e.g. base vs finetuned)."""
    out = {}
    for p in a.passes:
        out[p] = {k: [{"layer": layer, "cos": D.cosine(a.dirs.get(p, k)[layer], b.dirs.get(p, k)[layer])}
                      for layer in a.layers] for k in KINDS}
    return out


def summary(sweep: DirectionSweep) -> str:
    """A readable account of a sweep."""
    lines = [f"directions from {sweep.run} @ {sweep.position}: {sweep.n_questions} questions, probe {sweep.method}, "
             f"scores = held-out r^2 of the projection over {sweep.n_splits} splits, null: {sweep.permutations} "
             f"permutations ({sweep.seconds:.1f} s)"]
    for p in sweep.passes:
        lines.append(f"\n{p} (target {sweep.targets[p]})\n layer  probe_r2  meandiff_r2  cos(probe,md)")
        for r in sweep.per_pass[p]:
            lines.append(f" {r['layer']:5d}  {r['probe_score']:8.3f}  {r['meandiff_score']:11.3f}  "
                         f"{r['cos_probe_meandiff']:13.3f}")
    for name, by_kind in sweep.pairs.items():
        if name == "self_conf~other_conf":
            continue
        lines.append(f"\ncosine {name.replace('~', ' vs ')} (|null| p95 in brackets)\n layer  probe            meandiff")
        for rp, rm in zip(by_kind["probe"], by_kind["meandiff"]):
            lines.append(f" {rp['layer']:5d}  {rp['cos']:6.3f} [{rp['null_p95']:.2f}]  "
                         f"{rm['cos']:6.3f} [{rm['null_p95']:.2f}]")
    if sweep.self_vs_other:
        lines.append("\nself vs other confidence: cosine [|null| p95: independent / paired permutations], residual "
                     f"norm of the unique parts (* below {D.RESIDUAL_FLAG})\n"
                     " layer  cos_probe             cos_meandiff          resid_probe  resid_md")
        for r in sweep.self_vs_other:
            lines.append(f" {r['layer']:5d}  {r['cos_probe']:6.3f} [{r['null_p95_probe']:.2f}/"
                         f"{r['null_p95_paired_probe']:.2f}]  {r['cos_meandiff']:6.3f} [{r['null_p95_meandiff']:.2f}/"
                         f"{r['null_p95_paired_meandiff']:.2f}]  "
                         f"{r['residual_probe']:10.3f}{'*' if r['flag_probe'] else ' '}  "
                         f"{r['residual_meandiff']:7.3f}{'*' if r['flag_meandiff'] else ''}")
    return "\n".join(lines)
