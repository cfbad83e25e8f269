"""Transfer over the layers of one run: what ``hf-introspect transfer`` computes.

For each chosen layer (every pass's matrix of that layer in memory, nothing more), on the same
random splits of the questions every pass has:

- direct: the reference probe trained on the ``train`` pass's activations of the training
  questions, its test R^2 on that pass's held-out questions;
- transfer: the same probe on each ``test`` pass's activations of the held-out questions,
  standardised with the training pass's statistics (``centered``) or the test pass's own
  (``separate``, over the same training questions), and the shuffled-alignment control;
- the 2x2 self/other cross-prediction (when the run has self_conf and other_conf): see
  :func:`~hf_introspect.analysis.transfer.cross_layer`.

Transfer ratio per test pass and standardisation = best transferred R^2 / best direct R^2.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from ..errors import UserError
from . import transfer as T

log = logging.getLogger("hf_introspect")
CROSS = (("self_conf", "self_confidence"), ("other_conf", "other_confidence"))


@dataclass
class TransferResult:
    run: str
    model: str
    train: str
    tests: list[str]
    target: str
    position: str
    n_questions: int
    n_splits: int
    test_size: float
    seed: int
    layers: list = field(default_factory=list)   # [{layer, direct, direct_std, transfer: {test: {...}}}]
    best: dict = field(default_factory=dict)     # {"direct": {layer, r2}, test: {std: {layer, r2, ratio, ...}}}
    cross: dict | None = None
    seconds: float = 0.0
    method: str = "ep"

    def to_json(self) -> dict:
        from .serialize import jsonable

        return jsonable(self)


def _common_rows(data, passes: list[str], values_pass: str, target: str, question_ids=None):
    """Question ids every pass holds with a target value; the rows of each pass, aligned; the target."""
    from .data import align

    tgt = data.target(values_pass, target)
    if tgt.kind != "regression":
        raise UserError(f"transfer needs a numeric target (got {tgt.name!r}, {tgt.kind}); e.g. mcq.entropy")
    ids = set(data.question_ids(values_pass)[tgt.valid])
    for p in passes:
        ids &= set(data.question_ids(p))
    if question_ids is not None:
        ids &= set(np.asarray(question_ids).astype(str))
    order = np.array(sorted(ids), dtype=str)
    rows = {p: align(order, data.question_ids(p))[1] for p in dict.fromkeys(passes + [values_pass])}
    return order, rows, tgt.values[rows[values_pass]].astype(np.float64)


def _stats(values) -> tuple[float, float]:
    v = np.asarray(values, np.float64)
    return float(np.mean(v)), float(np.std(v))


def transfer_sweep(data, train: str = "mcq", tests=("self_conf", "other_conf"), target: str = "mcq.entropy", *,
                   position="answer", layers=None, n_splits: int = 10, test_size: float = 0.2, seed: int = 0,
                   cross: bool = True, question_ids=None, device=None) -> TransferResult:
    """Direct vs transferred R^2 per layer, transfer ratios, and the 2x2 cross-prediction.

    Example:
        >>> from hf_introspect.analysis.data import open_run_data                  # doctest: +SKIP
        >>> res = transfer_sweep(open_run_data("runs/trivia500"))                 # doctest: +SKIP
        >>> res.best["self_conf"]["separate"]["ratio"]                            # doctest: +SKIP
    """
    from .split_fits import make_splits

    t0 = time.perf_counter()
    tests = [t for t in dict.fromkeys(tests) if t]
    if not tests:
        raise UserError("--test is empty; e.g. --test self_conf,other_conf")
    if train in tests:
        raise UserError(f"--test {train} is the training pass; transfer goes to other passes")
    if not 0 < test_size < 1 or n_splits < 1:
        raise UserError(f"--splits must be >= 1 and --test_size in (0, 1) (got {n_splits}, {test_size})")
    for p in [train] + tests:
        data.split(p)
    do_cross = cross and all(p in data.passes for p, _ in CROSS)
    passes = [train] + tests + ([p for p, _ in CROSS] if do_cross else [])
    order, rows, y = _common_rows(data, passes, train, target, question_ids)
    n = len(order)
    if n < 10 or round(n * test_size) < 2:
        raise UserError(f"only {n} question(s) are in every pass ({', '.join(dict.fromkeys(passes))}) with a "
                        f"value of {target!r}; transfer needs at least 10: use a larger run")
    if np.all(y == y[0]):
        raise UserError(f"target {target!r} is constant over the {n} questions; pick a varying target")
    stored = set.intersection(*(set(data.layers(p)) for p in passes))
    layers = sorted(stored) if layers is None else [int(x) for x in layers]
    for p in passes:
        data.check_layers(p, layers)
        data.position_rows(p, position)
    splits = make_splits(n, n_splits=n_splits, test_size=test_size, seed=seed)
    cross_y = None
    if do_cross:
        cross_y = [data.target(p, col).values[rows[p]].astype(np.float64) for p, col in CROSS]
    out = TransferResult(str(data.source), data.model_name, train, tests, target, str(position), n, n_splits,
                         test_size, seed)
    cross_rows = []
    for layer in layers:
        mats = {p: data.matrix(p, layer, position, rows=rows[p]) for p in dict.fromkeys(passes)}
        res = T.transfer_layer(mats[train], {t: mats[t] for t in tests}, y, splits, seed=seed + layer)
        row = {"layer": layer}
        row["direct"], row["direct_std"] = _stats(res["direct"])
        row["transfer"] = {}
        for t in tests:
            cell = {}
            for std in T.STANDARDISATIONS:
                cell[std], cell[f"{std}_std"] = _stats(res[f"{t}.{std}"])
                cell[f"shuffled_{std}"] = _stats(res[f"{t}.shuffled.{std}"])[0]
            row["transfer"][t] = cell
        out.layers.append(row)
        if do_cross:
            c, r = T.cross_layer(mats["self_conf"], mats["other_conf"], cross_y[0], cross_y[1], splits,
                                 return_r=True)
            with warnings.catch_warnings():  # constant activations (layer 0): r is NaN in every split
                warnings.simplefilter("ignore", RuntimeWarning)
                r_mean = np.nanmean(r, -1)
            cross_rows.append({"layer": layer, "r2": c.mean(-1), "r2_std": c.std(-1), "r": r_mean})
        log.info("transfer: layer %d done (%d of %d, %.0f s)", layer, len(out.layers), len(layers),
                 time.perf_counter() - t0)
    direct = [r["direct"] for r in out.layers]
    i = int(np.nanargmax(direct))
    out.best = {"direct": {"layer": layers[i], "r2": direct[i]}}
    for t in tests:
        out.best[t] = {}
        for std in T.STANDARDISATIONS:
            r = T.transfer_ratio(direct, [row["transfer"][t][std] for row in out.layers])
            shuffled = T.transfer_ratio(direct, [row["transfer"][t][f"shuffled_{std}"] for row in out.layers])
            out.best[t][std] = {"layer": layers[r["best_transfer_index"]], "r2": r["best_transfer"],
                                "ratio": r["ratio"], "shuffled_ratio": shuffled["ratio"]}
    if do_cross:
        diag = [np.trace(c["r2"]) for c in cross_rows]
        b = int(np.nanargmax(diag))
        out.cross = {"passes": [p for p, _ in CROSS], "targets": [col for _, col in CROSS],
                     "standardisation": "separate", "layers": cross_rows, "best_layer": layers[b],
                     "at_best_layer": cross_rows[b]["r2"], "r_at_best_layer": cross_rows[b]["r"]}
    out.seconds = time.perf_counter() - t0
    return out


def summary(res: TransferResult) -> str:
    lines = [f"transfer of a {res.train} probe of {res.target} ({res.run} @ {res.position}): {res.n_questions} "
             f"questions, {res.n_splits} splits (test {res.test_size:g}), reference probe ({res.seconds:.1f} s)",
             " layer  direct  " + "  ".join(f"{t[:10]:>10}:cent  sep   shuf" for t in res.tests)]
    for r in res.layers:
        cells = "  ".join(f"{r['transfer'][t]['centered']:16.3f} {r['transfer'][t]['separate']:5.3f} "
                          f"{r['transfer'][t]['shuffled_separate']:6.3f}" for t in res.tests)
        lines.append(f" {r['layer']:5d}  {r['direct']:6.3f}  {cells}")
    d = res.best["direct"]
    lines.append(f"best direct R^2 {d['r2']:.3f} at layer {d['layer']}")
    for t in res.tests:
        for std in T.STANDARDISATIONS:
            b = res.best[t][std]
            lines.append(f"{t} ({std}): best transfer R^2 {b['r2']:.3f} at layer {b['layer']}, ratio "
                         f"{b['ratio']:.3f} (shuffled control {b['shuffled_ratio']:.3f})")
    if res.cross:
        c, names = res.cross["at_best_layer"], res.cross["passes"]
        lines.append(f"cross-prediction at layer {res.cross['best_layer']} (R^2 against the activations' own target; "
                     f"rows: probe trained on, columns: activations)")
        r = res.cross["r_at_best_layer"]
        lines.append(f" {'':>12}" + "".join(f"{n:>12}" for n in names) + "   Pearson r:" +
                     "".join(f"{n:>12}" for n in names))
        for i, n in enumerate(names):
            lines.append(f" {n:>12}" + "".join(f"{c[i][j]:12.3f}" for j in range(2)) + " " * 11 +
                         "".join(f"{r[i][j]:12.3f}" for j in range(2)))
    return "\n".join(lines)
