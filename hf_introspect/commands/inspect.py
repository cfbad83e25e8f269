"""`hf-introspect inspect` / `scripts/inspect_collected_data.py`: summarise one run, or compare two.

The seed's commands work as written::

    python scripts/inspect_collected_data.py --data_dir test_run_base/mcq --show_examples 3
    python scripts/inspect_collected_data.py --data_dir full_run_base/mcq \\
        --compare_with full_run_finetuned/mcq --show_examples 5

``--data_dir`` may also be a run's root folder; an exported folder or Hub repo (``--config NAME``)
is read through ``hf_introspect.runs.read``.
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data_dir", required=True,
                   help="a run folder, one pass's folder (RUN/mcq), an exported folder or a Hub repo id")
    p.add_argument("--compare_with", default=None, help="a second run (e.g. the finetuned one), joined on question_id")
    p.add_argument("--show_examples", type=int, default=0, metavar="N",
                   help="print N example questions (with --compare_with: flipped questions first)")
    p.add_argument("--split", default=None, choices=["mcq", "self_conf", "other_conf"],
                   help="pass the examples come from (default: the folder --data_dir names, else mcq)")
    p.add_argument("--config", default=None, help="config name in an exported folder or Hub repo (e.g. the model)")
    p.add_argument("--compare_config", default=None, help="config name for --compare_with (default: --config)")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of text")
    p.add_argument("--plots", default=None, metavar="DIR", help="also write PNG plots to DIR")


def run(args: argparse.Namespace) -> int:
    from ..errors import UserError
    from ..analysis.inspect.metrics import require_analysis

    if args.show_examples < 0:
        raise UserError(f"--show_examples must be >= 0 (got {args.show_examples})")
    require_analysis("sklearn", "scipy")
    if args.plots:
        require_analysis("matplotlib")
    from datasets.utils import logging as ds_logging

    from ..analysis.inspect.compare import build_comparison
    from ..analysis.inspect.render import render_comparison, render_report, to_json
    from ..analysis.inspect.run_view import open_run
    from ..analysis.inspect.summary import build_report

    bars = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()  # "Generating split" bars of exported folders are noise here
    try:
        run_a = open_run(args.data_dir, config=args.config, split=args.split)
        if args.compare_with:
            run_b = open_run(args.compare_with, config=args.compare_config or args.config, split=args.split)
            report = build_comparison(run_a, run_b, show_examples=args.show_examples)
        else:
            run_b = None
            report = build_report(run_a, show_examples=args.show_examples)
    finally:
        if bars:
            ds_logging.enable_progress_bar()
    if args.plots:
        from ..analysis.inspect.plots import write_plots

        report["plots"] = [str(p) for p in write_plots(args.plots, run_a, run_b, report)]
    if args.json:
        print(to_json(report))
    elif run_b is None:
        print(render_report(report), end="")
    else:
        print(render_comparison(report), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    from ..cli import standalone_main

    return standalone_main("inspect", "inspect_collected_data.py",
                           "Summarise a collected run (behaviour, confidence, calibration, activations), "
                           "or compare two runs.", argv)


if __name__ == "__main__":
    sys.exit(main())
