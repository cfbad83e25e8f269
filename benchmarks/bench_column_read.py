"""Bytes read to get one layer (or a few) from an exported Hub-layout split (issue 17 item 11).

A synthetic run (``hf_introspect.testing.write_planted_run``: every position stored) is exported
as the Hub repo layout, then ``read_columns`` reads one or more layers through a byte-counting
filesystem: the bytes it reads are what a Hub download of the same request would fetch with
``HfFileSystem`` range reads. Printed per request: bytes read, the requested columns' compressed
chunk bytes (from the Parquet footers), their share of the files, and the ratio read / requested
(target <= 1.3). Run: ``.venv/bin/python benchmarks/bench_column_read.py [--questions N --hidden H
--layers L --row_group_size BYTES]`` or ``--run RUN_FOLDER`` for a real run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from hf_introspect.runs.column_read import ALWAYS, counting_local_filesystem, read_columns
from hf_introspect.runs.hub import export_hub_layout
from hf_introspect.testing import write_planted_run


def chunk_bytes(files: list[Path], columns: set[str]) -> tuple[int, int]:
    """(compressed bytes of the columns' chunks, total file bytes) over parquet files."""
    wanted = total = 0
    for path in files:
        md = pq.ParquetFile(path).metadata
        total += path.stat().st_size
        for rg in range(md.num_row_groups):
            group = md.row_group(rg)
            for c in range(group.num_columns):
                col = group.column(c)
                if col.path_in_schema.split(".", 1)[0] in columns:
                    wanted += col.total_compressed_size
    return wanted, total


def measure(folder: Path, config: str, split: str, columns: list[str]) -> dict:
    fs = counting_local_filesystem()
    t0 = time.perf_counter()
    ds = read_columns(str(folder), config, split, columns, fs=fs)
    seconds = time.perf_counter() - t0
    files = sorted((folder / config).glob(f"{split}-*.parquet"))
    requested, total = chunk_bytes(files, set(columns))
    with_small, _ = chunk_bytes(files, set(columns) | set(ALWAYS))
    return {"columns": columns, "rows": len(ds), "read": fs.bytes_read, "requested": requested,
            "with_small": with_small, "total": total, "seconds": seconds}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--questions", type=int, default=1000)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=8, help="num_layers (residual indices 0..layers)")
    ap.add_argument("--row_group_size", type=int, default=32 * 10**6, help="export's Arrow bytes per row group")
    ap.add_argument("--run", default=None, help="export this finished run folder instead of a synthetic one")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_column_read_") as tmp:
        if args.run:
            run = Path(args.run)
        else:
            run = write_planted_run(Path(tmp) / "run", n=args.questions, hidden=args.hidden, num_layers=args.layers)
        t0 = time.perf_counter()
        export_hub_layout(run, Path(tmp) / "hub", row_group_size=args.row_group_size)
        export_s = time.perf_counter() - t0
        config = next(p.name for p in (Path(tmp) / "hub").iterdir() if p.is_dir())
        files = sorted((Path(tmp) / "hub" / config).glob("mcq-*.parquet"))
        md = pq.ParquetFile(files[0]).metadata
        layers = sorted(c for c in pq.ParquetFile(files[0]).schema_arrow.names if c.startswith("activations_layer_"))
        what = run if args.run else (f"{args.questions} questions x {args.layers + 1} layers x hidden {args.hidden} "
                                     "(every position)")
        print(f"{what}: exported in {export_s:.1f} s; {len(files)} mcq file(s), {len(layers)} layers, row groups of "
              f"{args.row_group_size / 1e6:g} MB Arrow: {md.num_row_groups} row group(s) in the first file")
        print(f"{'request':<44} {'read MB':>8} {'asked MB':>9} {'share':>6} {'read/asked':>10} {'(+ids)':>7} {'s':>6}")
        for cols in ([layers[len(layers) // 2]], [layers[0], layers[-1]], layers):
            r = measure(Path(tmp) / "hub", config, "mcq", cols)
            name = cols[0] if len(cols) == 1 else f"{len(cols)} layers"
            print(f"{name:<44} {r['read'] / 1e6:8.2f} {r['requested'] / 1e6:9.2f} {r['requested'] / r['total']:6.1%} "
                  f"{r['read'] / r['requested']:10.3f} {r['read'] / r['with_small']:7.3f} {r['seconds']:6.2f}")


if __name__ == "__main__":
    main()
