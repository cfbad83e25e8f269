"""`hf-introspect steer RUN --directions DIRS`: add strength x direction at the readout token
after chosen blocks and measure the stated confidence's dose-response against random directions."""

from __future__ import annotations

import argparse
import re

from .analysis_common import add_run_arguments, emit, jsonable, plots_dir
from .causal_common import add_causal_arguments, load_model_for, open_with_directions, parse_numbers, runner_options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser, pass_default="self_conf", position=False, layers=False)
    add_causal_arguments(parser)
    parser.add_argument("--strengths", default="-4,-2,0,2,4",
                        help="strengths, in units of the layer's mean readout activation norm (default -4,-2,0,2,4)")
    parser.add_argument("--raw_strength", action="store_true", help="strengths are raw vector lengths instead")
    # "--strengths -4,-2,0,2,4" as the issue writes it: let argparse take "-4,-2,..." as a value,
    # not as an unknown option (its own rule only knows single negative numbers).
    if hasattr(parser, "_negative_number_matcher"):
        parser._negative_number_matcher = re.compile(r"^-\d+$|^-\d*\.\d+$|^-[\d.]+(,-?[\d.]+)+$")


def run(args) -> int:
    import numpy as np

    from ..analysis.causal.pass_inputs import pass_inputs, readout_norms
    from ..analysis.causal.plots import plot_steering
    from ..analysis.causal.steer import steer

    strengths = parse_numbers(args.strengths, "--strengths")
    data, layers, dirs = open_with_directions(args)
    units = None if args.raw_strength else readout_norms(data, args.pass_name, layers)
    inputs = pass_inputs(data, args.pass_name, np.arange(min(args.num_questions, data.n_questions(args.pass_name))))
    lm = load_model_for(args, data)
    result = steer(lm, inputs, dirs, strengths, units=units, **runner_options(args))
    folder = plots_dir(args)
    if folder is not None:
        plot_steering(result, folder / f"steer_{args.pass_name}.png")
    return emit(args, jsonable(result.to_json()), summary(result))


def summary(result) -> str:
    import numpy as np

    unit = "x mean readout norm" if result.strength_unit == "mean_norm" else "raw"
    lines = [f"steering {result.pass_name}: {result.n_questions} questions, strengths {result.layers[0].strengths} ({unit}); "
             f"{result.rows} readouts in {result.seconds:.1f} s",
             "layer   norm   slope  control slopes (5-95%)    p      q(BH)  mean confidence per strength"]
    for r in result.layers:
        lo, hi = np.percentile(r.control_slopes, [5, 95]) if r.control_slopes else (np.nan, np.nan)
        lines.append(f"{r.layer:5d} {r.unit:7.2f} {r.slope:7.3f}  [{lo:7.3f}, {hi:7.3f}]  {r.p_value:6.3f} {r.p_fdr:6.3f}  "
                     + " ".join(f"{v:5.1f}" for v in r.mean_confidence))
    return "\n".join(lines)
