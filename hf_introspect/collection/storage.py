"""The on-disk layout of a run, and the rules that keep it consistent across crashes and reruns.

::

    output_dir/
      run_config.json             every setting, versions, model identity, templates, label ids
      dataset_dict.json           written last: the run is complete (load_from_disk(output_dir))
      .hf_introspect.lock         while a collect runs: its pid, host, start time (run_lock.py)
      mcq/                        one split per pass, each a `load_from_disk`-able Dataset
        data-00000-of-00004.arrow one shard = --save_every batches, written atomically by map
        data-00000-of-00004.integrity.json  its rows, bytes and xxh3-64 checksum (integrity.py)
        ...
        dataset_info.json         written when every shard exists (features, description)
        state.json                "
      self_conf/ ...
      other_conf/ ...

A shard file that exists was complete when it was renamed into place (``Dataset.map`` writes a
``tmp*`` file, fsynced and recorded before the rename: integrity.py); every start checks the
shards against their records and collects a damaged one again. Stray ``tmp*`` files (a killed
process) are removed on the next start.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from datasets import Dataset, concatenate_datasets

from ..errors import UserError

RUN_CONFIG = "run_config.json"
DATASET_DICT = "dataset_dict.json"
_OUR_FILES = {RUN_CONFIG, DATASET_DICT}
LOCK_NAME = ".hf_introspect.lock"  # held by the running collect (run_lock.py); not part of the run


def shard_path(output_dir: str | Path, pass_name: str, index: int, count: int) -> Path:
    """Path of one shard, named as ``save_to_disk`` names them.

    Example:
        >>> shard_path("run", "mcq", 2, 5).as_posix()
        'run/mcq/data-00002-of-00005.arrow'
    """
    return Path(output_dir) / pass_name / f"data-{index:05d}-of-{count:05d}.arrow"


def write_json_atomic(path: Path, obj) -> None:
    """Write JSON so that a reader never sees half a file (tmp + rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=False, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)  # the rename itself reaches the disk (state.json, dataset_dict.json)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_run_config(output_dir: str | Path) -> dict | None:
    path = Path(output_dir) / RUN_CONFIG
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} is unreadable ({exc}); fix it or rerun with --overwrite") from exc


def _is_run_dir(folder: Path, passes) -> bool:
    names = {p.name for p in folder.iterdir()} - {LOCK_NAME}
    return RUN_CONFIG in names or (bool(names) and names <= _OUR_FILES | set(passes))


def diff_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts.

    Example:
        >>> diff_keys({"a": 1, "b": {"c": 2}}, {"a": 1, "b": {"c": 3}})
        ['b.c']
    """
    keys = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += diff_keys(a, b, f"{prefix}{k}.")
        elif a != b:
            keys.append(f"{prefix}{k}")
    return keys


def check_output_dir(output_dir: str | Path, config_identity: dict, *, overwrite: bool, passes) -> None:
    """Read-only check, run by every process before anything is loaded or written.

    Refuses a file, a non-empty folder that is not a hf_introspect run (never deleted, even with
    overwrite), and a run made with other settings (unless overwrite).
    """
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--output_dir {out} is a file; pass a folder path")
    if not out.is_dir() or not any(p.name != LOCK_NAME for p in out.iterdir()):
        return
    if not _is_run_dir(out, passes):
        raise UserError(f"--output_dir {out} is not empty and holds no hf_introspect run; "
                        "choose a new folder (nothing there was touched)")
    if overwrite:
        return
    old = read_run_config(out)
    if old is None:
        raise UserError(f"--output_dir {out} holds run files but no {RUN_CONFIG}; rerun with --overwrite to start over")
    diff = diff_keys(old.get("identity", {}).get("config", {}), config_identity)
    if diff:
        shown = ", ".join(diff[:6]) + (" ..." if len(diff) > 6 else "")
        raise UserError(f"--output_dir {out} holds a run with other settings ({shown}); "
                        "use another folder, the same flags to resume, or --overwrite to replace it")


def prepare_output_dir(output_dir: str | Path, run_config: dict, *, overwrite: bool, passes) -> bool:
    """Create, resume or (with overwrite) replace the run folder. Returns True when resuming.

    Main process only, after :func:`check_output_dir` passed everywhere.
    """
    out = Path(output_dir)
    check_output_dir(out, run_config["identity"]["config"], overwrite=overwrite, passes=passes)
    old = read_run_config(out) if out.is_dir() else None
    if overwrite and out.is_dir():
        for entry in out.iterdir():  # all but our own lock
            if entry.name != LOCK_NAME:
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        old = None
    elif old is not None:
        # Same flags, but the model, adapter, templates or questions may have changed underneath.
        diff = diff_keys(old.get("identity", {}), run_config["identity"])
        if diff:
            shown = ", ".join(diff[:6]) + (" ..." if len(diff) > 6 else "")
            raise UserError(f"--output_dir {out} holds a run of other data ({shown}); "
                            "use another folder or --overwrite to replace it")
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / RUN_CONFIG, run_config)
    return old is not None


def existing_bytes(output_dir: str | Path, passes) -> int:
    """Bytes of finished shards already in the folder (a resumed run does not need them again)."""
    total = 0
    for name in passes:
        folder = Path(output_dir) / name
        if folder.is_dir():
            total += sum(p.stat().st_size for p in folder.glob("data-*.arrow"))
    return total


def clean_partial_files(output_dir: str | Path, passes) -> list[Path]:
    """Remove temp files that an interrupted map or a killed process left behind."""
    removed = []
    stale = Path(output_dir) / f".{RUN_CONFIG}.tmp"
    if stale.exists():
        stale.unlink()
        removed.append(stale)
    for name in passes:
        folder = Path(output_dir) / name
        if folder.is_dir():
            for p in folder.iterdir():
                if p.name.startswith("tmp") or p.name.startswith(".") and p.name.endswith(".tmp"):
                    p.unlink(missing_ok=True)
                    removed.append(p)
    return removed


def finalize_split(output_dir: str | Path, pass_name: str, count: int, expected_rows: int, fingerprint: str,
                   description: str) -> Dataset:
    """Write dataset_info.json and state.json over the shards, making the split loadable.

    No data is copied: the shards already are the split's Arrow files.
    """
    folder = Path(output_dir) / pass_name
    files = [shard_path(output_dir, pass_name, i, count) for i in range(count)]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise RuntimeError(f"cannot finalize {folder}: shards missing {missing[:3]}")
    ds = concatenate_datasets([Dataset.from_file(str(f)) for f in files])
    if len(ds) != expected_rows:
        raise RuntimeError(f"{folder}: shards hold {len(ds)} rows, expected {expected_rows}")
    info = ds.info
    info.description = description
    info.write_to_directory(str(folder))
    state = {
        "_data_files": [{"filename": f.name} for f in files],
        "_fingerprint": fingerprint,
        "_format_columns": None,
        "_format_kwargs": {},
        "_format_type": None,
        "_output_all_columns": False,
        "_split": pass_name,
    }
    write_json_atomic(folder / "state.json", state)
    return ds


def split_is_final(output_dir: str | Path, pass_name: str) -> bool:
    folder = Path(output_dir) / pass_name
    return (folder / "state.json").is_file() and (folder / "dataset_info.json").is_file()


def finalize_run(output_dir: str | Path, passes) -> None:
    write_json_atomic(Path(output_dir) / DATASET_DICT, {"splits": list(passes)})
