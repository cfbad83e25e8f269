"""`analyze`: the seed's Day 1-4 analyses of one run (or a base and a finetuned run) in one go, written
as a Markdown report with its plots and JSON files.

Sections (each skipped with a note when the run lacks what it needs):

1. Layerwise probes (Day 1): ``probe`` sweeps of the mcq pass (entropy, logit_gap, logit_margin,
   is_correct, parsed_answer) and of each confidence pass's own readout (self_confidence,
   other_confidence), one figure: where the entropy signal emerges vs where the letter is decodable.
2. Surface vs internal (Day 2): ``surface`` for the mcq entropy.
3. Directions (Day 3) and self vs other (Day 4): ``directions`` (A-dir's direction_sweep) with each
   pass's own target, and ``transfer`` of the mcq entropy probe to the confidence passes.

With ``other`` (e.g. the finetuned run), every analysis runs on the questions both runs share and the
figures show the two runs side by side.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError
from .serialize import jsonable

log = logging.getLogger("hf_introspect")

PROBE_TARGETS = {"mcq": ["entropy", "logit_gap", "logit_margin", "is_correct", "parsed_answer"],
                 "self_conf": ["self_confidence"], "other_conf": ["other_confidence"]}


@dataclass
class ReportSettings:
    """How much work each analysis does (the CLI's flags)."""

    n_splits: int = 100
    permutations: int = 100
    method: str = "ridge"
    position: str = "answer"
    layers: list[int] | None = None
    seed: int = 0
    device: str | None = None


@dataclass
class Report:
    out: Path
    markdown: Path
    files: list[str] = field(default_factory=list)   # JSON and PNG files written, relative to out
    notes: list[str] = field(default_factory=list)   # sections skipped and why
    seconds: float = 0.0


def _fmt(x, digits: int = 3) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def _shared_rows(data, other, pass_name):
    from .ids import shared_rows

    return (None, None) if other is None else shared_rows(data, other, pass_name)


class _Writer:
    """Collects Markdown lines and the files written beside them."""

    def __init__(self, out: Path):
        self.out, self.lines, self.files, self.notes = out, [], [], []

    def json(self, name: str, payload) -> None:
        (self.out / name).write_text(json.dumps(jsonable(payload), indent=1))
        self.files.append(name)

    def image(self, path: Path, caption: str) -> None:
        name = Path(path).relative_to(self.out).as_posix()
        self.files.append(name)
        self.lines += [f"![{caption}]({name})", ""]

    def skip(self, section: str, why: str) -> None:
        self.notes.append(f"{section}: {why}")
        self.lines += [f"*Skipped: {why}*", ""]


def _probe_section(w: _Writer, data, other, s: ReportSettings) -> None:
    from .layer_plots import plot_layer_curves
    from .layer_sweep import probe_sweep

    w.lines += ["## 1. Layerwise probes (Day 1)", "",
                f"Linear probe ({s.method}) per layer at the `{s.position}` token, {s.n_splits} random 80/20 splits "
                f"by question, {s.permutations} label permutations per layer for the null. Score: test R^2 "
                "(numeric), AUROC (is_correct), accuracy (letters; chance 0.25).", "",
                "| pass | target | metric | n | best layer | score | 95% over splits | null p95 | p |",
                "|---|---|---|---|---|---|---|---|---|"]
    results, others, payload = [], [], []
    for pass_name, targets in PROBE_TARGETS.items():
        if pass_name not in data.passes:
            continue
        rows_a, rows_b = _shared_rows(data, other, pass_name)
        for target in targets:
            kw = dict(position=s.position, layers=s.layers, n_splits=s.n_splits, method=s.method,
                      permutations=s.permutations, seed=s.seed, device=s.device)
            try:
                res = probe_sweep(data, pass_name, target, rows=rows_a, **kw)
                oth = probe_sweep(other, pass_name, target, rows=rows_b, **kw) if other is not None else None
            except UserError as exc:
                w.notes.append(f"probe {pass_name}/{target}: {exc}")
                continue
            log.info("analyze: probe %s/%s done (%.0f s)", pass_name, target, res.seconds)
            for tag, r in (("", res), (" (compare)", oth)):
                if r is None:
                    continue
                b = r.best
                w.lines.append(f"| {pass_name}{tag} | {target} | {r.metric} | {r.n_questions} | {r.best_layer} | "
                               f"{_fmt(b.score if b else None)} | {_fmt(b.ci_low if b else None)} to "
                               f"{_fmt(b.ci_high if b else None)} | {_fmt(b.null_p95 if b else None)} | "
                               f"{_fmt(b.p_value if b else None, 4)} |")
            results.append(res)
            others.append(oth)
            payload.append(res.to_json() if oth is None else {"run": res.to_json(), "compare_with": oth.to_json()})
    w.lines.append("")
    if not results:
        w.skip("probes", "no probe target could be fitted (see the notes)")
        return
    w.json("probe.json", payload)
    mcq = [r for r in results if r.pass_name == "mcq"]
    groups = [("probes_mcq.png", "mcq probes: score by layer", mcq),
              ("probes_confidence.png", "confidence passes: stated confidence by layer",
               [r for r in results if r.pass_name != "mcq"])]
    for name, caption, group in groups:
        if group:
            comp = [others[results.index(r)] for r in group] if other is not None else None
            w.image(plot_layer_curves(group, w.out / name, title=caption, compare=comp), caption)


def _surface_section(w: _Writer, data, s: ReportSettings) -> None:
    from .surface_vs_internal import plot_surface, surface_sweep

    w.lines += ["## 2. Surface vs internal (Day 2)", ""]
    try:
        res = surface_sweep(data, "mcq", "entropy", position=s.position, layers=s.layers, n_splits=s.n_splits,
                            method=s.method, permutations=s.permutations, seed=s.seed, device=s.device)
    except UserError as exc:
        w.skip("surface", str(exc))
        return
    best = next((r for r in res.layers if r.layer == res.best_layer), None)
    w.lines += [f"mcq entropy from the {len(res.features)} surface features alone: R^2 {_fmt(res.surface)} "
                f"(95% over splits {_fmt(res.surface_ci[0])} to {_fmt(res.surface_ci[1])}, p {_fmt(res.surface_p_value, 4)}).",
                ""]
    if best is not None:
        w.lines += [f"Largest unique share of the activations: layer {best.layer}, R^2(both) - R^2(surface) = "
                    f"{_fmt(best.unique)}; activations alone {_fmt(best.activations)}; on the target with the "
                    f"surface features regressed out {_fmt(best.residual)} (p {_fmt(best.residual_p_value, 4)}).", ""]
    w.json("surface.json", res.to_json())
    plot_surface(res, w.out / "surface_mcq_entropy.png")
    w.image(w.out / "surface_mcq_entropy.png", "surface vs internal, mcq entropy")


def _directions_section(w: _Writer, data, other, s: ReportSettings) -> None:
    w.lines += ["## 3. Directions and self vs other (Days 3-4)", ""]
    try:
        from . import direction_plots as dp
        from .direction_sweep import compare_runs, direction_sweep, targets_for
    except ImportError as exc:
        w.skip("directions", f"the directions module is not available ({exc})")
        return
    passes = [p for p in ("mcq", "self_conf", "other_conf") if p in data.passes]
    shared = None
    if other is not None:
        shared = sorted(set(data.question_ids("mcq")) & set(other.question_ids("mcq")))
    try:
        kw = dict(position=s.position, layers=s.layers, seed=s.seed, question_ids=shared, device=s.device,
                  permutations=min(s.permutations, 100))
        sweep = direction_sweep(data, passes, targets_for(passes, "own"), **kw)
        osweep = direction_sweep(other, passes, targets_for(passes, "own"), **kw) if other is not None else None
    except UserError as exc:
        w.skip("directions", str(exc))
        return
    cross = compare_runs(sweep, osweep) if osweep is not None else None
    w.json("directions.json", sweep.to_json() if osweep is None else
           {"run": sweep.to_json(), "compare_with": osweep.to_json(), "cross_run_cosines": cross})
    w.lines += [f"Probe and mean-difference directions of each pass's own target ({', '.join(f'{p}: {t}' for p, t in sweep.targets.items())}), "
                f"{sweep.n_questions} questions.", ""]
    for tag, sw in (("", sweep), (" (compare)", osweep)):
        finite = [r for r in (sw.self_vs_other if sw is not None else [])
                  if r.get("cos_probe") is not None and np.isfinite(r["cos_probe"])]
        if finite:
            last = finite[-1]
            w.lines += [f"Self vs other confidence{tag}, last layer ({last['layer']}): cosine of the probe directions "
                        f"{_fmt(last['cos_probe'])}, of the mean-diff directions {_fmt(last.get('cos_meandiff'))} "
                        "(published, Llama-3.1-8B: 0.44 / 0.82).", ""]
    if cross is not None:
        w.lines += ["Cosine between the two runs' directions (same pass, same layer), median over layers "
                    "[last layer]:", ""]
        for p, by_kind in cross.items():
            parts = []
            for kind, rows in by_kind.items():
                cos = np.array([np.nan if r["cos"] is None else r["cos"] for r in rows], dtype=np.float64)
                med = float(np.nanmedian(cos)) if np.isfinite(cos).any() else float("nan")
                parts.append(f"{kind} {_fmt(med)} [{_fmt(float(cos[-1]))}]")
            w.lines.append(f"- {p}: " + ", ".join(parts))
        w.lines.append("")
    w.image(dp.plot_scores(sweep, w.out / "directions_scores.png", osweep), "held-out score of the directions")
    if len(passes) > 1:
        w.image(dp.plot_pass_cosines(sweep, w.out / "directions_pass_cosines.png"), "cosines across passes")
    if sweep.self_vs_other:
        w.image(dp.plot_self_vs_other(sweep, w.out / "directions_self_vs_other.png", osweep), "self vs other")
    if {"self_conf", "other_conf"} & set(data.passes) and "mcq" in data.passes:
        _transfer(w, data, other, s, shared, dp)


def _transfer(w: _Writer, data, other, s: ReportSettings, shared, dp) -> None:
    from .transfer_sweep import transfer_sweep

    tests = [p for p in ("self_conf", "other_conf") if p in data.passes]
    try:
        kw = dict(position=s.position, layers=s.layers, seed=s.seed, question_ids=shared, device=s.device)
        res = transfer_sweep(data, "mcq", tests, "mcq.entropy", **kw)
        ores = transfer_sweep(other, "mcq", tests, "mcq.entropy", **kw) if other is not None else None
    except UserError as exc:
        w.skip("transfer", str(exc))
        return
    w.json("transfer.json", res.to_json() if ores is None else {"run": res.to_json(), "compare_with": ores.to_json()})
    w.lines += ["### Transfer of the mcq entropy probe", ""]
    for tag, r in (("", res), (" (compare)", ores)):
        if r is None:
            continue
        direct = r.best.get("direct", {})
        w.lines.append(f"Best direct R^2{tag} {_fmt(direct.get('r2'))} (layer {direct.get('layer')}).")
        for test in tests:
            for std, row in (r.best.get(test) or {}).items():
                if isinstance(row, dict):
                    w.lines.append(f"- to {test} ({std}): best R^2 {_fmt(row.get('r2'))} at layer {row.get('layer')}, "
                                   f"ratio {_fmt(row.get('ratio'))}")
        w.lines.append("")
    w.image(dp.plot_transfer(res, w.out / "transfer.png", ores), "transfer of the mcq entropy probe")


def build_report(data, out, *, other=None, settings: ReportSettings | None = None) -> Report:
    """Run the Day 1-4 analyses on ``data`` (and ``other``) and write ``out/report.md`` + plots + JSON.

    Example:
        >>> rep = build_report(open_run_data("runs/trivia500"), "report")      # doctest: +SKIP
        >>> rep.markdown                                                         # doctest: +SKIP
        PosixPath('report/report.md')
    """
    t0 = time.perf_counter()
    s = settings or ReportSettings()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    w = _Writer(out)
    if "mcq" not in data.passes:
        raise UserError(f"{data.source} has no mcq pass; analyze needs it (it holds {', '.join(data.passes)})")
    n = data.n_questions("mcq")
    w.lines += [f"# Analysis of {data.model_name}", "",
                f"Run: `{data.source}`" + (f", compared with `{other.source}`" if other is not None else "")
                + f". {n} questions; passes {', '.join(data.passes)}; activations collected with --positions "
                  f"{data.collected_positions or 'unknown'}; layers {', '.join(map(str, data.layers('mcq')[:1]))}-"
                  f"{data.layers('mcq')[-1]} (0 = embeddings).", ""]
    _probe_section(w, data, other, s)
    _surface_section(w, data, s)
    _directions_section(w, data, other, s)
    seconds = time.perf_counter() - t0
    if w.notes:
        w.lines += ["## Notes", ""] + [f"- {n}" for n in w.notes] + [""]
    w.lines += [f"*Written by `hf-introspect analyze` in {seconds:.0f} s (splits {s.n_splits}, permutations "
                f"{s.permutations}, method {s.method}, seed {s.seed}).*", ""]
    md = out / "report.md"
    md.write_text("\n".join(w.lines))
    return Report(out, md, w.files, w.notes, seconds)
