"""Merging runs: the same model and settings collected on different question subsets -> one run.

The result is an ordinary run folder (``load_from_disk``-able, exportable, mergeable again). Rows
keep their order: all of run A's rows, then run B's, ... The Arrow shards are hard-linked (or
copied when the runs sit on another file system), never re-encoded, so a merge of 100 GB of
activations takes seconds and no extra disk.
"""

from __future__ import annotations

import copy
import errno
import logging
import os
import shutil
from pathlib import Path

from ..config import config_hash
from ..errors import UserError
from .read import RUN_CONFIG, RunFiles, open_run

logger = logging.getLogger("hf_introspect")

# identity.config fields that choose WHICH questions (may differ between merged runs).
SELECTION_FIELDS = ("questions", "num_questions", "question_ids", "question_format")
# identity.config fields that shape only the shard layout / device placement, not the values.
LAYOUT_FIELDS = ("batch_size", "save_every", "device_map")


def _comparable(run_config: dict) -> dict:
    """The run's identity minus what may differ between mergeable runs."""
    ident = copy.deepcopy(run_config.get("identity", {}))
    cfg = ident.get("config", {})
    for k in SELECTION_FIELDS + LAYOUT_FIELDS:
        cfg.pop(k, None)
    if cfg.get("temperature", 0) == 0:
        cfg.pop("seed", None)  # greedy: the seed only chose the sample and shuffled options (kept per row)
    ident.pop("question_ids_hash", None)
    model = ident.get("model", {})
    # Local model/adapter paths differ between machines; their content fingerprints are compared.
    if model.get("model_kind") != "hub" and model.get("model_fingerprint"):
        cfg.pop("model", None)
        model.pop("model", None)
    if model.get("adapter_fingerprint"):
        cfg.pop("lora_checkpoint", None)
        model.pop("lora_checkpoint", None)
    return ident


def _question_ids(run: RunFiles) -> list[str]:
    import pyarrow as pa

    split = next(iter(run.splits.values()))
    ids: list[str] = []
    for path in split.files:
        with pa.memory_map(str(path)) as src:
            for batch in pa.ipc.open_stream(src):
                ids += batch.column("question_id").to_pylist()
    return ids


def check_mergeable(runs: list[RunFiles]) -> list[list[str]]:
    """Raise a one-line UserError unless the runs share model, settings, passes and columns and
    have disjoint question ids. Returns each run's question ids."""
    from ..collection.storage import diff_keys

    if len(runs) < 2:
        raise UserError("merge needs at least two runs")
    first = runs[0]
    base = _comparable(first.run_config)
    for run in runs[1:]:
        diff = diff_keys(base, _comparable(run.run_config))
        if diff:
            shown = ", ".join(diff[:5]) + (" ..." if len(diff) > 5 else "")
            raise UserError(f"{run.path} was collected with other settings than {first.path} ({shown}); "
                            "only runs of the same model and settings on different questions can be merged")
        if list(run.splits) != list(first.splits):
            raise UserError(f"{run.path} has passes {list(run.splits)} but {first.path} has {list(first.splits)}")
        for name, split in run.splits.items():
            if split.features != first.splits[name].features:
                raise UserError(f"{run.path}/{name} has other columns or types than {first.path}/{name}")
    ids = [_question_ids(r) for r in runs]
    seen: dict[str, Path] = {}
    for run, run_ids in zip(runs, ids):
        for qid in run_ids:
            if qid in seen:
                raise UserError(f"question id {qid!r} is in both {seen[qid]} and {run.path}; merged runs must cover "
                                "different questions (drop one, or recollect with --question_ids)")
            seen[qid] = run.path
    return ids


def _link_or_copy(src: Path, dst: Path) -> str:
    """Hard-link (same file system) or copy. A hard link shares the bytes yet survives the source
    run being deleted or overwritten (rmtree only unlinks its name)."""
    try:
        os.link(src, dst)
        return "link"
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES):
            raise
    shutil.copy2(src, dst)
    return "copy"


def merge_runs(run_dirs: list[str | Path], to: str | Path, *, copy_files: bool = False) -> RunFiles:
    """Merge finished runs of the same model and settings on disjoint questions into run ``to``.

    ``run_config.json`` of the result is the first run's with ``num_questions`` set to the total,
    ``question_sources`` joined, ``merged_from`` listing the sources (path, run_id, questions), and
    a new ``run_id`` / ``identity.question_ids_hash`` for the merged question list.

    Example:
        >>> merge_runs(["run_part1", "run_part2"], "run_all")        # doctest: +SKIP
        >>> load_from_disk("run_all")["mcq"].num_rows               # doctest: +SKIP
        1000
    """
    from ..collection.storage import finalize_run, finalize_split, shard_path, write_json_atomic

    runs = [open_run(p) for p in run_dirs]
    out = Path(to)
    for run in runs:
        if out.resolve() == run.path.resolve():
            raise UserError(f"--to {out} is one of the runs being merged; pick a new folder")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--to {out} already exists and is not empty; pick a new folder")
    ids = check_mergeable(runs)
    all_ids = [q for run_ids in ids for q in run_ids]

    first = runs[0].run_config
    merged = copy.deepcopy(first)
    merged["config"]["output_dir"] = str(out)
    merged["num_questions"] = len(all_ids)
    merged["question_sources"] = sorted({s for r in runs for s in r.run_config.get("question_sources", [])})
    merged["merged_from"] = [{"path": str(r.path.resolve()), "run_id": r.run_config.get("run_id"),
                              "num_questions": len(q)} for r, q in zip(runs, ids)]
    merged["shards"] = {"merged": True, "num_shards": sum(len(r.splits[next(iter(r.splits))].files) for r in runs)}
    merged["identity"]["question_ids_hash"] = config_hash({"ids": all_ids})
    merged["run_id"] = config_hash(merged["identity"])

    from .progress import byte_bar

    out.mkdir(parents=True, exist_ok=True)
    how = set()
    # bytes of shards linked or copied (a link is instant; a copy across filesystems is not)
    bar = byte_bar(sum(s.nbytes for r in runs for s in r.splits.values()), "merge")
    try:
        write_json_atomic(out / RUN_CONFIG, merged)
        for name in runs[0].splits:
            files = [f for r in runs for f in r.splits[name].files]
            (out / name).mkdir()
            for i, src in enumerate(files):
                dst = shard_path(out, name, i, len(files))
                if copy_files:
                    shutil.copy2(src, dst)
                    how.add("copy")
                else:
                    how.add(_link_or_copy(src, dst))
                bar.update(src.stat().st_size)
            desc = runs[0].splits[name]
            from datasets import DatasetInfo

            description = DatasetInfo.from_directory(str(desc.folder)).description
            finalize_split(out, name, len(files), len(all_ids), f"{merged['run_id']}-{name}", description)
        finalize_run(out, list(runs[0].splits))
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)  # never leave a half-merged run behind
        raise
    finally:
        bar.close()
    logger.info("merged %d runs (%d questions) into %s (%s)", len(runs), len(all_ids), out,
                "hard links" if how == {"link"} else ", ".join(sorted(how)))
    return open_run(out)
