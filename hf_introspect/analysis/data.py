"""RunData: the splits of one run as analysis reads them (layers, float32 matrices, targets, ids).

Opens whatever :func:`hf_introspect.load_run` opens (a run folder, one split folder, an exported
Hub-layout folder, a Hub repo id with ``config``). Splits are loaded lazily, once each, and stay
memory-mapped: :meth:`RunData.matrix` reads ONE layer at a time as ``(n_questions, hidden)`` float32
through ``layer_matrix``'s vectorised Arrow gather, so memory is bounded by the layers a caller holds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import UserError
from .ids import align  # noqa: F401  (part of this module's interface)
from .positions import PositionRows, resolve_position
from .targets import DERIVED, Target, derived_from_logits, from_column, joined

PASSES = ("mcq", "self_conf", "other_conf")
_LAYER_PREFIX = "activations_layer_"
# columns that are not targets (ids, text, per-token data, bookkeeping)
_NOT_TARGETS = {"question_id", "question_text", "prompt_text", "prompt_type", "output_text", "model_name",
                "checkpoint_id", "question_source", "parse_source", "temperature", "top_p", "max_new_tokens",
                "answer_token_index", "confidence_token_index", "fp16_overflow_count", "seq_len"}


def _arrow_column(ds, name: str):
    """The column as one pyarrow Array in the dataset's row order (select/shuffle views honoured)."""
    import pyarrow as pa

    if name not in ds.column_names:
        raise UserError(f"this split has no column {name!r}")
    col = ds.data.column(name)
    if ds._indices is not None:
        col = col.take(ds._indices.column(0))
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    return arr.storage if isinstance(arr, pa.ExtensionArray) else arr


def column_values(ds, name: str) -> np.ndarray:
    """A scalar or fixed-length-list column as numpy: (n,) or (n, k...) (e.g. logits (n, 4)).

    Reads the Arrow buffers, not rows: ms for 10,000 questions.
    """
    import pyarrow as pa

    arr = _arrow_column(ds, name)
    shape = [len(arr)]
    while pa.types.is_fixed_size_list(arr.type):
        shape.append(arr.type.list_size)
        arr = arr.flatten()
    if pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
        raise UserError(f"column {name!r} holds variable-length lists; it is not a per-question value")
    return arr.to_numpy(zero_copy_only=False).reshape(shape)


def ragged_values(ds, name: str) -> tuple[np.ndarray, np.ndarray]:
    """A variable-length list column as (offsets (n+1,), values) with offsets starting at 0."""
    arr = _arrow_column(ds, name)
    offsets = arr.offsets.to_numpy(zero_copy_only=False).astype(np.int64)
    values = arr.values.to_numpy(zero_copy_only=False)[offsets[0]:offsets[-1]]
    return offsets - offsets[0], values


