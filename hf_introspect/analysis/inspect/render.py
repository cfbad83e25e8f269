"""Text and JSON of inspect's report dicts (:func:`render_report`, :func:`render_comparison`, :func:`to_json`).

Works on the plain dicts :func:`.summary.build_report` and :func:`.compare.build_comparison` return, so a
saved ``--json`` report renders the same way.
"""

from __future__ import annotations

import json
import math

import numpy as np

from ...passes import ANSWER_LABELS, CONFIDENCE_LABELS, CONFIDENCE_RANGES
from ..serialize import jsonable
from .text import format_layers


def to_json(report: dict) -> str:
    """The report as indented JSON: numpy as Python, NaN/inf as ``null`` (:func:`..serialize.jsonable`).

    Example:
        >>> print(to_json({"accuracy": np.float32(0.5), "auroc": float("nan")}))
        {
          "accuracy": 0.5,
          "auroc": null
        }
    """
    return json.dumps(jsonable(report), indent=2, allow_nan=False)


def _f(x, nd: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    return f"{x:.{nd}f}"


def _pct(x, nd: int = 1) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:.{nd}f}%"


def _p(x) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{x:.2g}" if x < 0.001 else f"{x:.3f}"


def _size(n) -> str:
    if n is None:
        return "n/a"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def table(rows: list[list], header: list[str] | None = None, indent: int = 2, left: bool = False) -> str:
    """Aligned columns: the first left-aligned, the rest right-aligned (or all left with ``left``).

    Example:
        >>> print(table([["a", 1], ["bb", 22]], ["k", "v"]))
          k    v
          a    1
          bb  22
    """
    rows = [[str(c) for c in r] for r in ([header] if header else []) + rows]
    widths = [max(len(r[i]) for r in rows if i < len(r)) for i in range(max(len(r) for r in rows))]
    lines = []
    for r in rows:
        cells = [c.ljust(widths[i]) if i == 0 or left else c.rjust(widths[i]) for i, c in enumerate(r)]
        lines.append(" " * indent + "  ".join(cells).rstrip())
    return "\n".join(lines)


def _section(title: str) -> str:
    return f"\n== {title} " + "=" * max(3, 72 - len(title))


def _header_lines(h: dict) -> list[list]:
    adapter = h.get("checkpoint_id") or "n/a"
    if h.get("lora_checkpoint"):
        adapter = f"{h['lora_checkpoint']} (checkpoint_id {adapter})"
    elif h.get("model_type") == "base" or adapter == "base":
        adapter = f"none (checkpoint_id {adapter})"
    srcs = ", ".join(f"{k} ({v})" for k, v in h["question_sources"].items()) or "n/a"
    layers = h["layers_stored"]
    lay = f"{format_layers(layers)} ({len(layers)} of {h['num_layers'] + 1} residual-stream indices; 0 = embeddings)" \
        if h.get("num_layers") is not None else f"{format_layers(layers)} ({len(layers)} columns; 0 = embeddings)"
    pos = h["positions_stored"]
    first = next(iter(pos.values()))
    pos_text = f"{h.get('positions') or '?'}: mean {first['mean_positions']:.1f} stored of {first['mean_seq_len']:.1f} prompt tokens"
    missing = {k: v["answer_position_stored"] for k, v in pos.items()}
    per_pass = h["questions_per_pass"]
    if any(missing[k] < per_pass[k] for k in missing):
        pos_text += "; answer position stored for " + ", ".join(f"{k} {missing[k]}/{per_pass[k]}" for k in missing)
    overflow = ", ".join(f"{k} {v['values']} values in {v['rows']} rows" for k, v in h["fp16_overflow"].items()
                         if v["values"]) or ("none" if h["fp16_overflow"] else "n/a")
    size = _size(h["disk_bytes"])
    if any(v for v in h["disk_bytes_per_pass"].values()):
        size += " (" + ", ".join(f"{k} {_size(v)}" for k, v in h["disk_bytes_per_pass"].items()) + ")"
    rows = [["location", h["location"]], ["model", h.get("model_name") or "n/a"], ["adapter", adapter],
            ["questions", f"{', '.join(f'{k} {v}' for k, v in per_pass.items())}; source {srcs}"]]
    if h["incomplete_passes"]:
        rows.append(["unfinished", ", ".join(h["incomplete_passes"])])
    rows += [["layers", lay], ["hidden size", h.get("hidden_size") or "n/a"], ["positions", pos_text],
             ["dtype", h.get("act_dtype") or "n/a"],
             ["generation", f"temperature {_f(h.get('temperature'), 2)}, max_new_tokens {h.get('max_new_tokens')}"],
             ["disk", size], ["fp16 overflow", overflow]]
    if h.get("run_id"):
        rows.append(["run", f"{h['run_id']} created {h.get('created')} (hf_introspect {h.get('hf_introspect_version')})"])
    return rows


