"""What ``load_dataset("arrow", data_files=...)`` costs on disk, vs ``load_run`` (issue 17 item 6).

A synthetic run (every position stored) is written, then one split is opened both ways with an
empty HF datasets cache; the cache folder's bytes are printed before and after each. The "arrow"
builder re-writes every shard into the cache (the split again on disk); ``load_run`` /
``load_from_disk`` memory-maps the run's own files and writes nothing.
Run: ``.venv/bin/python benchmarks/bench_arrow_cache.py [--questions N --hidden H]``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--questions", type=int, default=500)
    ap.add_argument("--hidden", type=int, default=256)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_arrow_cache_") as tmp:
        cache = Path(tmp) / "hf_datasets_cache"
        os.environ["HF_DATASETS_CACHE"] = str(cache)  # before datasets is imported: read at import
        from datasets import load_dataset

        from hf_introspect import load_run
        from hf_introspect.testing import write_planted_run

        run = write_planted_run(Path(tmp) / "run", n=args.questions, hidden=args.hidden, num_layers=8)
        split = folder_bytes(run / "mcq")
        print(f"run split mcq: {split / 1e6:.1f} MB of Arrow shards ({args.questions} questions, 9 layers, hidden {args.hidden})")
        before = folder_bytes(cache)
        load_run(run, split="mcq")
        after_load_run = folder_bytes(cache)
        print(f"load_run(run, split='mcq'):                  cache {before / 1e6:.1f} -> {after_load_run / 1e6:.1f} MB")
        files = sorted(str(p) for p in (run / "mcq").glob("*.arrow"))
        load_dataset("arrow", data_files=files, split="train")
        after = folder_bytes(cache)
        print(f"load_dataset('arrow', data_files=shards):   cache {after_load_run / 1e6:.1f} -> {after / 1e6:.1f} MB "
              f"(+{(after - after_load_run) / max(split, 1):.2f}x the split)")


if __name__ == "__main__":
    main()
