"""`hf-introspect surface RUN --target mcq.entropy`: the target from surface features, from activations
(per layer) and from both, on the same splits (see hf_introspect.analysis.surface_vs_internal)."""

from __future__ import annotations

import re

from .analysis_common import add_run_arguments, emit, layers_from_args, open_from_args, plots_dir


def add_arguments(parser) -> None:
    add_run_arguments(parser)
    parser.add_argument("--target", default="entropy", help="one target (as for probe; default entropy)")
    parser.add_argument("--splits", type=int, default=100, help="random train/test splits by question (default 100)")
    parser.add_argument("--test_size", type=float, default=0.2, help="share of questions held out (default 0.2)")
    parser.add_argument("--method", default="ridge", choices=("ridge", "logistic", "ep"),
                        help="probe on the activations (as for probe; the surface-only fit is ridge/logistic)")
    parser.add_argument("--permutations", type=int, default=100, help="label permutations for the null (default 100)")
    parser.add_argument("--device", default=None, help="torch device for the fits (default: cuda when available)")


def run(args) -> int:
    from ..analysis.surface_vs_internal import plot_surface, summary, surface_sweep

    data = open_from_args(args)
    res = surface_sweep(data, args.pass_name, args.target.strip(), position=args.position,
                        layers=layers_from_args(args, data), n_splits=args.splits, test_size=args.test_size,
                        method=args.method, permutations=args.permutations, seed=args.seed, device=args.device)
    text = summary(res)
    folder = plots_dir(args)
    if folder is not None:
        path = folder / (re.sub(r"[^\w.-]+", "_", f"surface_{args.pass_name}_{args.position}_{res.target}") + ".png")
        plot_surface(res, path)
        text += f"\nplot: {path}"
    return emit(args, res, text)