def _kv(rows: list[list], indent: int = 2) -> str:
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{' ' * indent}{r[0].ljust(width)}  {r[1]}" for r in rows)


def _dist_rows(named: list[tuple[str, dict]], labels) -> tuple[list[str], list[list]]:
    extra = ["other"] if any("other" in d for _, d in named) else []
    head = [""] + list(labels) + extra
    rows = [[name] + [d.get(lab, 0) for lab in list(labels) + extra] for name, d in named]
    return head, rows


def _render_behaviour(b: dict) -> str:
    lo, hi = b["accuracy_ci95"]
    lines = [f"  accuracy {_pct(b['accuracy'])} ({b['correct']}/{b['n']}), 95% CI [{_pct(lo)}, {_pct(hi)}] "
             f"(Wilson); chance 25.0%; argmax accuracy {_pct(b['argmax_accuracy'])}",
             f"  mean P(correct letter) {_f(b['mean_p_correct'])}, mean top probability {_f(b['mean_top_probability'])}",
             "", "  letters (position bias):"]
    head, rows = _dist_rows([("parsed answer", b["parsed_answers"]), ("argmax", b["argmax_answers"]),
                             ("correct letter", b["correct_letters"])], ANSWER_LABELS)
    lines.append(table(rows, head, indent=4))
    rows = []
    for col, label in (("entropy", "entropy (nats)"), ("logit_margin", "logit margin")):
        d = b[col]
        rows.append([label, _f(d["all"]["mean"]), _f(d["all"]["std"]), _f(d["correct"]["mean"]),
                     _f(d["incorrect"]["mean"])])
    lines += ["", table(rows, ["", "mean", "std", "correct", "incorrect"], indent=4), ""]
    lines.append("  " + _parse_line(b["parsing"]))
    return "\n".join(lines)


def _parse_line(s: dict) -> str:
    if "from_output_text" not in s:
        return "output text: n/a"
    return (f"output text named a label in {s['from_output_text']}/{s['n']}, disagreed with the argmax in "
            f"{s['output_disagrees_with_argmax']}, named no label (argmax used) in {s['no_label_in_output']}")


def _render_confidence(c: dict, cal: dict) -> str:
    lines = []
    if c:
        rows = []
        for name, d in c.items():
            s = d["score"]
            rows.append([name, s["n"], _f(s["mean"], 1), _f(s["std"], 1), _f(s["median"], 1),
                         f"{_f(s['min'], 1)}-{_f(s['max'], 1)}", _f(d["mean_entropy"])])
        lines.append(table(rows, ["confidence (0-100)", "n", "mean", "std", "median", "range", "entropy"]))
        named = []
        for name, d in c.items():
            named += [(f"{name} argmax", d["argmax_bins"]), (f"{name} parsed", d["parsed_bins"]),
                      (f"{name} mean P", {k: f"{v:.2f}" for k, v in d["mean_probs"].items()})]
        head, rows = _dist_rows(named, CONFIDENCE_LABELS)
        lines += ["", "  bins: " + "  ".join(f"{lab} {rng}" for lab, rng in zip(CONFIDENCE_LABELS, CONFIDENCE_RANGES)),
                  table(rows, head)]
        for name, d in c.items():
            lines.append(f"  {name}: " + _parse_line(d["parsing"]))
    if "ece_10_bins" in cal or cal.get("spearman"):
        lines += ["", f"  calibration of self-confidence vs MCQ correctness ({cal['n']} questions in all passes):"]
        lines.append(_kv([[k, v] for k, v in _calibration_rows(cal)], indent=4))
    return "\n".join(lines)


def _calibration_rows(cal: dict) -> list[tuple[str, str]]:
    rows = []
    for key, label in (("ece_native_bins", "ECE (8 native bins)"), ("ece_10_bins", "ECE (10 equal bins)"),
                       ("brier", "Brier score"), ("mean_confidence_minus_accuracy", "mean confidence - accuracy"),
                       ("auroc_self_confidence", "AUROC self_confidence"),
                       ("auroc_other_confidence", "AUROC other_confidence"),
                       ("auroc_neg_entropy", "AUROC -entropy (MCQ)")):
        if key in cal:
            rows.append((label, _f(cal[key])))
    sp = cal.get("spearman", {})
    for key, label in (("self_vs_other", "Spearman self vs other"), ("self_vs_entropy", "Spearman self vs MCQ entropy"),
                       ("other_vs_entropy", "Spearman other vs MCQ entropy")):
        if key in sp:
            rows.append((label, f"{_f(sp[key]['rho'])} (p {_p(sp[key]['p'])})"))
    if "introspection_delta" in cal:
        rows.append(("introspection delta", f"{_f(cal['introspection_delta'])} (rho(self,-H) - rho(other,-H); "
                                            "> 0: self-confidence tracks the model's own uncertainty better)"))
    return rows


