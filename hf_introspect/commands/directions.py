"""`hf-introspect directions RUN --target own --out DIRS`: probe and mean-difference directions per pass
and layer, saved for the causal experiments; their cosines across layers and passes, self vs other
confidence (cosine, Gram-Schmidt unique parts, residual norms) and a permuted-label null
(see hf_introspect.analysis.direction_sweep and docs/analysis-directions.md)."""

from __future__ import annotations

import json
from pathlib import Path

from ..analysis.ids import shared_question_ids
from ..errors import UserError
from .analysis_common import jsonable, parse_layer_spec, plots_dir


def add_arguments(parser) -> None:
    parser.add_argument("run", metavar="RUN",
                        help="run folder, one split folder, an exported folder, or a Hub repo id (USER/NAME)")
    parser.add_argument("--config", default=None, help="config (model) of an exported folder / Hub repo")
    parser.add_argument("--target", default="own",
                        help="own (default: mcq entropy, self_confidence, other_confidence, each pass its own "
                             "readout), one spec for every pass (mcq.entropy), or one per pass, comma-separated")
    parser.add_argument("--out", required=True, metavar="DIRS",
                        help="folder for directions.npz + directions.json (the input of steer/ablate)")
    parser.add_argument("--passes", default=None,
                        help="passes, comma-separated (default: every pass the run has of mcq,self_conf,other_conf)")
    parser.add_argument("--position", default="answer",
                        help="token read: answer (readout, default) | question_end | options_end | mean:question | int")
    parser.add_argument("--layers", default="all", help="stored layers: all | 0,8,16-20 (default all)")
    parser.add_argument("--method", default="ep", choices=("ep", "ridge"),
                        help="probe: ep (default, the reference: scaler -> PCA(100) -> Ridge(1000)) or ridge "
                             "(all dimensions, penalty by leave-one-out; its null is slower)")
    parser.add_argument("--quantile", type=float, default=0.25,
                        help="mean-diff: top minus bottom share of the target (default 0.25)")
    parser.add_argument("--splits", type=int, default=5,
                        help="train/test splits for the held-out score of each direction (default 5; 0: none)")
    parser.add_argument("--test_size", type=float, default=0.2, help="held-out share (default 0.2)")
    parser.add_argument("--permutations", type=int, default=100,
                        help="permuted targets for the null of the cosines between passes (default 100; 0: none)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the splits and permutations (default 0)")
    parser.add_argument("--compare_with", metavar="OTHER_RUN", default=None,
                        help="also fit OTHER_RUN (e.g. the finetuned model) on the shared questions; per-layer "
                             "cosine between the two runs' directions; its directions go to DIRS/compare_with")
    parser.add_argument("--compare_config", default=None, help="config for --compare_with (default: --config)")
    parser.add_argument("--device", default=None, help="torch device for the fits (default: cuda when available)")
    parser.add_argument("--json", action="store_true", help="print the whole result as JSON on stdout instead")
    parser.add_argument("--plots", metavar="DIR", default=None, help="write PNG plots into DIR")


def chosen_passes(data, spec: str | None) -> list[str]:
    if not spec:
        return [p for p in ("mcq", "self_conf", "other_conf") if p in data.passes]
    passes = [p.strip() for p in spec.split(",") if p.strip()]
    for p in passes:
        data.split(p)  # one-line error on an unknown pass
    if not passes:
        raise UserError("--passes is empty; e.g. --passes self_conf,other_conf")
    return passes


def _sweep(data, args, passes, layers, question_ids=None):
    from ..analysis.direction_sweep import direction_sweep, targets_for

    return direction_sweep(data, passes, targets_for(passes, args.target), position=args.position, layers=layers,
                           method=args.method, quantile=args.quantile, n_splits=args.splits,
                           test_size=args.test_size, permutations=args.permutations, seed=args.seed,
                           question_ids=question_ids, device=args.device)


def run(args) -> int:
    from ..analysis import direction_sweep as ds
    from ..analysis.data import open_run_data
    from ..analysis.directions import save_directions

    if not 0 < args.quantile <= 0.5:
        raise UserError(f"--quantile must be in (0, 0.5] (got {args.quantile})")
    if not 0 < args.test_size < 1:
        raise UserError(f"--test_size must be between 0 and 1 (got {args.test_size})")
    data = open_run_data(args.run, args.config)
    passes = chosen_passes(data, args.passes)
    stored = sorted(set.intersection(*(set(data.layers(p)) for p in passes)))
    layers = parse_layer_spec(args.layers, stored)
    other = comparison = None
    if args.compare_with:
        other_data = open_run_data(args.compare_with, args.compare_config or args.config)
        for p in passes:
            other_data.split(p)
            other_data.check_layers(p, layers)
        shared = shared_question_ids(data, other_data, passes[0])
        sweep = _sweep(data, args, passes, layers, shared)
        other = _sweep(other_data, args, passes, layers, shared)
        comparison = ds.compare_runs(sweep, other)
    else:
        sweep = _sweep(data, args, passes, layers)
    out = save_directions(args.out, sweep.dirs)
    if other is not None:
        save_directions(Path(args.out) / "compare_with", other.dirs)
    written = _plots(args, sweep, other, comparison)
    if args.json:
        payload = {**sweep.to_json(), "out": str(out), "plots": [str(p) for p in written]}
        if other is not None:
            payload = {"run": payload, "compare_with": other.to_json(), "cross_run_cosines": jsonable(comparison),
                       "n_shared_questions": sweep.n_questions}
        print(json.dumps(payload, indent=1))
        return 0
    text = ds.summary(sweep)
    if other is not None:
        text += f"\n\n== {args.compare_with} ==\n" + ds.summary(other) + "\n\n" + _comparison_text(comparison)
    text += f"\n\ndirections written to {out}" + "".join(f"\nplot: {p}" for p in written)
    print(text)
    return 0


def _comparison_text(comparison: dict) -> str:
    lines = ["cosine between the two runs' directions per layer (probe / meandiff)"]
    for p, by_kind in comparison.items():
        lines.append(f" {p}: " + "  ".join(f"{a['layer']}:{a['cos']:.2f}/{b['cos']:.2f}"
                                           for a, b in zip(by_kind["probe"], by_kind["meandiff"])))
    return "\n".join(lines)


def _plots(args, sweep, other, comparison) -> list:
    folder = plots_dir(args)
    if folder is None:
        return []
    from ..analysis import direction_plots as dp

    written = [dp.plot_scores(sweep, folder / "directions_scores.png", other),
               dp.plot_layer_heatmaps(sweep, folder / "directions_layer_cosines.png")]
    if sweep.pairs:
        written.append(dp.plot_pass_cosines(sweep, folder / "directions_pass_cosines.png"))
    if sweep.self_vs_other:
        written.append(dp.plot_self_vs_other(sweep, folder / "directions_self_vs_other.png", other))
    if comparison is not None:
        written.append(dp.plot_cross_run(comparison, folder / "directions_compare.png"))
    return written
