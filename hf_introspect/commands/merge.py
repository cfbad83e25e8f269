"""`hf-introspect merge RUN_A RUN_B ... --to RUN`: runs on disjoint question subsets -> one run."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", help="finished run folders: same model and settings, different questions")
    p.add_argument("--to", required=True, help="new run folder (must not exist or be empty)")
    p.add_argument("--copy", action="store_true", help="copy the Arrow shards instead of hard-linking them")


def run(args: argparse.Namespace) -> int:
    from ..runs.merge import merge_runs

    merged = merge_runs(args.runs, args.to, copy_files=args.copy)
    rows = ", ".join(f"{n} {s.num_rows} rows" for n, s in merged.splits.items())
    print(f"merged {len(args.runs)} runs into {merged.path}: {rows} (run_id {merged.run_config['run_id']})")
    return 0
