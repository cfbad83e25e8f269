"""Write speed of the shard path: the collector's ``Dataset.map`` vs ``np.save`` of the same arrays.

Synthetic float16 activations of realistic shapes are built once (not timed), as the per-row,
per-layer ``(n_positions, hidden)`` arrays that ``inference.run_batch`` hands to the shard
function. Then, on the same disk, in round-robin order over ``--repeats`` (median reported):

* ``np.save``       the ceiling: every row x layer array ``np.save``d, one after another, into one
                    open file per shard (no encoding at all).
* ``map lists``     what the collector did before commit d31a5c1: per shard one ``Dataset.map(fn,
                    batched=True, batch_size=shard_rows, features=..., cache_file_name=...,
                    new_fingerprint=..., load_from_cache_file=False)``, fn returning
                    ``{column: [ndarray per row]}`` (datasets encodes every row separately).
* ``map table``     what it does since: the same map on ``ds.with_format("arrow")``; fn returns a
                    ``pa.Table`` = the input columns (zero-copy) + one Array2D storage column per
                    layer built from ONE flat float16 buffer plus int32 offsets (one concatenate of
                    the rows per layer, then zero-copy ``pa.ListArray.from_arrays``).
* ``map table (rows->reused buf)``  the same, the rows copied into per-layer buffers allocated once
                    per pass and reused for every shard (fresh memory costs page faults: on this VM
                    ~1 s per GB of system time, which is most of what ``np.concatenate`` costs)
* ``map table, flat``  the same, with the flat per-layer buffers already filled: the collector's
                    write path (it copies each micro-batch's rows into the shard's reused buffers
                    during inference, so nothing is copied at write time).
* ``map table, flat, 2 writers``  the same maps, two shards at a time in two threads: the
                    collector's write path on a GPU storing more than the last position.
* ``ArrowWriter``   ``ArrowWriter.write_table`` of that table to a fresh temp path, then
                    ``os.replace`` (as atomic as map's shard files, without map). Map creates its
                    temp file with ``NamedTemporaryFile`` and reopens it with ``"wb"``: on ext4
                    (``auto_da_alloc``) closing a file truncated that way flushes it (here ~0.3 s
                    per GB in ``close()``), which is most of the gap between the two.

Rates are activation bytes / wall seconds; the page cache is flushed (``os.sync``, not timed)
before each measurement, and ``--fsync`` adds an fsync of every file to the timed part.

    python benchmarks/bench_write.py                  # SmolLM2 shapes + an 8B-like case, ~3 min
    python benchmarks/bench_write.py --cases smollm --repeats 5
    python benchmarks/bench_write.py --dir /mnt/fast  # another disk

Cases: ``smollm`` = 31 residual layers x 150-230 positions x 576, 120 rows in 40-row shards (the
collector's default shard: save_every 10 x batch_size 4), ~0.8 GB; ``8b`` = 33 x 192 x 4096,
24 rows in 8-row shards, ~1.2 GB (sized for this 24 GB machine; a 40-row 8B shard is 2 GB).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

CASES = {
    "smollm": dict(layers=31, hidden=576, min_len=150, max_len=230, rows=120, shard_rows=40),
    "8b": dict(layers=33, hidden=4096, min_len=192, max_len=192, rows=24, shard_rows=8),
}


def load():
    return tuple(round(x, 2) for x in os.getloadavg())


def layer_column(i: int) -> str:
    return f"activations_layer_{i:02d}"


class Data:
    """Flat per-layer buffers per shard; each row's array is a view into them (as run_batch's
    per-row arrays are separate arrays of the same shape and dtype)."""

    def __init__(self, layers, hidden, min_len, max_len, rows, shard_rows, seed=0):
        rng = np.random.default_rng(seed)
        self.layers, self.hidden, self.rows, self.shard_rows = layers, hidden, rows, shard_rows
        self.lens = rng.integers(min_len, max_len + 1, size=rows)
        self.shards = []  # (lo, hi, offsets (rows+1,), flats[layer] (tokens, hidden))
        block = rng.standard_normal(1 << 22, dtype=np.float32).astype(np.float16)  # reused noise
        for lo in range(0, rows, shard_rows):
            hi = min(lo + shard_rows, rows)
            offsets = np.concatenate([[0], np.cumsum(self.lens[lo:hi])]).astype(np.int32)
            flats = []
            for j in range(layers):
                n = int(offsets[-1]) * hidden
                reps = -(-n // block.size)
                flat = np.tile(np.roll(block, j), reps)[:n].reshape(-1, hidden)  # (tokens, hidden)
                flats.append(flat)
            self.shards.append((lo, hi, offsets, flats))

    @property
    def nbytes(self) -> int:
        return sum(f.nbytes for _, _, _, flats in self.shards for f in flats)

    def row_arrays(self, shard) -> list[list[np.ndarray]]:
        """per_layer[j][r]: (len_r, hidden) view."""
        lo, hi, offsets, flats = shard
        return [[flats[j][offsets[r]:offsets[r + 1]] for r in range(hi - lo)] for j in range(self.layers)]


def array2d_storage(flat: np.ndarray, row_offsets: np.ndarray) -> pa.Array:
    """list<list<float16>> (Array2D((None, hidden)) storage) from a (tokens, hidden) buffer, zero-copy.

    row_offsets: (rows+1,) int32 token offsets. Requires tokens * hidden < 2**31 (int32 offsets).
    """
    tokens, hidden = flat.shape
    values = pa.array(flat.reshape(-1))  # zero-copy for a contiguous float16 numpy buffer
    inner = pa.ListArray.from_arrays(pa.array(np.arange(0, (tokens + 1) * hidden, hidden, dtype=np.int32)), values)
    return pa.ListArray.from_arrays(pa.array(row_offsets.astype(np.int32)), inner)


def features_for(d: Data):
    from datasets import Array2D, Features, Value

    return Features({"row": Value("int64"), "question_id": Value("string"), "seq_len": Value("int32"),
                     **{layer_column(j): Array2D((None, d.hidden), "float16") for j in range(d.layers)}})


def base_dataset(d: Data):
    from datasets import Dataset

    return Dataset.from_dict({"row": list(range(d.rows)), "question_id": [f"q{i:05d}" for i in range(d.rows)],
                              "seq_len": [int(x) for x in d.lens]})


def files_fsync(folder: Path):
    for p in folder.iterdir():
        fd = os.open(p, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)


# ------------------------------------------------------------------------------------- methods
def m_npsave(d: Data, folder: Path, fsync: bool):
    for i, shard in enumerate(d.shards):
        with open(folder / f"shard-{i:05d}.npy", "wb") as f:
            for per_layer in d.row_arrays(shard):
                for a in per_layer:
                    np.save(f, a)
            if fsync:
                f.flush()
                os.fsync(f.fileno())


def m_map_lists(d: Data, folder: Path, fsync: bool, writer_batch_size=None):
    ds, feats = base_dataset(d), features_for(d)
    extra = {"writer_batch_size": writer_batch_size} if writer_batch_size else {}
    for i, shard in enumerate(d.shards):
        lo, hi = shard[0], shard[1]
        per_layer = d.row_arrays(shard)

        def fn(batch):
            out = {layer_column(j): [] for j in range(d.layers)}
            for r in range(len(batch["row"])):  # per-row appends, as the collector's shard fn
                for j in range(d.layers):
                    out[layer_column(j)].append(per_layer[j][r])
            return out

        ds.select(range(lo, hi)).map(fn, batched=True, batch_size=hi - lo, features=feats,
                                     cache_file_name=str(folder / f"data-{i:05d}.arrow"),
                                     new_fingerprint=f"bench-lists-{i}", load_from_cache_file=False, **extra)
    if fsync:
        files_fsync(folder)


def shard_table(d: Data, shard, batch: pa.Table, prebuilt: bool, buffers: list | None = None) -> pa.Table:
    """Input columns + one Array2D storage column per layer. prebuilt: use the shard's flat
    buffers as they are; else copy the per-row arrays into ``buffers`` (reused across shards) or,
    without them, into a fresh np.concatenate."""
    lo, hi, offsets, flats = shard
    cols, names = list(batch.columns), list(batch.column_names)
    per_layer = None if prebuilt else d.row_arrays(shard)
    for j in range(d.layers):
        if prebuilt:
            flat = flats[j]
        elif buffers is not None:
            flat = np.concatenate(per_layer[j], out=buffers[j][:offsets[-1]])  # (tokens, hidden)
        else:
            flat = np.concatenate(per_layer[j])
        cols.append(array2d_storage(flat, offsets))
        names.append(layer_column(j))
    return pa.Table.from_arrays(cols, names=names)


def m_map_table(d: Data, folder: Path, fsync: bool, prebuilt: bool = False, reuse: bool = False):
    ds, feats = base_dataset(d).with_format("arrow"), features_for(d)
    most = max(int(s[2][-1]) for s in d.shards)
    buffers = [np.empty((most, d.hidden), np.float16) for _ in range(d.layers)] if reuse else None  # once per pass
    for i, shard in enumerate(d.shards):
        lo, hi = shard[0], shard[1]
        ds.select(range(lo, hi)).map(lambda batch: shard_table(d, shard, batch, prebuilt, buffers), batched=True,
                                     batch_size=hi - lo, features=feats,
                                     cache_file_name=str(folder / f"data-{i:05d}.arrow"),
                                     new_fingerprint=f"bench-table-{i}-{prebuilt}", load_from_cache_file=False)
    if fsync:
        files_fsync(folder)


def m_map_table_concurrent(d: Data, folder: Path, fsync: bool, writers: int = 2):
    """The collector's write path on a GPU that stores more than the last position: the same maps,
    ``writers`` shards at a time (collector.ShardWriters), so one writer's close-time flush overlaps
    the next shard's write into the page cache."""
    from concurrent.futures import ThreadPoolExecutor

    ds, feats = base_dataset(d).with_format("arrow"), features_for(d)

    def write(i, shard):
        lo, hi = shard[0], shard[1]
        ds.select(range(lo, hi)).map(lambda batch: shard_table(d, shard, batch, True), batched=True,
                                     batch_size=hi - lo, features=feats,
                                     cache_file_name=str(folder / f"data-{i:05d}.arrow"),
                                     new_fingerprint=f"bench-table-conc-{i}", load_from_cache_file=False)

    with ThreadPoolExecutor(writers) as pool:
        for f in [pool.submit(write, i, shard) for i, shard in enumerate(d.shards)]:
            f.result()
    if fsync:
        files_fsync(folder)


