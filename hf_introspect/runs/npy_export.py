"""Export a run in the seed's layout, for analysis code written against the original scripts::

    DIR/
      run_config.json
      mcq/
        metadata.json               list of one dict per question: every non-activation column
        activations_layer_00.npy    float16 [n_questions, max_positions, hidden]
        ...
      self_conf/ ...
      other_conf/ ...

Padding: question i's stored activation rows fill ``[i, :n_i]`` where
``n_i = len(metadata[i]["activation_positions"])`` (= ``seq_len`` with ``--positions all``); the
rest of the row, ``[i, n_i:]``, is zeros (right padding). So the readout (last prompt) token is
``acts[i, n_i - 1]``, not ``acts[i, -1]``, for every question shorter than the longest.
``metadata[i]["num_positions"]`` holds ``n_i``.

Each ``.npy`` is written through ``np.lib.format.open_memmap`` one Arrow record batch at a time,
so memory stays at one batch whatever the run's size.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from ..errors import UserError
from .progress import byte_bar
from .publish import public_run_config
from .read import RUN_CONFIG, SplitFiles, list_parts, iter_record_batches, open_run

logger = logging.getLogger("hf_introspect")


def _write_metadata(split: SplitFiles, path: Path) -> int:
    """Stream every non-activation column into a JSON list, one row at a time. Returns max n_i."""
    meta_cols = [c for c in split.features if not c.startswith("activations_layer_")]
    longest = 0
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write("[")
        first = True
        for batch in iter_record_batches(split.files):
            for row in batch.select(meta_cols).to_pylist():
                row["num_positions"] = len(row.get("activation_positions") or [])
                longest = max(longest, row["num_positions"])
                f.write(("\n" if first else ",\n") + json.dumps(row, ensure_ascii=False))
                first = False
        f.write("\n]\n")
    os.replace(tmp, path)
    return longest


def _write_layer(split: SplitFiles, column: str, path: Path, max_positions: int, advance=None) -> tuple[int, ...]:
    """One layer as [n_questions, max_positions, hidden] float16, right-padded with zeros.
    ``advance(rows)`` is called after each record batch (the progress bar)."""
    feature = split.features[column]
    hidden = int(feature.shape[1])
    shape = (split.num_rows, max_positions, hidden)
    tmp = path.with_name(f".{path.name}.tmp")
    if 0 in shape:  # nothing stored: numpy cannot memory-map an empty array
        with tmp.open("wb") as f:  # a file object: np.save would append .npy to a name
            np.save(f, np.zeros(shape, dtype=np.dtype(feature.dtype)))
        os.replace(tmp, path)
        return shape
    # A fresh memmap file is all zeros (sparse until written): the padding costs nothing to write.
    arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.dtype(feature.dtype), shape=shape)
    flat = arr.reshape(-1, hidden)  # (n_questions * max_positions, hidden) view of the same file
    row0 = 0
    for batch in iter_record_batches(split.files):
        outer, inner = list_parts(batch.column(column))  # outer: (rows+1,) stored positions per row
        inner_off, values = list_parts(inner)             # inner_off: (positions+1,) values per position
        vals = values.to_numpy(zero_copy_only=False)       # flat float16
        n = len(outer) - 1
        counts = np.diff(outer)                      # (rows,) n_i
        # Destination row in `flat` of every stored position of this batch: question r's k-th
        # position goes to (row0 + r) * max_positions + k.
        owner = np.repeat(np.arange(n), counts)
        k = np.arange(outer[-1] - outer[0]) - np.repeat(outer[:-1] - outer[0], counts)
        dest = (row0 + owner) * max_positions + k
        first, last = inner_off[outer[0]], inner_off[outer[-1]]
        block = vals[first:last]
        if len(block) != (outer[-1] - outer[0]) * hidden:
            raise RuntimeError(f"{column}: a stored position does not hold {hidden} values")
        flat[dest] = block.reshape(-1, hidden)       # (positions in batch, hidden)
        row0 += n
        if advance is not None:
            advance(n)
    arr.flush()
    del flat, arr
    os.replace(tmp, path)
    return shape


def export_npy(run_dir: str | Path, to: str | Path, *, passes: list[str] | None = None,
               layers: list[int] | None = None) -> dict[str, dict]:
    """Write a run in the seed's ``metadata.json`` + ``activations_layer_NN.npy`` layout.

    Returns ``{pass: {"questions": n, "max_positions": m, "layers": {column: shape}}}``.

    Example:
        >>> export_npy("test_run_base", "test_run_base_npy")                           # doctest: +SKIP
        >>> acts = np.load("test_run_base_npy/mcq/activations_layer_15.npy", mmap_mode="r")  # doctest: +SKIP
        >>> meta = json.load(open("test_run_base_npy/mcq/metadata.json"))              # doctest: +SKIP
        >>> last = acts[42, meta[42]["num_positions"] - 1]   # readout token of question 42  # doctest: +SKIP
    """
    run = open_run(run_dir)
    out = Path(to)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--to {out} already exists and is not empty; pick a new folder")
    chosen = list(run.splits) if passes is None else passes
    unknown = [p for p in chosen if p not in run.splits]
    if unknown:
        raise UserError(f"pass {unknown[0]!r} is not in {run.path}; it holds {list(run.splits)}")
    out.mkdir(parents=True, exist_ok=True)
    # the folder is made to be shared: folder names instead of local paths (runs.publish)
    (out / RUN_CONFIG).write_text(json.dumps(public_run_config(run.run_config), indent=2, default=str), encoding="utf-8")
    report = {}
    # bytes of the chosen splits' Arrow data; each layer file advances its split's share per batch
    bar = byte_bar(sum(run.splits[n].nbytes for n in chosen), "npy export")
    for name in chosen:
        split = run.splits[name]
        folder = out / name
        folder.mkdir()
        longest = _write_metadata(split, folder / "metadata.json")
        columns = split.layer_columns
        if layers is not None:
            wanted = {f"activations_layer_{i:02d}" for i in layers}
            missing = sorted(wanted - set(columns))
            if missing:
                raise UserError(f"{missing[0]} is not stored in {run.path}/{name}")
            columns = [c for c in columns if c in wanted]
        per_row = split.nbytes / max(split.num_rows, 1) / max(len(columns), 1)

        def advance(rows: int) -> None:
            bar.update(int(round(rows * per_row)))

        shapes = {c: _write_layer(split, c, folder / f"{c}.npy", longest, advance) for c in columns}
        report[name] = {"questions": split.num_rows, "max_positions": longest, "layers": shapes}
        logger.info("%s: %d questions, %d layers of [%d, %d, %d] float16", name, split.num_rows, len(columns),
                    split.num_rows, longest, next(iter(shapes.values()))[2] if shapes else 0)
    bar.close()
    return report
