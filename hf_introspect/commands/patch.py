"""`hf-introspect patch RUN --source_pass mcq --target_pass self_conf --layers ...`: write another
question's stored readout activation into a confidence prompt's readout token after block L
(low- vs high-MCQ-entropy quartiles) and measure the normalised shift of expected confidence
against random pairings."""

from __future__ import annotations

import argparse

from .analysis_common import emit, jsonable, open_from_args, plots_dir
from .causal_common import (add_causal_arguments, check_counts, load_model_for, mcq_entropy, run_shape, runner_options,
                            with_mcq)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="run folder written by `hf-introspect collect`")
    parser.add_argument("--config", default=None, help="config (model) of an exported folder")
    parser.add_argument("--source_pass", default="mcq", help="pass whose STORED readout activations are written in (default mcq)")
    parser.add_argument("--target_pass", default="self_conf", help="pass whose prompts are run and read out (default self_conf)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the pairings and bootstrap (default 0)")
    parser.add_argument("--json", action="store_true", help="print the whole result as JSON on stdout instead")
    parser.add_argument("--plots", metavar="DIR", default=None, help="write PNG plots into DIR")
    add_causal_arguments(parser, directions=False)


def run(args) -> int:
    from ..analysis.causal.pass_inputs import pass_inputs
    from ..analysis.causal.patch import patch
    from ..analysis.causal.plots import plot_patching
    from ..analysis.data import align
    from ..errors import UserError
    from .analysis_common import parse_layer_spec
    from .causal_common import model_layers

    check_counts(args)
    args.pass_name = args.target_pass
    data = open_from_args(args)
    data.split(args.source_pass)
    num_layers, _ = run_shape(data)
    model_layers(args.layers, num_layers)  # outside the model: its own message
    layers = parse_layer_spec(args.layers, data.layers(args.source_pass))  # the donors' activations must be stored
    rows, mcq_rows = with_mcq(data, args.target_pass, args.num_questions)
    target_ids = data.question_ids(args.target_pass)[rows]
    rows_t, src_rows = align(target_ids, data.question_ids(args.source_pass))
    if len(rows_t) < 8:
        raise UserError(f"only {len(rows_t)} questions are in both {args.target_pass} and {args.source_pass}; "
                        "patching needs at least 8 (two quartiles of 2)")
    rows, mcq_rows = rows[rows_t], mcq_rows[rows_t]
    inputs = pass_inputs(data, args.target_pass, rows)
    donors = {layer: data.matrix(args.source_pass, layer, "answer", rows=src_rows) for layer in layers}
    entropy = mcq_entropy(data, mcq_rows)
    lm = load_model_for(args, data)
    result = patch(lm, inputs, donors, entropy, source_pass=args.source_pass, **runner_options(args))
    folder = plots_dir(args)
    if folder is not None:
        plot_patching(result, folder / f"patch_{args.source_pass}_to_{args.target_pass}.png")
    return emit(args, jsonable(result.to_json()), summary(result))


def summary(result) -> str:
    import numpy as np

    lines = [f"patching {result.source_pass} -> {result.target_pass}: {result.n_questions} questions, {result.n_pairs} "
             f"low/high-entropy pairs, {result.rows} readouts in {result.seconds:.1f} s",
             "layer  shift   95% interval        random pairings (median)   p     q(BH)  low->high dp/dt  high->low dp/dt"]
    for r in result.layers:
        med = np.nanmedian(r.null_shifts) if r.null_shifts else np.nan
        lines.append(f"{r.layer:5d} {r.normalised_shift:+6.3f} [{r.interval[0]:+6.3f}, {r.interval[1]:+6.3f}]   {med:+6.3f}"
                     f"                  {r.p_value:6.3f} {r.p_fdr:6.3f}  {r.low_to_high['mean_shift']:+5.1f}/"
                     f"{r.low_to_high['mean_gap']:+5.1f}      {r.high_to_low['mean_shift']:+5.1f}/{r.high_to_low['mean_gap']:+5.1f}")
    return "\n".join(lines)
