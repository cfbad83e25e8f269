"""`hf-introspect verify RUN`: check every shard of a run against the record written with it.

Exit 0 when every shard's size, row count and checksum match; 1 naming the damaged (or missing)
shards, which a rerun of the same collect command collects again.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN", help="a run folder (the --output_dir of a collect)")
    p.add_argument("--quick", action="store_true",
                   help="sizes and row counts only, no checksums (default: checksums too, reading every byte)")


def run(args: argparse.Namespace) -> int:
    from ..collection.integrity import expected_shards, find_damage
    from ..errors import UserError

    root = Path(args.run_dir)
    if not (root / "run_config.json").is_file():
        raise UserError(f"{root} holds no run_config.json; pass the --output_dir of a collect run")
    shards = [path for per_pass in expected_shards(root).values() for path, _ in per_pass]
    if not shards:
        raise UserError(f"{root}/run_config.json lists no shards (a run from before hf_introspect recorded them?)")
    start = time.perf_counter()
    damage = find_damage(root, full=not args.quick)
    elapsed = time.perf_counter() - start
    size = sum(p.stat().st_size for p in shards if p.is_file())
    if damage:
        for d in damage:
            print(f"damaged: {d}")
        print(f"{len(damage)} of {len(shards)} shards damaged; rerun the same collect command to collect them again")
        return 1
    what = "sizes and rows" if args.quick else "sizes, rows and checksums"
    if not (root / "dataset_dict.json").is_file():
        what += "; an unfinished run: only the shards written so far"
    print(f"ok: {len(shards)} shards, {size / 1e6:.1f} MB ({what}) checked in {elapsed:.1f} s")
    return 0