class RunData:
    """The passes of one run, read lazily.

    Example:
        >>> rd = open_run_data("runs/trivia500")                      # doctest: +SKIP
        >>> rd.passes, rd.layers("mcq")[:3]                           # doctest: +SKIP
        (['mcq', 'self_conf', 'other_conf'], [0, 1, 2])
        >>> rd.matrix("mcq", 20).shape, rd.target("self_conf", "mcq.entropy").n_missing   # doctest: +SKIP
        ((500, 576), 0)
    """

    def __init__(self, source, config: str | None, passes: list[str], run_config: dict | None, splits=None):
        self.source, self.config = source, config
        self.passes, self.run_config = list(passes), run_config
        self._splits = dict(splits or {})
        self._position_cache: dict = {}

    def __repr__(self) -> str:
        return f"RunData({str(self.source)!r}, passes={self.passes})"

    # --- splits and what they hold ---
    def _check_pass(self, pass_name: str) -> None:
        if pass_name not in self.passes:
            raise UserError(f"{self.source} has no pass {pass_name!r}; it holds {', '.join(self.passes)}")

    def split(self, pass_name: str):
        """The pass's split as a numpy-formatted ``datasets.Dataset`` (float16 kept)."""
        self._check_pass(pass_name)
        if pass_name not in self._splits:
            from .. import load_run

            self._splits[pass_name] = load_run(self.source, self.config, split=pass_name)
        return self._splits[pass_name]

    def n_questions(self, pass_name: str) -> int:
        return len(self.split(pass_name))

    def layers(self, pass_name: str) -> list[int]:
        """Stored residual-stream indices (0 = embeddings)."""
        names = self.split(pass_name).column_names
        return sorted(int(c[len(_LAYER_PREFIX):]) for c in names if c.startswith(_LAYER_PREFIX))

    def question_ids(self, pass_name: str) -> np.ndarray:
        return column_values(self.split(pass_name), "question_id").astype(str)

    @property
    def collected_positions(self) -> str | None:
        """The run's ``--positions`` (None when the run config is not at hand)."""
        cfg = (self.run_config or {}).get("config") or (self.run_config or {}).get("identity", {}).get("config") or {}
        return cfg.get("positions")

    @property
    def model_name(self) -> str:
        return str((self.run_config or {}).get("model_name") or self.source)

    # --- targets ---
    def target_names(self, pass_name: str) -> list[str]:
        """Column targets this pass offers (numeric, boolean, string per-question columns) + derived."""
        ds = self.split(pass_name)
        feats = ds.info.features
        out = []
        for name in ds.column_names:
            f = feats[name]
            if name in _NOT_TARGETS or name.startswith(_LAYER_PREFIX):
                continue
            if getattr(f, "dtype", None) in ("string", "bool") or str(getattr(f, "dtype", "")).startswith(("int", "float")):
                out.append(name)
        return out + (list(DERIVED) if "logits" in ds.column_names else [])

    def target(self, pass_name: str, spec: str) -> Target:
        """Values of target ``spec`` for every question of ``pass_name`` (see :mod:`.targets`)."""
        spec = spec.strip()
        head, _, tail = spec.partition(".")
        if tail and head in PASSES:
            self._check_pass(head)
            other = self.target(head, tail)
            other.name = spec
            return joined(other, self.question_ids(pass_name), self.question_ids(head))
        ds = self.split(pass_name)
        if spec in DERIVED:
            if "logits" not in ds.column_names:
                raise UserError(f"target {spec!r} needs the 'logits' column, which pass {pass_name} lacks")
            return from_column(spec, derived_from_logits(spec, column_values(ds, "logits")))
        if spec not in self.target_names(pass_name):
            raise UserError(f"unknown target {spec!r} for pass {pass_name}; choose one of "
                            f"{', '.join(self.target_names(pass_name))}, or PASS.COLUMN from another pass")
        return from_column(spec, column_values(ds, spec))

    # --- activations ---
    def position_rows(self, pass_name: str, position="answer") -> PositionRows:
        key = (pass_name, str(position))
        if key not in self._position_cache:
            ds = self.split(pass_name)
            offsets, values = ragged_values(ds, "activation_positions")
            readout = next((c for c in ("answer_token_index", "confidence_token_index")
                            if c in ds.column_names and ds.data.column(c).null_count == 0), None)
            n = len(ds)
            cols = {"ap_offsets": offsets, "ap_values": values.astype(np.int64),
                    "question_id": self.question_ids(pass_name),
                    "readout": (column_values(ds, readout).astype(np.int64) if readout
                                else column_values(ds, "seq_len").astype(np.int64) - 1)}
            for name, key_col, shape in (("question_span", "question_token_span", (n, 2)),
                                         ("option_spans", "option_token_spans", (n, 4, 2))):
                cols[name] = (column_values(ds, key_col).astype(np.int64) if key_col in ds.column_names
                              else np.full(shape, -1, dtype=np.int64))
            self._position_cache[key] = resolve_position(position, cols, self.collected_positions)
        return self._position_cache[key]

    def check_layers(self, pass_name: str, layers) -> list[int]:
        stored = self.layers(pass_name)
        bad = [layer for layer in layers if layer not in stored]
        if bad:
            raise UserError(f"layer {bad[0]} is not stored in pass {pass_name}; stored layers: {_ranges(stored)}")
        return list(layers)

    def matrix(self, pass_name: str, layer: int, position="answer", rows=None) -> np.ndarray:
        """One layer at one position for every question -> (n, hidden) float32 (rows: a subset, in that order)."""
        from .. import layer_matrix

        self.check_layers(pass_name, [int(layer)])
        ds, pr = self.split(pass_name), self.position_rows(pass_name, position)
        if pr.width == 1:
            X = layer_matrix(ds, int(layer), pr.rows[:, 0]).astype(np.float32)       # (n, hidden)
        else:  # a mean over stored rows: gather the j-th row of every question, masked, summed in float32
            X = None
            for j in range(pr.width):
                part = layer_matrix(ds, int(layer), pr.rows[:, j]).astype(np.float32)
                part[~pr.mask[:, j]] = 0.0
                X = part if X is None else X + part
            X /= pr.mask.sum(axis=1, keepdims=True).astype(np.float32)
        return X if rows is None else X[np.asarray(rows)]


