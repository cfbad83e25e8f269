"""Two runs joined on ``question_id``: accuracy with McNemar, agreement and flips, paired shifts,
calibration side by side, per-layer cosine similarity at the answer position (:func:`build_comparison`).

Example:
    >>> from hf_introspect.analysis.inspect.run_view import open_run
    >>> a, b = open_run("full_run_base"), open_run("full_run_finetuned")   # doctest: +SKIP
    >>> build_comparison(a, b)["mcq"]["mcnemar"]["p_value"]              # doctest: +SKIP
    1.0
"""

from __future__ import annotations

import math

import numpy as np

from . import metrics as M
from ...errors import UserError
from ...passes import ANSWER_LABELS, PASSES
from .run_view import PassData, Run, answer_activations
from .summary import Joined, calibration, example, header, join_passes
from .text import format_layers, truncate


def _paired_rows(a: PassData, b: PassData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Question ids in both passes (a's order) and their rows in each."""
    qa = a.cols["question_id"].tolist()
    rows_b = [b.row_of(q) for q in qa]
    keep = np.array([r is not None for r in rows_b], dtype=bool)
    ra = np.flatnonzero(keep)
    rb = np.array([r for r in rows_b if r is not None], dtype=np.int64)
    return np.asarray(qa, dtype=object)[keep], ra, rb


def layer_similarity(a: PassData, b: PassData, ra: np.ndarray, rb: np.ndarray, layers: list[int]) -> dict:
    """Mean (and quartiles of) cosine similarity of the two runs' activations at the answer
    position, per layer, over the paired questions whose answer position both runs stored.

    >>> from hf_introspect.analysis.inspect.run_view import open_run
    >>> a, b = open_run("base").passes["mcq"], open_run("lora").passes["mcq"]   # doctest: +SKIP
    >>> rows = np.arange(len(a))                                               # doctest: +SKIP
    >>> layer_similarity(a, b, rows, rows, [0, 15])["mean"]                    # doctest: +SKIP
    [1.0, 0.97]
    """
    ok = a.answer_stored[ra] & b.answer_stored[rb]
    ra, rb = ra[ok], rb[ok]
    out = {"n": int(len(ra)), "layers": list(layers), "mean": [], "median": [], "q25": [], "q75": []}
    if not len(ra):
        return out
    for layer in layers:
        s = M.summarise_similarity(M.row_cosine(answer_activations(a, layer, ra), answer_activations(b, layer, rb)))
        for key in ("mean", "median", "q25", "q75"):
            out[key].append(s[key])
    return out


def _shift(a: np.ndarray, b: np.ndarray) -> dict:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    return {"a": float(np.mean(a)) if len(a) else math.nan, "b": float(np.mean(b)) if len(b) else math.nan,
            "mean_diff": float(np.mean(b - a)) if len(a) else math.nan, "wilcoxon_p": M.wilcoxon_p(b - a),
            "n": int(len(a))}


def _question_brief(p: PassData, row: int, chars: int = 80) -> str:
    return truncate(p.ds.select_columns(["question_text"])[int(row)]["question_text"], chars)


def build_comparison(a: Run, b: Run, show_examples: int = 0) -> dict:
    """Two runs joined on question_id: accuracy + McNemar, agreement, flips, shifts, calibration
    side by side, and the per-layer cosine similarity at the answer position.

    >>> from hf_introspect.analysis.inspect.run_view import open_run
    >>> c = build_comparison(open_run("base"), open_run("lora"), show_examples=2)   # doctest: +SKIP
    >>> c["mcq"]["flips"]["lost"], c["mcq"]["flips"]["gained"]                     # doctest: +SKIP
    (6, 6)
    """
    shared_passes = [name for name in PASSES if name in a.passes and name in b.passes]
    if not shared_passes:
        raise UserError(f"the runs share no pass ({', '.join(a.passes)} vs {', '.join(b.passes)})")
    pairs = {name: _paired_rows(a.passes[name], b.passes[name]) for name in shared_passes}
    focus = a.focus if a.focus in shared_passes else shared_passes[0]
    if not len(pairs[focus][0]):
        raise UserError(f"the runs share no questions: {a.location} and {b.location} have disjoint question_id "
                        f"sets in the {focus} pass (were they collected from the same questions and --seed?)")
    pa_, pb_ = a.passes[focus], b.passes[focus]
    if pa_.hidden and pb_.hidden and pa_.hidden != pb_.hidden:
        raise UserError(f"the runs' hidden sizes differ ({pa_.hidden} vs {pb_.hidden}): they are not the same base "
                        "model, so their activations cannot be compared")
    layers = sorted(set(pa_.layers) & set(pb_.layers))
    if not layers:
        raise UserError(f"the runs share no stored layer ({format_layers(pa_.layers) or 'none'} vs "
                        f"{format_layers(pb_.layers) or 'none'}); collect both with the same --layers")
    names = _run_names(a, b)
    out: dict = {"kind": "comparison", "names": names, "runs": [header(a), header(b)], "focus": focus,
                 "shared_questions": {name: int(len(q)) for name, (q, _, _) in pairs.items()},
                 "only_in_a": {name: len(a.passes[name]) - int(len(pairs[name][0])) for name in shared_passes},
                 "only_in_b": {name: len(b.passes[name]) - int(len(pairs[name][0])) for name in shared_passes}}
    if "mcq" in shared_passes:
        qids, ra, rb = pairs["mcq"]
        A, B = a.passes["mcq"], b.passes["mcq"]
        ca, cb = A.cols["is_correct"][ra].astype(bool), B.cols["is_correct"][rb].astype(bool)
        n = len(qids)
        acc = {}
        for key, c in (("a", ca), ("b", cb)):
            acc[key] = {"correct": int(c.sum()), "accuracy": float(c.mean()), "ci95": list(M.wilson_interval(int(c.sum()), n))}
        same = A.cols["parsed_answer"][ra] == B.cols["parsed_answer"][rb]
        flips = np.flatnonzero(ca != cb)
        flip_list = []
        for k in flips[:max(0, show_examples) or 10]:
            flip_list.append({"question_id": str(qids[k]), "question": _question_brief(A, ra[k]),
                              "correct": str(A.cols["correct_answer_letter"][ra[k]]),
                              "a_answer": str(A.cols["parsed_answer"][ra[k]]), "b_answer": str(B.cols["parsed_answer"][rb[k]]),
                              "a_p_correct": _p_correct(A, ra[k]), "b_p_correct": _p_correct(B, rb[k]),
                              "direction": "gained" if cb[k] else "lost"})
        out["mcq"] = {
            "n": n, "a": acc["a"], "b": acc["b"], "accuracy_diff": acc["b"]["accuracy"] - acc["a"]["accuracy"],
            "mcnemar": M.mcnemar(int((ca & ~cb).sum()), int((~ca & cb).sum())),
            "agreement": float(same.mean()), "answers_changed": int((~same).sum()),
            "flips": {"lost": int((ca & ~cb).sum()), "gained": int((~ca & cb).sum()), "listed": flip_list},
        }
    shifts = {}
    for name, col in (("mcq", "entropy"), ("mcq", "logit_margin"), ("self_conf", "self_confidence"),
                      ("other_conf", "other_confidence"), ("self_conf", "entropy"), ("other_conf", "entropy")):
        if name in pairs and col in a.passes[name].cols and col in b.passes[name].cols:
            _, ra, rb = pairs[name]
            key = col if col != "entropy" or name == "mcq" else f"{name}_entropy"
            shifts[key] = _shift(a.passes[name].cols[col][ra], b.passes[name].cols[col][rb])
    out["shifts"] = shifts
    ja, jb = join_passes(a), join_passes(b)
    shared = np.intersect1d(ja.question_id.astype(str), jb.question_id.astype(str))
    out["calibration"] = {"n_shared": int(len(shared)), "a": calibration(_restrict(ja, shared)),
                          "b": calibration(_restrict(jb, shared))}
    sim = {}
    for name in shared_passes:
        _, ra, rb = pairs[name]
        common = sorted(set(a.passes[name].layers) & set(b.passes[name].layers))
        if common and a.passes[name].hidden == b.passes[name].hidden:
            sim[name] = layer_similarity(a.passes[name], b.passes[name], ra, rb, common)
    out["layer_similarity"] = sim
    if show_examples and "mcq" in shared_passes:
        qids, ra, rb = pairs["mcq"]
        order = list(np.flatnonzero(a.passes["mcq"].cols["is_correct"][ra] != b.passes["mcq"].cols["is_correct"][rb]))
        order += [k for k in range(len(qids)) if k not in set(order)]
        out["examples"] = [{"a": example(_refocus(a), int(ra[k])), "b": example(_refocus(b), int(rb[k]))}
                           for k in order[:show_examples]]
    return out


def _refocus(run: Run) -> Run:
    return Run(run.location, run.passes, "mcq", run.config, run.disk_bytes, run.incomplete)


def _p_correct(p: PassData, row: int) -> float:
    return float(p.cols["probs"][row][ANSWER_LABELS.index(str(p.cols["correct_answer_letter"][row]))])


def _restrict(j: Joined, qids: np.ndarray) -> Joined:
    keep = np.isin(j.question_id.astype(str), qids)
    pick = (lambda x: None if x is None else x[keep])
    return Joined(j.question_id[keep], pick(j.correct), pick(j.entropy), pick(j.self_conf), pick(j.other_conf))


def _run_names(a: Run, b: Run) -> list[str]:
    na, nb = a.name, b.name
    if na == nb:
        na, nb = f"{na} (A)", f"{nb} (B)"
    return [na, nb]
