"""`hf-introspect transfer RUN --train mcq --test self_conf,other_conf --target mcq.entropy`: a probe trained
on one pass applied to the other passes' activations of held-out questions (centered / separate
standardisation), transfer ratio, the 2x2 self/other cross-prediction, and the shuffled-alignment
control (see hf_introspect.analysis.transfer and docs/analysis-directions.md)."""

from __future__ import annotations

import json

from ..analysis.ids import shared_question_ids
from ..errors import UserError
from .analysis_common import parse_layer_spec, plots_dir


def add_arguments(parser) -> None:
    parser.add_argument("run", metavar="RUN",
                        help="run folder, one split folder, an exported folder, or a Hub repo id (USER/NAME)")
    parser.add_argument("--config", default=None, help="config (model) of an exported folder / Hub repo")
    parser.add_argument("--train", default="mcq", help="pass the probe is trained on (default mcq)")
    parser.add_argument("--test", default="self_conf,other_conf",
                        help="passes it is applied to, comma-separated (default self_conf,other_conf)")
    parser.add_argument("--target", default="mcq.entropy",
                        help="numeric target of the training pass's questions (default mcq.entropy)")
    parser.add_argument("--position", default="answer",
                        help="token read: answer (readout, default) | question_end | options_end | mean:question | int")
    parser.add_argument("--layers", default="all", help="stored layers: all | 0,8,16-20 (default all)")
    parser.add_argument("--splits", type=int, default=10,
                        help="random train/test splits by question, the same for every layer (default 10)")
    parser.add_argument("--test_size", type=float, default=0.2, help="held-out share (default 0.2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the splits and shuffles (default 0)")
    parser.add_argument("--no_cross", action="store_true", help="skip the 2x2 self/other cross-prediction")
    parser.add_argument("--compare_with", metavar="OTHER_RUN", default=None,
                        help="the same analysis on OTHER_RUN (e.g. the finetuned model), on the shared questions")
    parser.add_argument("--compare_config", default=None, help="config for --compare_with (default: --config)")
    parser.add_argument("--device", default=None, help="torch device for the fits (default: cuda when available)")
    parser.add_argument("--json", action="store_true", help="print the whole result as JSON on stdout instead")
    parser.add_argument("--plots", metavar="DIR", default=None, help="write PNG plots into DIR")


def _sweep(data, args, tests, layers, question_ids=None):
    from ..analysis.transfer_sweep import transfer_sweep

    return transfer_sweep(data, args.train, tests, args.target, position=args.position, layers=layers,
                          n_splits=args.splits, test_size=args.test_size, seed=args.seed, cross=not args.no_cross,
                          question_ids=question_ids, device=args.device)


def run(args) -> int:
    from ..analysis.data import open_run_data
    from ..analysis.transfer_sweep import summary

    data = open_run_data(args.run, args.config)
    tests = [t.strip() for t in args.test.split(",") if t.strip()]
    if not tests:
        raise UserError("--test is empty; e.g. --test self_conf,other_conf")
    for p in [args.train] + tests:
        data.split(p)
    stored = sorted(set.intersection(*(set(data.layers(p)) for p in [args.train] + tests)))
    layers = parse_layer_spec(args.layers, stored)
    other = None
    if args.compare_with:
        other_data = open_run_data(args.compare_with, args.compare_config or args.config)
        shared = shared_question_ids(data, other_data, args.train)
        result = _sweep(data, args, tests, layers, shared)
        other = _sweep(other_data, args, tests, layers, shared)
    else:
        result = _sweep(data, args, tests, layers)
    written = []
    folder = plots_dir(args)
    if folder is not None:
        from ..analysis.direction_plots import plot_transfer

        written.append(plot_transfer(result, folder / f"transfer_{args.train}_{args.position}.png", other))
    if args.json:
        payload = {**result.to_json(), "plots": [str(p) for p in written]}
        if other is not None:
            payload = {"run": payload, "compare_with": other.to_json(), "n_shared_questions": result.n_questions}
        print(json.dumps(payload, indent=1))
        return 0
    text = summary(result)
    if other is not None:
        text += f"\n\n== {args.compare_with} ==\n" + summary(other)
    print(text + "".join(f"\nplot: {p}" for p in written))
    return 0