def m_arrowwriter(d: Data, folder: Path, fsync: bool):
    from datasets.arrow_writer import ArrowWriter

    ds, feats = base_dataset(d), features_for(d)
    table = ds.data.table
    for i, shard in enumerate(d.shards):
        lo, hi = shard[0], shard[1]
        t = shard_table(d, shard, table.slice(lo, hi - lo), prebuilt=True)
        final = folder / f"data-{i:05d}.arrow"
        tmp = folder / f".tmp-{final.name}"  # a fresh path: atomic like map's temp file + rename
        with ArrowWriter(path=str(tmp), features=feats) as w:
            w.write_table(t)
            w.finalize()
        os.replace(tmp, final)
    if fsync:
        files_fsync(folder)


METHODS = {
    "np.save (ceiling)": m_npsave,
    "map lists (per-row; old)": m_map_lists,
    "map table (concat rows)": lambda d, f, s: m_map_table(d, f, s, prebuilt=False),
    "map table (rows->reused buf)": lambda d, f, s: m_map_table(d, f, s, prebuilt=False, reuse=True),
    "map table, flat (collector)": lambda d, f, s: m_map_table(d, f, s, prebuilt=True),
    "map table, flat, 2 writers (GPU)": m_map_table_concurrent,
    "ArrowWriter + os.replace": m_arrowwriter,
}


