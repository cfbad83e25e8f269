"""Read speed for the analysis access pattern: one layer, one position, every question.

Compares ``hf_introspect.layer_matrix(ds, layer, "last")`` on a run's split (Arrow, memory-mapped)
with ``np.load(path, mmap_mode="r")[:, -1]`` on the same activations in the seed's per-layer
``.npy`` layout ([n_questions, max_positions, hidden] float16, written by ``export --format npy``).
Both read warm from the page cache; best of --repeats; prints the time per layer and the ratio.

    python benchmarks/bench_read.py                        # synthetic split: 4000 questions x ~150 positions x 576
    python benchmarks/bench_read.py --run RUN_DIR --split mcq   # or a real run

The synthetic split has the exact schema and storage of a run's split (Array2D((None, hidden),
float16) per layer, written in 100-row record batches like the collector's shards).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def synthetic_run(folder: Path, n: int, hidden: int, mean_len: int, n_layers: int, seed: int = 0) -> Path:
    """A minimal run folder (run_config, one `mcq` split) with random float16 activations."""
    import json

    import pyarrow as pa
    from datasets import Array2D, Features, List, Value
    from datasets.arrow_writer import ArrowWriter

    rng = np.random.default_rng(seed)
    lens = rng.integers(mean_len // 2, mean_len * 3 // 2, size=n).astype(np.int32)  # (n,) positions per question
    feats = Features({"question_id": Value("string"), "answer_token_index": Value("int32"),
                      "activation_positions": List(Value("int32")),
                      **{f"activations_layer_{i:02d}": Array2D((None, hidden), "float16") for i in range(n_layers)}})
    batches = []
    for lo in range(0, n, 100):
        b = lens[lo:lo + 100]
        outer = np.concatenate([[0], np.cumsum(b)]).astype(np.int32)            # (rows+1,)
        inner = (np.arange(outer[-1] + 1) * hidden).astype(np.int32)            # (positions+1,)
        cols = {"question_id": pa.array([f"q{i}" for i in range(lo, lo + len(b))]),
                "answer_token_index": pa.array(b - 1),
                "activation_positions": pa.ListArray.from_arrays(pa.array(outer), pa.array(
                    np.concatenate([np.arange(k, dtype=np.int32) for k in b])))}
        for i in range(n_layers):
            vals = pa.array(rng.standard_normal(outer[-1] * hidden, dtype=np.float32).astype(np.float16))
            cols[f"activations_layer_{i:02d}"] = pa.ListArray.from_arrays(
                pa.array(outer), pa.ListArray.from_arrays(pa.array(inner), vals))
        batches.append(pa.RecordBatch.from_pydict(cols, schema=feats.arrow_schema))
    run = folder / "run"
    (run / "mcq").mkdir(parents=True)
    shard = run / "mcq" / "data-00000-of-00001.arrow"
    with ArrowWriter(path=str(shard), features=feats) as writer:
        for batch in batches:  # one record batch each, as the collector's map writes them
            writer.write_table(pa.Table.from_batches([batch]))
        writer.finalize()
    from hf_introspect.collection.storage import finalize_run, finalize_split

    finalize_split(run, "mcq", 1, n, "bench-read", "synthetic")
    (run / "run_config.json").write_text(json.dumps({"run_id": "bench-read", "synthetic": True}))
    finalize_run(run, ["mcq"])
    return run


def best_of(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default=None, help="existing run folder (default: a synthetic one)")
    ap.add_argument("--split", default="mcq")
    ap.add_argument("--questions", type=int, default=4000)
    ap.add_argument("--hidden", type=int, default=576)
    ap.add_argument("--mean_len", type=int, default=150, help="mean stored positions per question (synthetic)")
    ap.add_argument("--layers", type=int, default=2, help="layers in the synthetic run")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)

    from hf_introspect import layer_matrix, load_run
    from hf_introspect.runs.npy_export import export_npy

    tmp = Path(tempfile.mkdtemp(prefix="bench_read_"))
    try:
        run = Path(args.run) if args.run else synthetic_run(tmp, args.questions, args.hidden, args.mean_len, args.layers)
        npy = tmp / "npy"
        export_npy(run, npy, passes=[args.split])
        ds = load_run(run, split=args.split)
        columns = [c for c in ds.column_names if c.startswith("activations_layer_")]
        t_ours = t_npy = 0.0
        for col in columns:
            path = npy / args.split / f"{col}.npy"
            np.load(path, mmap_mode="r")[:, -1].copy()   # warm the page cache for both
            layer_matrix(ds, col)
            a, x = best_of(lambda: layer_matrix(ds, col, "last"), args.repeats)
            b, y = best_of(lambda: np.array(np.load(path, mmap_mode="r")[:, -1]), args.repeats)
            assert x.shape == y.shape and x.dtype == y.dtype == np.float16
            t_ours += a
            t_npy += b
        n, hidden = x.shape
        mb = n * hidden * 2 / 1e6
        print(f"{run} [{args.split}]: {n} questions x hidden {hidden}, {len(columns)} layer(s); "
              f"{mb:.1f} MB out per layer")
        print(f"layer_matrix(ds, layer, 'last')       {t_ours / len(columns) * 1e3:8.2f} ms/layer")
        print(f"np.load(mmap_mode='r')[:, -1]         {t_npy / len(columns) * 1e3:8.2f} ms/layer")
        print(f"ratio layer_matrix / np.load: {t_ours / t_npy:.2f}x (target <= 2x)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
