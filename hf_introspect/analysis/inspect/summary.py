"""The one-run inspect report as a plain dict: header, MCQ behaviour, confidence and calibration,
activation norms, examples (:func:`build_report`; text: :mod:`.render`, two runs: :mod:`.compare`).

Example:
    >>> run = open_run("test_run_base/mcq")                     # doctest: +SKIP
    >>> report = build_report(run, show_examples=3)             # doctest: +SKIP
    >>> report["behaviour"]["accuracy"], report["calibration"]["auroc_self_confidence"]   # doctest: +SKIP
    (0.1, 0.778)
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np

from . import metrics as M
from ...passes import ANSWER_LABELS, CONFIDENCE_LABELS
from ...schema import registered
from .run_view import SCORE_COLUMN, PassData, Run, activation_shapes, answer_activations, open_run  # noqa: F401 (open_run: the entry point)
from .text import format_layers, truncate

# The columns one example shows beyond the metadata, checked against the column registry.
_EXAMPLE = registered("question_id", "question_text", "options", "correct_answer_letter", "prompt_text",
                      "output_text", "activation_positions")


def _first(p: PassData, col: str):
    v = p.cols.get(col)
    return v[0].item() if v is not None and len(v) and hasattr(v[0], "item") else (v[0] if v is not None and len(v) else None)


def header(run: Run) -> dict:
    """Model, adapter, questions, layers/positions stored, dtype, size, overflow counts.

    >>> header(open_run("test_run_base"))["layers_stored"][:3]           # doctest: +SKIP
    [0, 1, 2]
    """
    cfg = run.config or {}
    ccfg = cfg.get("config", {})
    any_pass = run.passes[run.focus]
    sources = Counter()
    for p in run.passes.values():
        if "question_source" in p.cols:
            sources = Counter(p.cols["question_source"].tolist())
            break
    layers = any_pass.layers
    num_layers = cfg.get("num_layers")
    pos_info = {}
    for name, p in run.passes.items():
        seq = p.cols.get("seq_len")
        pos_info[name] = {"mean_positions": float(p.n_positions.mean()) if len(p) else math.nan,
                          "mean_seq_len": float(seq.mean()) if seq is not None and len(seq) else math.nan,
                          "answer_position_stored": int(p.answer_stored.sum())}
    return {
        "location": run.location,
        "model_name": cfg.get("model_name") or _first(any_pass, "model_name"),
        "checkpoint_id": cfg.get("checkpoint_id") or _first(any_pass, "checkpoint_id"),
        "model_type": ccfg.get("model_type"),
        "lora_checkpoint": ccfg.get("lora_checkpoint"),
        "run_id": cfg.get("run_id"),
        "created": cfg.get("created"),
        "hf_introspect_version": cfg.get("versions", {}).get("hf_introspect"),
        "question_sources": dict(sources),
        "questions_per_pass": {name: len(p) for name, p in run.passes.items()},
        "incomplete_passes": list(run.incomplete),
        "num_layers": num_layers,
        "hidden_size": any_pass.hidden or cfg.get("hidden_size"),
        "layers_stored": layers,
        "positions": ccfg.get("positions"),
        "positions_stored": pos_info,
        "act_dtype": any_pass.act_dtype,
        "temperature": _first(any_pass, "temperature"),
        "max_new_tokens": _first(any_pass, "max_new_tokens"),
        "disk_bytes": run.disk_bytes,
        "disk_bytes_per_pass": {name: p.disk_bytes for name, p in run.passes.items()},
        "fp16_overflow": {name: {"values": int(p.cols["fp16_overflow_count"].sum()),
                                 "rows": int((p.cols["fp16_overflow_count"] > 0).sum())}
                          for name, p in run.passes.items() if "fp16_overflow_count" in p.cols},
    }


def parse_stats(p: PassData) -> dict:
    """How the parsed answer was obtained: from the output text (and whether it disagreed with the
    argmax of the restricted distribution) or, when the text named no label, from the argmax.

    >>> from datasets import Dataset
    >>> from hf_introspect.analysis.inspect.run_view import pass_data
    >>> columns = {"question_id": ["q1", "q2", "q3"], "parsed_answer": ["A", "B", "C"],
    ...            "parse_source": ["output_text", "output_text", "argmax"], "probs": [[0.7, 0.1, 0.1, 0.1]] * 3}
    >>> s = parse_stats(pass_data("mcq", Dataset.from_dict(columns)))   # q2's text says B, its argmax is A
    >>> s["from_output_text"], s["output_disagrees_with_argmax"], s["no_label_in_output"]
    (2, 1, 1)
    """
    n = len(p)
    src = p.cols.get("parse_source")
    if src is None or not n:
        return {"n": n}
    argmax = np.array(p.labels)[np.argmax(p.cols["probs"], axis=1)]
    from_text = src == "output_text"
    disagree = from_text & (p.cols["parsed_answer"] != argmax)
    return {"n": n, "from_output_text": int(from_text.sum()), "no_label_in_output": int((src == "argmax").sum()),
            "output_disagrees_with_argmax": int(disagree.sum()),
            "output_disagrees_rate": float(disagree.sum() / n)}


def behaviour(p: PassData) -> dict:
    """MCQ pass: accuracy (Wilson 95%), answer/correct letter distributions, entropy and margin by
    correctness, parse statistics.

    >>> from datasets import Dataset
    >>> from hf_introspect.analysis.inspect.run_view import pass_data
    >>> p = pass_data("mcq", Dataset.from_dict({"question_id": ["q1", "q2"], "is_correct": [True, False],
    ...     "probs": [[0.7, 0.1, 0.1, 0.1], [0.4, 0.3, 0.2, 0.1]], "correct_answer_letter": ["A", "B"],
    ...     "parsed_answer": ["A", "B"], "parse_source": ["output_text", "output_text"], "entropy": [0.9, 1.3],
    ...     "logit_margin": [1.9, -0.3]}))
    >>> b = behaviour(p)
    >>> b["accuracy"], b["parsed_answers"]["A"], round(b["mean_p_correct"], 2)
    (0.5, 1, 0.5)
    """
    c = p.cols
    n = len(p)
    correct = c["is_correct"].astype(bool)
    k = int(correct.sum())
    lo, hi = M.wilson_interval(k, n)
    argmax = np.array(ANSWER_LABELS)[np.argmax(c["probs"], axis=1)] if n else np.array([])
    argmax_correct = argmax == c["correct_answer_letter"]
    split = {}
    for col in ("entropy", "logit_margin"):
        split[col] = {"all": M.describe(c[col]), "correct": M.describe(c[col][correct]),
                      "incorrect": M.describe(c[col][~correct])}
    top = c["probs"].max(axis=1) if n else np.array([])
    return {
        "n": n, "correct": k, "accuracy": k / n if n else math.nan, "accuracy_ci95": [lo, hi], "chance": 0.25,
        "argmax_accuracy": float(argmax_correct.mean()) if n else math.nan,
        "mean_p_correct": float(np.take_along_axis(
            c["probs"], np.array([ANSWER_LABELS.index(x) for x in c["correct_answer_letter"]])[:, None], 1).mean())
        if n else math.nan,
        "mean_top_probability": float(top.mean()) if n else math.nan,
        "parsed_answers": M.label_counts(c["parsed_answer"].tolist(), ANSWER_LABELS),
        "argmax_answers": M.label_counts(argmax.tolist(), ANSWER_LABELS),
        "correct_letters": M.label_counts(c["correct_answer_letter"].tolist(), ANSWER_LABELS),
        "entropy": split["entropy"], "logit_margin": split["logit_margin"],
        "parsing": parse_stats(p),
    }


@dataclass
class Joined:
    """MCQ outcome and both confidences for the questions present in every pass needed.

    >>> j = Joined(np.array(["q1", "q2"]), np.array([True, False]), None, np.array([90.0, 10.0]), None)
    >>> round(calibration(j)["brier"], 4)
    0.01
    """

    question_id: np.ndarray
    correct: np.ndarray | None
    entropy: np.ndarray | None
    self_conf: np.ndarray | None  # 0-100
    other_conf: np.ndarray | None


def join_passes(run: Run) -> Joined:
    """Align the passes on question_id (the MCQ pass's order; questions missing from a pass are dropped).

    >>> join_passes(open_run("test_run_base")).self_conf[:2]             # doctest: +SKIP
    array([25.3, 28.1], dtype=float32)
    """
    base = run.passes.get("mcq") or run.passes.get("self_conf") or run.passes.get("other_conf")
    qids = base.cols["question_id"]
    keep = np.ones(len(qids), dtype=bool)
    rows = {}
    for name in ("mcq", "self_conf", "other_conf"):
        p = run.passes.get(name)
        if p is None:
            continue
        r = np.array([p.row_of(q) if p.row_of(q) is not None else -1 for q in qids.tolist()], dtype=np.int64)
        keep &= r >= 0
        rows[name] = r
    qids = qids[keep]

    def col(name, column):
        if name not in rows:
            return None
        return run.passes[name].cols[column][rows[name][keep]]

    correct = col("mcq", "is_correct")
    return Joined(qids, correct.astype(bool) if correct is not None else None, col("mcq", "entropy"),
                  col("self_conf", "self_confidence"), col("other_conf", "other_confidence"))


def calibration(j: Joined) -> dict:
    """Self-confidence vs MCQ correctness: ECE (8 native bins, 10 equal bins), Brier, AUROCs, and
    Spearman correlations with the MCQ entropy (the introspection signal).

    >>> j = Joined(np.array(["q1", "q2", "q3", "q4"]), np.array([True, False, True, False]), None,
    ...            np.array([90.0, 20.0, 70.0, 40.0]), None)
    >>> c = calibration(j)
    >>> c["auroc_self_confidence"], round(c["mean_confidence_minus_accuracy"], 3)
    (1.0, 0.05)
    """
    out: dict = {"n": int(len(j.question_id))}
    if j.correct is not None and j.self_conf is not None and len(j.question_id):
        conf = j.self_conf.astype(np.float64) / 100.0
        out.update({
            "ece_native_bins": M.ece(conf, j.correct, M.NATIVE_BIN_EDGES),
            "ece_10_bins": M.ece(conf, j.correct, 10),
            "brier": M.brier(conf, j.correct),
            "mean_confidence_minus_accuracy": float(conf.mean() - j.correct.mean()),
            "auroc_self_confidence": M.auroc(conf, j.correct),
            "reliability_10_bins": M.reliability_table(conf, j.correct, 10),
            "reliability_native_bins": M.reliability_table(conf, j.correct, M.NATIVE_BIN_EDGES),
        })
    if j.correct is not None and j.other_conf is not None and len(j.question_id):
        out["auroc_other_confidence"] = M.auroc(j.other_conf, j.correct)
    if j.correct is not None and j.entropy is not None and len(j.question_id):
        out["auroc_neg_entropy"] = M.auroc(-j.entropy.astype(np.float64), j.correct)
    corr = {}
    if j.self_conf is not None and j.other_conf is not None:
        corr["self_vs_other"] = M.spearman(j.self_conf, j.other_conf)
    if j.entropy is not None:
        if j.self_conf is not None:
            corr["self_vs_entropy"] = M.spearman(j.self_conf, j.entropy)
        if j.other_conf is not None:
            corr["other_vs_entropy"] = M.spearman(j.other_conf, j.entropy)
    out["spearman"] = {k: {"rho": v[0], "p": v[1]} for k, v in corr.items()}
    if "self_vs_entropy" in corr and "other_vs_entropy" in corr:
        # Positive = self-confidence follows the model's own certainty (-entropy) more than other-confidence does.
        out["introspection_delta"] = -(corr["self_vs_entropy"][0] - corr["other_vs_entropy"][0])
    return out


def confidence(run: Run) -> dict:
    """Per confidence pass: distribution of the 0-100 score, argmax and parsed bin histograms.

    >>> confidence(open_run("test_run_base"))["self_conf"]["argmax_bins"]["S"]   # doctest: +SKIP
    10
    """
    out = {}
    for name, col in SCORE_COLUMN.items():
        p = run.passes.get(name)
        if p is None or col not in p.cols:
            continue
        argmax = np.array(CONFIDENCE_LABELS)[np.argmax(p.cols["probs"], axis=1)] if len(p) else np.array([])
        out[name] = {"score": M.describe(p.cols[col]),
                     "argmax_bins": M.label_counts(argmax.tolist(), CONFIDENCE_LABELS),
                     "parsed_bins": M.label_counts(p.cols["parsed_answer"].tolist(), CONFIDENCE_LABELS),
                     "mean_probs": dict(zip(CONFIDENCE_LABELS, (float(x) for x in p.cols["probs"].mean(axis=0))))
                     if len(p) else {},
                     "mean_entropy": float(np.mean(p.cols["entropy"])) if len(p) else math.nan,
                     "parsing": parse_stats(p)}
    return out


def example(run: Run, row: int, prompt_chars: int = 300) -> dict:
    """Everything about one question of the focus pass, with the other passes' readouts joined.

    >>> example(open_run("test_run_base/mcq"), 0)["readouts"]["mcq"]["parsed_answer"]   # doctest: +SKIP
    'A'
    """
    p = run.passes[run.focus]
    r = p.ds.select_columns([c for c in _EXAMPLE if c in p.ds.column_names])[int(row)]
    qid = r["question_id"]
    ex = {"row": int(row), "question_id": qid, "question_text": r.get("question_text"), "options": r.get("options"),
          "correct_answer_letter": r.get("correct_answer_letter"), "pass": run.focus,
          "prompt_text": truncate(r.get("prompt_text") or "", prompt_chars, tail=prompt_chars // 3),
          "prompt_chars": len(r.get("prompt_text") or ""), "readouts": {}}
    for name, q in run.passes.items():
        i = q.row_of(qid)
        if i is None:
            continue
        c = q.cols
        d = {"parsed_answer": str(c["parsed_answer"][i]), "parse_source": str(c["parse_source"][i]),
             "probs": dict(zip(q.labels, (float(x) for x in c["probs"][i]))), "entropy": float(c["entropy"][i])}
        if name == "mcq":
            d.update(is_correct=bool(c["is_correct"][i]), logit_margin=float(c["logit_margin"][i]))
        else:
            d["confidence"] = float(c[SCORE_COLUMN[name]][i])
        if name == run.focus:
            d["output_text"] = r.get("output_text")
        else:
            d["output_text"] = q.ds.select_columns(["output_text"])[i]["output_text"]
        ex["readouts"][name] = d
    shapes = activation_shapes(p, int(row)) if p.layers else {}
    positions = r.get("activation_positions") or []
    seq_len = int(p.cols["seq_len"][row]) if "seq_len" in p.cols else None
    ex["activations"] = {"layers": len(shapes), "shapes": sorted(set(shapes.values())), "dtype": p.act_dtype,
                         "positions": _positions_text(positions, seq_len), "seq_len": seq_len,
                         "answer_row": "last" if bool(p.answer_stored[row]) else "not stored"}
    return ex


def _positions_text(positions, seq_len) -> str:
    if not len(positions):
        return "none"
    pos = list(positions)
    if seq_len and pos == list(range(seq_len)):
        return f"all {seq_len} prompt tokens"
    return f"{len(pos)} of {seq_len} prompt tokens ({format_layers(pos)})"


def build_report(run: Run, show_examples: int = 0, activation_stats: bool = True) -> dict:
    """The one-run report as a JSON-able dict (NaN where a value is undefined).

    >>> report = build_report(open_run("test_run_base"), show_examples=1)   # doctest: +SKIP
    >>> sorted(report)                                                       # doctest: +SKIP
    ['activations', 'behaviour', 'calibration', 'confidence', 'examples', 'kind', 'run']
    """
    report: dict = {"kind": "run", "run": header(run)}
    if "mcq" in run.passes:
        report["behaviour"] = behaviour(run.passes["mcq"])
    report["confidence"] = confidence(run)
    report["calibration"] = calibration(join_passes(run))
    focus = run.passes[run.focus]
    if activation_stats:
        report["activations"] = {"pass": run.focus, **layer_norms(focus)}
    n = min(max(0, show_examples), len(focus))
    report["examples"] = [example(run, i) for i in range(n)]
    return report


def layer_norms(p: PassData, max_rows: int = 2000) -> dict:
    """Mean L2 norm at the answer position per layer (at most ``max_rows`` rows) and non-finite counts.

    >>> layer_norms(open_run("test_run_base").passes["mcq"])["nonfinite"][:3]   # doctest: +SKIP
    [0, 0, 0]
    """
    rows = np.flatnonzero(p.answer_stored)[:max_rows]
    if not len(rows) or not p.layers:
        return {"rows": 0, "layers": [], "mean_norm": [], "nonfinite": []}
    norms, bad = [], []
    for layer in p.layers:
        a = answer_activations(p, layer, rows).astype(np.float64)
        finite = np.isfinite(a)
        bad.append(int((~finite).sum()))
        norms.append(float(np.linalg.norm(np.where(finite, a, 0.0), axis=1).mean()))
    return {"rows": int(len(rows)), "layers": list(p.layers), "mean_norm": norms, "nonfinite": bad}