def verify(d: Data, folder: Path, method: str):
    """The written shards load back, bit-exact, with Array2D float16 columns."""
    from datasets import Dataset

    ds = Dataset.from_file(str(folder / "data-00000.arrow")).with_format("numpy", dtype=None)
    assert str(ds.features[layer_column(0)]) == f"Array2D(shape=(None, {d.hidden}), dtype='float16')", ds.features
    lo, hi, offsets, flats = d.shards[0]
    for j in (0, d.layers - 1):
        got = ds[hi - lo - 1][layer_column(j)]
        assert got.dtype == np.float16 and np.array_equal(got, flats[j][offsets[-2]:offsets[-1]]), (method, j)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="smollm,8b", help="comma list of: " + ", ".join(CASES))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dir", default=None, help="folder on the disk to test (default: a temp dir on /tmp)")
    ap.add_argument("--fsync", action="store_true", help="include fsync of every written file in the timing")
    ap.add_argument("--rows", type=int, default=None, help="override the case's row count")
    ap.add_argument("--json", default=None, help="write results to this JSON file")
    args = ap.parse_args(argv)

    from datasets.utils import logging as ds_logging

    ds_logging.disable_progress_bar()
    root = Path(tempfile.mkdtemp(prefix="bench_write_", dir=args.dir or "/tmp"))
    print(f"disk folder {root}; load average {load()}; cpus {os.cpu_count()}; fsync {'on' if args.fsync else 'off'}")
    all_results = {}
    try:
        for case in args.cases.split(","):
            spec = dict(CASES[case])
            if args.rows:
                spec["rows"] = args.rows
            t0 = time.perf_counter()
            d = Data(**spec)
            print(f"\ncase {case}: {spec['rows']} rows x {spec['layers']} layers x {spec['min_len']}-{spec['max_len']} "
                  f"positions x {spec['hidden']} float16 = {d.nbytes / 1e9:.2f} GB in {len(d.shards)} shards of "
                  f"{spec['shard_rows']} rows (built in {time.perf_counter() - t0:.1f} s)", flush=True)
            times = {m: [] for m in METHODS}
            loads = {m: [] for m in METHODS}
            for rep in range(args.repeats):
                order = list(METHODS) if rep % 2 == 0 else list(reversed(METHODS))
                for m in order:
                    folder = root / "out"
                    shutil.rmtree(folder, ignore_errors=True)
                    folder.mkdir()
                    os.sync()
                    t = time.perf_counter()
                    METHODS[m](d, folder, args.fsync)
                    times[m].append(time.perf_counter() - t)
                    loads[m].append(os.getloadavg()[0])
                    if rep == 0 and m != "np.save (ceiling)":
                        verify(d, folder, m)
                    shutil.rmtree(folder, ignore_errors=True)
            ceiling = d.nbytes / statistics.median(times["np.save (ceiling)"])
            print(f"{'method':<30}{'median s':>10}{'GB/s':>8}{'x np.save':>11}   all runs (s)       load 1-min")
            res = {}
            for m in METHODS:
                med = statistics.median(times[m])
                rate = d.nbytes / med
                res[m] = {"seconds": times[m], "median_s": med, "bytes_per_s": rate, "ratio": rate / ceiling,
                          "load1": loads[m]}
                print(f"{m:<30}{med:>10.2f}{rate / 1e9:>8.2f}{rate / ceiling:>11.2f}   "
                      f"{' '.join(f'{x:.2f}' for x in times[m]):<18} {' '.join(f'{x:.1f}' for x in loads[m])}", flush=True)
            all_results[case] = {"spec": spec, "bytes": d.nbytes, "methods": res}
            del d
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"\ntarget: map path >= 0.7x np.save; load average at end {load()}")
    if args.json:
        Path(args.json).write_text(json.dumps(all_results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