def _render_activations(a: dict) -> str:
    if not a.get("rows"):
        return "  no answer-position activations stored"
    layers = a["layers"]
    pick = sorted(set([0, len(layers) // 4, len(layers) // 2, 3 * len(layers) // 4, len(layers) - 1]))
    rows = [[f"layer {layers[i]}", _f(a["mean_norm"][i], 2), a["nonfinite"][i]] for i in pick]
    bad = sum(a["nonfinite"])
    return (f"  {a['pass']} pass, answer position, {a['rows']} questions ({len(layers)} layers; all in --json)\n"
            + table(rows, ["", "mean L2 norm", "non-finite"], indent=4)
            + (f"\n  WARNING: {bad} non-finite values at the answer position" if bad else ""))


def _readout_line(name: str, d: dict, prefix: str = "") -> str:
    tag = prefix + {"mcq": "mcq", "self_conf": "self", "other_conf": "other"}.get(name, name)
    probs = " ".join(f"{lab} {p:.3f}" for lab, p in d["probs"].items())
    how = "" if d["parse_source"] == "output_text" else " (argmax: output named no label)"
    line = f"  {tag:<8} output {d['output_text']!r} -> {d['parsed_answer']}{how}; P {probs}; H {d['entropy']:.3f}"
    if name == "mcq":
        return line + f"; margin {d['logit_margin']:+.3f}; {'correct' if d['is_correct'] else 'wrong'}"
    return line + f"; confidence {d['confidence']:.1f}"


def _render_example(ex: dict, k: int, total: int, prefix: str = "", extra: list[str] | None = None) -> str:
    lines = [f"  --- example {k} of {total}: {ex['question_id']} (row {ex['row']} of {ex['pass']}) ---",
             f"  question: {ex['question_text']}"]
    for lab, opt in (ex.get("options") or {}).items():
        mark = "  <- correct" if lab == ex.get("correct_answer_letter") else ""
        lines.append(f"    {lab}. {opt}{mark}")
    lines.append(f"  prompt ({ex['prompt_chars']} chars): {ex['prompt_text']!r}")
    lines += [_readout_line(name, d, prefix) for name, d in ex["readouts"].items()]
    lines += extra or []
    a = ex["activations"]
    shape = ", ".join(f"({s[0]}, {s[1]})" for s in a["shapes"]) or "none"
    lines.append(f"  activations: {a['layers']} layers x {shape} {a['dtype']}; positions: {a['positions']}; "
                 f"answer position row: {a['answer_row']}")
    return "\n".join(lines)


def render_report(r: dict) -> str:
    """Readable text of :func:`build_report`'s dict (the ``inspect`` command's output).

    >>> from hf_introspect.analysis.inspect.run_view import open_run
    >>> from hf_introspect.analysis.inspect.summary import build_report
    >>> print(render_report(build_report(open_run("test_run_base"))))   # doctest: +SKIP
    == run =====...
    """
    out = [_section("run"), _kv(_header_lines(r["run"]))]
    if "behaviour" in r:
        out += [_section("MCQ behaviour"), _render_behaviour(r["behaviour"])]
    if r["confidence"] or r["calibration"].get("spearman"):
        out += [_section("confidence"), _render_confidence(r["confidence"], r["calibration"])]
    if "activations" in r:
        out += [_section("activations"), _render_activations(r["activations"])]
    if r["examples"]:
        out.append(_section("examples"))
        out += [_render_example(ex, k + 1, len(r["examples"])) for k, ex in enumerate(r["examples"])]
    if r.get("plots"):
        out += [_section("plots"), "\n".join(f"  {p}" for p in r["plots"])]
    return "\n".join(out).lstrip("\n") + "\n"


def render_comparison(c: dict) -> str:
    """Readable text of :func:`build_comparison`'s dict (``inspect --compare_with``).

    >>> from hf_introspect.analysis.inspect.compare import build_comparison
    >>> from hf_introspect.analysis.inspect.run_view import open_run
    >>> print(render_comparison(build_comparison(open_run("base"), open_run("lora"))))   # doctest: +SKIP
    == comparison: A = base, B = lora ===...
    """
    na, nb = c["names"]
    ha, hb = c["runs"]
    out = [_section(f"comparison: A = {na}, B = {nb}")]
    ra, rb = dict(_header_lines(ha)), dict(_header_lines(hb))
    keys = [k for k in ra if k in rb and k != "run"]
    out.append(table([[k, ra[k], rb[k]] for k in keys], ["", f"A: {na}", f"B: {nb}"], left=True))
    out.append("  shared questions: " + ", ".join(
        f"{k} {v} (only A {c['only_in_a'][k]}, only B {c['only_in_b'][k]})" for k, v in c["shared_questions"].items()))
    if "mcq" in c:
        m = c["mcq"]
        out.append(_section("MCQ accuracy"))
        rows = [[name, f"{_pct(m[k]['accuracy'])}", f"{m[k]['correct']}/{m['n']}",
                 f"[{_pct(m[k]['ci95'][0])}, {_pct(m[k]['ci95'][1])}]"] for name, k in ((na, "a"), (nb, "b"))]
        out.append(table(rows, ["", "accuracy", "correct", "95% CI"]))
        mc = m["mcnemar"]
        method = {"exact_binomial": "exact binomial", "chi2_cc": "chi-square, continuity corrected", "none": "no discordant pairs"}
        out += [f"  difference B - A: {100 * m['accuracy_diff']:+.1f} points; McNemar ({method[mc['method']]}): "
                f"only A right {mc['b']}, only B right {mc['c']}, p = {_p(mc['p_value'])}",
                f"  same parsed answer on {_pct(m['agreement'])} of questions ({m['answers_changed']} changed); "
                f"correctness flipped on {m['flips']['lost'] + m['flips']['gained']} "
                f"(lost {m['flips']['lost']}, gained {m['flips']['gained']})"]
        if m["flips"]["listed"]:
            rows = [[f["question_id"], f"B {f['direction']}", f["correct"], f"{f['a_answer']} ({f['a_p_correct']:.2f})",
                     f"{f['b_answer']} ({f['b_p_correct']:.2f})", f["question"]] for f in m["flips"]["listed"]]
            out += [f"  flipped questions (first {len(rows)}; answer with P(correct letter) in brackets):",
                    table(rows, ["question_id", "change", "correct", "A answer", "B answer", "question"], indent=4)]
    if c["shifts"]:
        out.append(_section("shifts (B - A, paired)"))
        rows = [[k, _f(s["a"]), _f(s["b"]), f"{s['mean_diff']:+.3f}" if math.isfinite(s["mean_diff"]) else "n/a",
                 _p(s["wilcoxon_p"]), s["n"]] for k, s in c["shifts"].items()]
        out.append(table(rows, ["", "A mean", "B mean", "mean diff", "Wilcoxon p", "n"]))
    cal = c["calibration"]
    la, lb = dict(_calibration_rows(cal["a"])), dict(_calibration_rows(cal["b"]))
    if la:
        out.append(_section(f"calibration ({cal['n_shared']} questions in every pass of both)"))
        rows = [[k, la[k].split(" (rho")[0], lb.get(k, "n/a").split(" (rho")[0]] for k in la]
        out.append(table(rows, ["", na, nb]))
    sim = {name: v for name, v in c["layer_similarity"].items() if v["n"]}
    if c["layer_similarity"]:
        out.append(_section("activation similarity at the answer position (cosine, A vs B)"))
    if sim:
        layers = sorted({l for v in sim.values() for l in v["layers"]})
        rows = []
        for l in layers:
            row = [f"layer {l}"]
            for v in sim.values():
                row.append(_f(v["mean"][v["layers"].index(l)], 4) if l in v["layers"] else "")
            rows.append(row)
        out += ["  mean over questions per pass (" + ", ".join(f"{k} n={v['n']}" for k, v in sim.items())
                + "; quartiles in --json)", table(rows, [""] + list(sim))]
    for name, v in c["layer_similarity"].items():
        if not v["n"]:
            out.append(f"  {name}: no question has its answer position stored in both runs")
    if c.get("examples"):
        out.append(_section("examples (flipped first)"))
        for k, pair in enumerate(c["examples"]):
            extra = [_readout_line(name, d, "B ") for name, d in pair["b"]["readouts"].items()]
            out.append(_render_example(pair["a"], k + 1, len(c["examples"]), "A ", extra))
    if c.get("plots"):
        out += [_section("plots"), "\n".join(f"  {p}" for p in c["plots"])]
    return "\n".join(out).lstrip("\n") + "\n"
