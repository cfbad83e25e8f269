"""Checksum speed (which hash the shard records use) and the cost of checking a run on resume.

    .venv/bin/python benchmarks/bench_integrity.py [RUN_DIR]

Prints MB/s of xxh3-64, xxh64, zlib.crc32, adler32, sha1, md5 and blake2b over 256 MB in memory
(best of 3), then, given a run folder (read only), the time to check all its shards sizes + rows
only and with checksums (a second pass reads from the page cache).
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
import zlib
from pathlib import Path


def main() -> None:
    import xxhash

    data = os.urandom(256 * 2**20)
    hashes = {"xxh3_64": lambda b: xxhash.xxh3_64(b).digest(), "xxh64": lambda b: xxhash.xxh64(b).digest(),
              "crc32": zlib.crc32, "adler32": zlib.adler32, "sha1": lambda b: hashlib.sha1(b).digest(),
              "md5": lambda b: hashlib.md5(b).digest(), "blake2b": lambda b: hashlib.blake2b(b).digest()}
    for name, fn in hashes.items():
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            fn(data)
            best = min(best, time.perf_counter() - t)
        print(f"{name:<8} {len(data) / best / 1e6:7.0f} MB/s")
    if len(sys.argv) > 1:
        from hf_introspect.collection.integrity import expected_shards, find_damage

        run = Path(sys.argv[1])
        shards = [p for per in expected_shards(run).values() for p, _ in per if p.is_file()]
        size = sum(p.stat().st_size for p in shards)
        from hf_introspect.collection.integrity import checksum

        for attempt in ("cold or cached", "cached"):  # what a full check costs per shard file, records or not
            t = time.perf_counter()
            for p in shards:
                checksum(p)
            dt = time.perf_counter() - t
            print(f"{run}: xxh3_64 of {len(shards)} shard files ({size / 1e6:.0f} MB, {attempt}): {dt:.2f} s "
                  f"({size / dt / 1e6:.0f} MB/s)")
        for full in (False, True):
            t = time.perf_counter()
            damage = find_damage(run, full=full)
            dt = time.perf_counter() - t
            print(f"{run}: {len(shards)} shards, {size / 1e6:.0f} MB, {'checksums' if full else 'sizes+rows'}: "
                  f"{dt:.2f} s ({size / dt / 1e6:.0f} MB/s), {len(damage)} damaged")


if __name__ == "__main__":
    main()