def _ranges(values: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5'."""
    out, start = [], None
    for i, v in enumerate(values):
        if start is None:
            start = v
        if i + 1 == len(values) or values[i + 1] != v + 1:
            out.append(str(start) if start == v else f"{start}-{v}")
            start = None
    return ",".join(out)


def _split_pass_name(folder_name: str, ds) -> str:
    """Which pass a lone split folder holds: its folder name, else its prompt_type / score column."""
    if folder_name in PASSES:
        return folder_name
    by_type = {"mcq": "mcq", "self_confidence": "self_conf", "other_confidence": "other_conf"}
    if "prompt_type" in ds.column_names and len(ds):
        found = by_type.get(str(column_values(ds, "prompt_type")[0]))
        if found:
            return found
    for column, name in (("is_correct", "mcq"), ("self_confidence", "self_conf"), ("other_confidence", "other_conf")):
        if column in ds.column_names:
            return name
    return folder_name


def open_run_data(source, config: str | None = None) -> RunData:
    """Open a run for analysis: a run folder, one split folder, an exported folder or a Hub repo id.

    Example:
        >>> rd = open_run_data("runs/trivia500")                 # doctest: +SKIP
        >>> rd.target("mcq", "is_correct").kind                  # doctest: +SKIP
        'binary'
    """
    from .. import load_run

    path = Path(str(source)).expanduser()
    if path.is_dir() and (path / "dataset_dict.json").is_file():
        splits = json.loads((path / "dataset_dict.json").read_text()).get("splits", [])
        cfg_file = path / "run_config.json"
        run_config = json.loads(cfg_file.read_text()) if cfg_file.is_file() else None
        load_run(path, split=splits[0] if splits else "mcq")  # validates the folder (finished, readable)
        return RunData(path, config, [s for s in PASSES if s in splits] + [s for s in splits if s not in PASSES],
                       run_config)
    if path.is_dir() and (path / "state.json").is_file():
        ds = load_run(path)
        name = _split_pass_name(path.name, ds)
        cfg_file = path.parent / "run_config.json"
        run_config = json.loads(cfg_file.read_text()) if cfg_file.is_file() else None
        return RunData(path, config, [name], run_config, {name: ds})
    # an exported folder or a Hub repo: try each pass; the first error that is not "no such split" surfaces
    found, first_error = {}, None
    for name in PASSES:
        try:
            found[name] = load_run(source, config, split=name)
        except UserError as exc:
            if not path.is_dir() and not str(source).count("/") == 1:
                raise
            first_error = first_error or exc
        except (ValueError, KeyError) as exc:  # datasets: unknown split
            first_error = first_error or exc
    if not found:
        if isinstance(first_error, UserError):
            raise first_error
        raise UserError(f"{source}: no pass ({', '.join(PASSES)}) could be loaded ({first_error})")
    return RunData(source, config, list(found), None, found)
