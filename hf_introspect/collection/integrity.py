"""Shard integrity: each shard's rows, bytes and checksum recorded beside it, checked on resume.

A shard file that exists was once complete (it is renamed into place), but a crash or a power
loss after the rename can leave it truncated when its data was never flushed, and a disk or a
copy can flip bytes. So when a shard is written:

1. ``Dataset.map`` writes it under a ``tmp-`` name (removed by the next start if we die here);
2. the file is fsynced, its size and xxh3-64 checksum go to ``data-....integrity.json``
   (fsynced), then it is renamed to its final name and the folder is fsynced.

A shard file therefore always has its record, and on resume (and by ``hf-introspect verify``)
every shard's size, row count and checksum are compared with it; a damaged shard is removed,
named in a warning and collected again. Shards written before records existed (older runs) are
checked for their row count only.

Checksum: xxh3-64 from the ``xxhash`` package (a declared dependency of ``datasets``, so always
installed). Measured on the shared 2-core VM (benchmarks/bench_integrity.py, 256 MB in memory,
load 13-15): xxh3-64 1.4-3.0 GB/s, xxh64 1.0-2.3, zlib.crc32 0.33-0.77, sha1 0.18-0.34 GB/s.
Checking every shard of /work/runs/trivia500 (21 shards, 974 MB) costs 1.9-2.7 s, against
minutes to hours of collecting them: so resume checks checksums always, not behind a flag.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger("hf_introspect")

RECORD_SUFFIX = ".integrity.json"
WRITING_PREFIX = "tmp-writing-"  # clean_partial_files removes tmp* files
CHUNK = 8 * 2**20  # bytes hashed per read


def record_path(shard: Path) -> Path:
    """Where a shard's record lives.

    Example:
        >>> record_path(Path("run/mcq/data-00002-of-00005.arrow")).name
        'data-00002-of-00005.integrity.json'
    """
    return shard.with_name(shard.name[:-len(".arrow")] + RECORD_SUFFIX)


def writing_path(shard: Path) -> Path:
    """The temporary name a shard is written under before :func:`commit_shard` renames it.

    Example:
        >>> writing_path(Path("run/mcq/data-00002-of-00005.arrow")).name
        'tmp-writing-data-00002-of-00005.arrow'
    """
    return shard.with_name(WRITING_PREFIX + shard.name)


def checksum(path: Path) -> str:
    """``xxh3_64:HEX`` of a file's bytes, read in 8 MiB chunks.

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "f"; _ = p.write_bytes(b"abc")
        >>> checksum(p)
        'xxh3_64:78af5f94892f3950'
    """
    import xxhash

    h = xxhash.xxh3_64()
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        while n := f.readinto(buf):
            h.update(view[:n])
    return f"xxh3_64:{h.hexdigest()}"


def arrow_rows(path: Path) -> int:
    """Rows of an Arrow stream file (reads only the batch headers of the memory map)."""
    import pyarrow as pa

    with pa.memory_map(str(path)) as src:
        return sum(b.num_rows for b in pa.ipc.open_stream(src))


def fsync_path(path: Path) -> None:
    """Flush a file's or a folder's data and metadata to the disk (a folder: its entries)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit_shard(written: Path, final: Path, rows: int) -> None:
    """Flush a shard written at ``written``, record it beside ``final``, rename it into place."""
    fsync_path(written)
    record = {"rows": rows, "bytes": written.stat().st_size, "checksum": checksum(written)}
    tmp = record_path(final).with_name("tmp-" + record_path(final).name)
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(record, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, record_path(final))
    os.replace(written, final)  # after the record: a shard file always has its record
    fsync_path(final.parent)


