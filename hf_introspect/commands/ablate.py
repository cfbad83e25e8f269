"""`hf-introspect ablate RUN --directions DIRS`: project a direction out of the readout token's
residual after chosen blocks; change in mean confidence and in its correlation with the MCQ
entropy, against random orthogonal directions."""

from __future__ import annotations

import argparse

from .analysis_common import add_run_arguments, emit, jsonable
from .causal_common import add_causal_arguments, load_model_for, mcq_entropy, open_with_directions, runner_options, with_mcq


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser, pass_default="self_conf", position=False, layers=False)
    add_causal_arguments(parser)


def run(args) -> int:
    from ..analysis.causal.ablate import ablate
    from ..analysis.causal.pass_inputs import pass_inputs

    data, _, dirs = open_with_directions(args)
    rows, mcq_rows = with_mcq(data, args.pass_name, args.num_questions)
    inputs = pass_inputs(data, args.pass_name, rows)
    entropy = mcq_entropy(data, mcq_rows)
    lm = load_model_for(args, data)
    result = ablate(lm, inputs, dirs, entropy, **runner_options(args))
    return emit(args, jsonable(result.to_json()), summary(result))


def summary(result) -> str:
    import numpy as np

    lines = [f"ablation {result.pass_name}: {result.n_questions} questions, {result.rows} readouts in {result.seconds:.1f} s; "
             f"baseline mean confidence {result.layers[0].baseline_mean_confidence:.2f}, "
             f"r(confidence, MCQ entropy) {result.layers[0].baseline_corr:+.3f}",
             "layer  d(mean)   p     q(BH)   d(r)     p     q(BH)   control |d(r)| 95%"]
    for r in result.layers:
        c95 = np.nanpercentile(np.abs(r.control_delta_corrs), 95) if r.control_delta_corrs else np.nan
        lines.append(f"{r.layer:5d} {r.delta_mean:+7.3f} {r.p_value_mean:6.3f} {r.p_fdr_mean:6.3f}  {r.delta_corr:+7.4f} "
                     f"{r.p_value_corr:6.3f} {r.p_fdr_corr:6.3f}  {c95:.4f}")
    return "\n".join(lines)
