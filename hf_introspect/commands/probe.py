"""`hf-introspect probe RUN --target entropy[,b,c]`: layerwise linear probes with split intervals and a
permutation null (see hf_introspect.analysis.layer_sweep and docs/analysis.md)."""

from __future__ import annotations

import json
import re

from ..analysis.ids import shared_rows
from ..errors import UserError
from .analysis_common import add_run_arguments, emit, layers_from_args, open_from_args, plots_dir


def add_arguments(parser) -> None:
    add_run_arguments(parser)
    parser.add_argument("--target", required=True,
                        help="target(s), comma-separated: a numeric column (entropy, logit_margin, self_confidence, "
                             "char_length...), logit_gap | top_prob | top_logit, is_correct, parsed_answer | "
                             "correct_answer_letter, or PASS.COLUMN from another pass (mcq.entropy)")
    parser.add_argument("--splits", type=int, default=100, help="random train/test splits by question (default 100)")
    parser.add_argument("--test_size", type=float, default=0.2, help="share of questions held out (default 0.2)")
    parser.add_argument("--method", default="ridge", choices=("ridge", "logistic", "ep"),
                        help="ridge (default: all dimensions; penalty chosen inside each training split by "
                             "GCV over its training questions only, never the test labels; each permuted "
                             "copy chooses its own), "
                             "logistic, or ep (the reference: scaler -> PCA(100) -> Ridge(1000); PCA(256) + "
                             "logistic for classes)")
    parser.add_argument("--selection", default="gcv", choices=("gcv", "loo"),
                        help="ridge's penalty criterion inside each training split: gcv (default) or exact "
                             "leave-one-out as scikit-learn's RidgeCV (2.7x slower at 1,000 questions)")
    parser.add_argument("--permutations", type=int, default=100,
                        help="label permutations per layer for the null (default 100; 0: none)")
    parser.add_argument("--compare_with", metavar="OTHER_RUN", default=None,
                        help="run the same probes on OTHER_RUN (e.g. the finetuned model) on the shared questions")
    parser.add_argument("--device", default=None, help="torch device for the fits (default: cuda when available)")


def targets_of(spec: str) -> list[str]:
    names = [t.strip() for t in spec.split(",") if t.strip()]
    if not names:
        raise UserError("--target is empty; e.g. --target entropy or --target entropy,is_correct")
    return names


def sweep_all(data, args, targets, layers, rows=None):
    from ..analysis.layer_sweep import probe_sweep

    return [probe_sweep(data, args.pass_name, t, position=args.position, layers=layers, n_splits=args.splits,
                        test_size=args.test_size, method=args.method, permutations=args.permutations,
                        seed=args.seed, rows=rows, device=args.device, selection=args.selection) for t in targets]


def run(args) -> int:
    from ..analysis.layer_sweep import summary

    targets = targets_of(args.target)
    data = open_from_args(args)
    layers = layers_from_args(args, data)
    other = None
    if args.compare_with:
        other_data = open_from_args(args, args.compare_with)
        other_data.check_layers(args.pass_name, layers)
        rows_a, rows_b = shared_rows(data, other_data, args.pass_name)  # analysis.ids
        results = sweep_all(data, args, targets, layers, rows_a)
        other = sweep_all(other_data, args, targets, layers, rows_b)
    else:
        results = sweep_all(data, args, targets, layers)
    folder = plots_dir(args)
    written = []
    if folder is not None:
        from ..analysis.layer_plots import plot_layer_curves

        name = re.sub(r"[^\w.-]+", "_", f"probe_{args.pass_name}_{args.position}_{'+'.join(targets)}")
        written.append(plot_layer_curves(results, folder / f"{name}.png", compare=other))
    if args.json:
        one = (lambda rs: rs[0].to_json() if len(rs) == 1 else [r.to_json() for r in rs])
        payload = one(results) if other is None else {"run": one(results), "compare_with": one(other),
                                                      "n_shared_questions": int(len(rows_a))}
        print(json.dumps(payload, indent=1))
        return 0
    text = "\n\n".join(summary(r) for r in results)
    if other is not None:
        text = (f"== {args.run} ({len(rows_a)} questions shared with {args.compare_with}) ==\n{text}\n\n"
                f"== {args.compare_with} ==\n" + "\n\n".join(summary(r) for r in other))
    text += "".join(f"\nplot: {p}" for p in written)
    return emit(args, None, text)
