"""`hf-introspect analyze RUN --out REPORT_DIR [--compare_with OTHER]`: the Day 1-4 analyses in one go
(probes, surface vs internal, directions, self vs other, transfer) as a Markdown report with plots
and JSON (see hf_introspect.analysis.report)."""

from __future__ import annotations

from .analysis_common import emit, open_from_args, parse_layer_spec


def add_arguments(parser) -> None:
    parser.add_argument("run", metavar="RUN",
                        help="run folder, one split folder, an exported folder, or a Hub repo id (USER/NAME)")
    parser.add_argument("--out", required=True, metavar="REPORT_DIR", help="folder for report.md, plots and JSON")
    parser.add_argument("--config", default=None, help="config (model) of an exported folder / Hub repo")
    parser.add_argument("--compare_with", metavar="OTHER_RUN", default=None,
                        help="a second run on the same questions (e.g. the finetuned model): shown side by side")
    parser.add_argument("--layers", default="all", help="stored layers to analyse: all | 0,8,16-20 (default all)")
    parser.add_argument("--position", default="answer", help="token read (as for probe; default answer)")
    parser.add_argument("--splits", type=int, default=100, help="random train/test splits by question (default 100)")
    parser.add_argument("--permutations", type=int, default=100, help="label permutations per layer (default 100)")
    parser.add_argument("--method", default="ridge", choices=("ridge", "logistic", "ep"), help="probe method (default ridge)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the splits and permutations (default 0)")
    parser.add_argument("--device", default=None, help="torch device for the fits (default: cuda when available)")
    parser.add_argument("--json", action="store_true", help="print the list of written files as JSON instead")


def run(args) -> int:
    from ..analysis.report import ReportSettings, build_report

    args.pass_name = "mcq"
    data = open_from_args(args)
    other = open_from_args(args, args.compare_with) if args.compare_with else None
    layers = None if args.layers in (None, "", "all") else parse_layer_spec(args.layers, data.layers("mcq"))
    settings = ReportSettings(n_splits=args.splits, permutations=args.permutations, method=args.method,
                              position=args.position, layers=layers, seed=args.seed, device=args.device)
    rep = build_report(data, args.out, other=other, settings=settings)
    text = (f"report written to {rep.markdown} ({len(rep.files)} files, {rep.seconds:.0f} s)"
            + "".join(f"\nnote: {n}" for n in rep.notes))
    return emit(args, {"report": rep.markdown, "files": rep.files, "notes": rep.notes, "seconds": rep.seconds}, text)