def shard_problem(path: Path, rows: int | None = None, full: bool = True) -> str | None:
    """What is wrong with a shard (None: nothing), against its record and ``rows`` expected.

    ``full`` also compares the checksum (reads the whole file); otherwise size and rows only.
    """
    if not path.is_file():
        return "missing"
    record = None
    if record_path(path).is_file():
        try:
            record = json.loads(record_path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            record = None  # a damaged record: judge the shard by its rows alone
    size = path.stat().st_size
    if record is not None and size != record["bytes"]:
        return f"{size} bytes, {record['bytes']} recorded"
    try:
        found = arrow_rows(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError on a damaged stream
        return f"unreadable ({type(exc).__name__}: {str(exc).splitlines()[0][:80] if str(exc) else ''})"
    expected = rows if rows is not None else (record or {}).get("rows")
    if expected is not None and found != expected:
        return f"{found} rows, {expected} expected"
    if full and record is not None and checksum(path) != record["checksum"]:
        return "checksum differs from the one recorded when it was written"
    return None


@dataclass
class Damage:
    """A damaged shard of a run."""

    path: Path
    problem: str

    def __str__(self) -> str:
        return f"{self.path.parent.name}/{self.path.name} ({self.problem})"


def expected_shards(run_dir: Path) -> dict[str, list[tuple[Path, int | None]]]:
    """Per pass of the run, its shards and their expected rows, from ``run_config.json``; for a
    merged run (no shard layout) the files each split's ``state.json`` lists, rows unknown."""
    from .storage import read_run_config, shard_path

    config = read_run_config(run_dir) or {}
    shards, n_rows = config.get("shards") or {}, config.get("num_questions")
    per, count = shards.get("rows_per_shard"), shards.get("num_shards")
    passes = (config.get("config") or {}).get("passes") or []
    if not (per and count and n_rows is not None):
        listed = {}
        for p in passes:
            try:
                state = json.loads((Path(run_dir) / p / "state.json").read_text(encoding="utf-8"))
                listed[p] = [(Path(run_dir) / p / d["filename"], None) for d in state["_data_files"]]
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return listed
    return {p: [(shard_path(run_dir, p, i, count), min(per, n_rows - i * per)) for i in range(count)] for p in passes}


def find_damage(run_dir: str | Path, full: bool = True, finished_only: bool = False) -> list[Damage]:
    """Every damaged shard of a run folder: existing shards checked against their records, and the
    missing shards of finished splits. ``finished_only`` skips the shards of unfinished splits.

    Example:
        >>> find_damage("test_run_base")        # doctest: +SKIP
        [Damage(path=PosixPath('test_run_base/mcq/data-00001-of-00004.arrow'), problem='missing')]
    """
    from .storage import split_is_final

    run_dir = Path(run_dir)
    damage = []
    for pass_name, shards in expected_shards(run_dir).items():
        final = split_is_final(run_dir, pass_name)
        if finished_only and not final:
            continue
        for path, rows in shards:
            if not path.is_file() and not final:
                continue  # not written yet: the collector will
            problem = shard_problem(path, rows, full=full)
            if problem is not None:
                damage.append(Damage(path, problem))
    return damage


def repair(run_dir: str | Path) -> list[Damage]:
    """Before a resume (main process): remove damaged shards and re-open their splits (and the run),
    so the collector writes them again. Returns the damage found."""
    from .storage import DATASET_DICT

    run_dir = Path(run_dir)
    damage = find_damage(run_dir)
    for d in damage:
        logger.warning("damaged shard %s: collected again", d)
        d.path.unlink(missing_ok=True)
        record_path(d.path).unlink(missing_ok=True)
        for name in ("state.json", "dataset_info.json"):  # the split is unfinished again
            (d.path.parent / name).unlink(missing_ok=True)
    if damage:
        (run_dir / DATASET_DICT).unlink(missing_ok=True)
        fsync_path(run_dir)
    return damage


def split_damage(split_folder: str | Path) -> str | None:
    """A one-line refusal naming a finished split's damaged shards and the repair (None: sizes and
    rows match). Cheap (no checksum): for readers, before they open the split.

    Example:
        >>> split_damage("/nonexistent/mcq") is None       # not a finished split: nothing to say
        True
    """
    folder = Path(split_folder)
    try:
        names = [d["filename"] for d in json.loads((folder / "state.json").read_text(encoding="utf-8"))["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    damaged = [f"{n} ({problem})" for n in names if (problem := shard_problem(folder / n, full=False))]
    if not damaged:
        return None
    return (f"{folder}: damaged shard(s) {', '.join(damaged[:3])}{' ...' if len(damaged) > 3 else ''}; rerun the "
            f"same collect command to collect them again (hf-introspect verify {folder.parent} lists every damaged shard)")
