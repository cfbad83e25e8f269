"""Summaries of one run, or of two runs side by side, as plain dicts (``--json``) and aligned text.

A *run* is what ``collect`` writes (``RUN/run_config.json`` + one split per pass). It can be named
by its root folder or by one pass's folder (``RUN/mcq``, as in the seed's commands); an exported
folder or a Hub repo is read through :func:`hf_introspect.runs.read.load_run`.

Only the metadata columns are read in full. Activations are read one layer at a time and only at
the answer position (the last stored row, when ``activation_positions[-1] == seq_len - 1``),
straight from the memory-mapped Arrow buffers, so inspecting a run of many GB stays cheap.

Example:
    >>> run = open_run("test_run_base/mcq")                     # doctest: +SKIP
    >>> report = build_report(run, show_examples=3)             # doctest: +SKIP
    >>> print(render_report(report))                            # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import metrics as M
from ...errors import UserError
from ...passes import ANSWER_LABELS, CONFIDENCE_LABELS, CONFIDENCE_RANGES, PASSES, PROMPT_TYPES, labels_for_pass
from ...collection.storage import DATASET_DICT, RUN_CONFIG, read_run_config, split_is_final

SCORE_COLUMN = {"self_conf": "self_confidence", "other_conf": "other_confidence"}
_META = ("question_id", "question_source", "correct_answer_letter", "model_name", "checkpoint_id", "temperature",
         "max_new_tokens", "parsed_answer", "parse_source", "probs", "entropy", "seq_len", "fp16_overflow_count",
         "is_correct", "logit_margin", "self_confidence", "other_confidence")
_LAYER_RE = re.compile(r"^activations_layer_(\d+)$")
_HUB_RE = re.compile(r"^[\w.-]+/[\w.-]+$")


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------

@dataclass
class PassData:
    """One pass's split: the dataset, its metadata columns as numpy arrays, and where activations are."""

    name: str
    ds: object  # datasets.Dataset
    cols: dict[str, np.ndarray]
    layers: list[int]
    hidden: int | None
    act_dtype: str | None
    n_positions: np.ndarray  # stored activation rows per question
    answer_stored: np.ndarray  # bool: the last stored row is the last prompt token (the readout)
    disk_bytes: int | None = None
    _row: dict[str, int] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.cols["question_id"])

    def row_of(self, question_id: str) -> int | None:
        if not self._row:
            self._row = {q: i for i, q in enumerate(self.cols["question_id"].tolist())}
        return self._row.get(question_id)

    @property
    def labels(self) -> tuple[str, ...]:
        return labels_for_pass(self.name)


@dataclass
class Run:
    """A run opened for inspection."""

    location: str
    passes: dict[str, PassData]
    focus: str  # the pass the user pointed at (examples come from it)
    config: dict | None = None  # run_config.json, when there is one
    disk_bytes: int | None = None
    incomplete: list[str] = field(default_factory=list)  # passes started but not finished

    @property
    def name(self) -> str:
        for p in self.passes.values():
            if "checkpoint_id" in p.cols and len(p):
                return str(p.cols["checkpoint_id"][0])
        return Path(self.location).name or self.location


def _folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _pass_name(folder_name: str, ds) -> str:
    if folder_name in PASSES:
        return folder_name
    if "prompt_type" in ds.column_names and len(ds):
        by_type = {v: k for k, v in PROMPT_TYPES.items()}
        found = by_type.get(ds[0]["prompt_type"])
        if found:
            return found
    if "is_correct" in ds.column_names:
        return "mcq"
    for name, col in SCORE_COLUMN.items():
        if col in ds.column_names:
            return name
    raise UserError(f"cannot tell which pass {folder_name!r} holds (no prompt_type column); "
                    f"name the folder after its pass ({', '.join(PASSES)})")


def pass_data(name: str, ds, disk_bytes: int | None = None) -> PassData:
    """Read a split's metadata columns (never its activations) into a :class:`PassData`."""
    import pyarrow as pa

    ds = ds.with_format(None)  # rows as Python objects (load_run returns a numpy-formatted split)
    present = [c for c in _META if c in ds.column_names]
    if "question_id" not in present:
        raise UserError(f"the {name} split has no question_id column; it is not a hf_introspect run")
    cols = ds.select_columns(present).with_format("numpy", dtype=None)[:]
    cols = {k: np.asarray(v) for k, v in cols.items()}
    layers, hidden, dtype = [], None, None
    for col, feat in ds.features.items():
        m = _LAYER_RE.match(col)
        if m:
            layers.append(int(m.group(1)))
            hidden, dtype = feat.shape[-1], feat.dtype
    layers.sort()
    n = len(ds)
    n_pos = np.zeros(n, dtype=np.int64)
    answer = np.zeros(n, dtype=bool)
    if "activation_positions" in ds.column_names and n:
        pos = ds.select_columns(["activation_positions"]).with_format("arrow")[:]["activation_positions"]
        pos = pos.combine_chunks() if isinstance(pos, pa.ChunkedArray) else pos
        offsets = pos.offsets.to_numpy()
        n_pos = np.diff(offsets).astype(np.int64)
        values = pos.values.to_numpy(zero_copy_only=False)
        last = np.where(n_pos > 0, values[np.maximum(offsets[1:] - 1, 0)] if values.size else -1, -1)
        if "seq_len" in cols:
            answer = (n_pos > 0) & (last == cols["seq_len"].astype(np.int64) - 1)
    return PassData(name, ds, cols, layers, hidden, dtype, n_pos, answer, disk_bytes)


def _load_local_split(folder: Path):
    from datasets import load_from_disk

    try:
        return load_from_disk(str(folder))
    except Exception as exc:  # noqa: BLE001 - datasets raises several types for a bad folder
        raise UserError(f"{folder} could not be read as a dataset ({type(exc).__name__}: {exc})") from exc


def _open_local_root(root: Path, focus: str | None, location: str) -> Run:
    config = read_run_config(root)
    names = list((config or {}).get("config", {}).get("passes") or PASSES)
    names += [p.name for p in sorted(root.iterdir()) if p.is_dir() and p.name in PASSES and p.name not in names]
    passes, incomplete = {}, []
    for name in names:
        folder = root / name
        if not folder.is_dir():
            continue
        if not split_is_final(root, name):
            incomplete.append(name)
            continue
        passes[name] = pass_data(name, _load_local_split(folder), _folder_bytes(folder))
    if not passes:
        state = f" (passes started but unfinished: {', '.join(incomplete)})" if incomplete else ""
        raise UserError(f"{location} holds no finished pass{state}; rerun the same collect command to finish it")
    if focus is not None and focus not in passes:
        why = "is unfinished" if focus in incomplete else "is not in this run"
        raise UserError(f"pass {focus} {why}; finished passes: {', '.join(passes)}")
    return Run(location, passes, focus or ("mcq" if "mcq" in passes else next(iter(passes))), config,
               _folder_bytes(root), incomplete)


def _open_with_loader(location: str, config: str | None, focus: str | None) -> Run:
    from ...runs.read import load_run

    passes = {}
    errors = {}
    folder = Path(location).expanduser() / (config or "")
    local = folder.is_dir() and config is not None
    if config is None and folder.is_dir():  # an exported folder with a single config
        subs = [d for d in folder.iterdir() if (d / RUN_CONFIG).is_file()]
        if len(subs) == 1:
            folder, local = subs[0], True
    for name in PASSES:
        try:
            ds = load_run(location, config=config, split=name)
        except UserError as exc:
            errors[name] = str(exc)
            continue
        except (FileNotFoundError, ValueError, KeyError) as exc:
            errors[name] = f"{type(exc).__name__}: {exc}"
            continue
        size = sum(f.stat().st_size for f in folder.glob(f"{name}-*")) if local else None
        passes[name] = pass_data(name, ds, size)
    if not passes:
        first = next(iter(errors.values()), "nothing found").replace("pass config=", "pass --config")
        raise UserError(f"no pass of {location}{f' (config {config})' if config else ''} could be loaded: {first}")
    if focus is not None and focus not in passes:
        raise UserError(f"pass {focus} is not in {location}; found: {', '.join(passes)}")
    run_config = _exported_run_config(location, config, folder if local else None)
    return Run(location, passes, focus or ("mcq" if "mcq" in passes else next(iter(passes))), run_config,
               _folder_bytes(folder) if local else None)


def _exported_run_config(location: str, config: str | None, folder: Path | None) -> dict | None:
    """``<config>/run_config.json`` of an exported folder or Hub repo, when there is one."""
    import json as _json

    if folder is not None:
        path = folder / RUN_CONFIG
        try:
            return _json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
        except (OSError, ValueError):
            return None
    if config is None or Path(location).expanduser().exists():
        return None
    try:
        from huggingface_hub import hf_hub_download

        return _json.loads(Path(hf_hub_download(location, f"{config}/{RUN_CONFIG}", repo_type="dataset"))
                           .read_text(encoding="utf-8"))
    except Exception:  # noqa: BLE001 - offline, no such file: the header falls back to the data's columns
        return None


def open_run(location: str, config: str | None = None, split: str | None = None) -> Run:
    """Open a run from its root folder, one pass's folder, an exported folder or a Hub repo.

    Args:
        location: ``RUN``, ``RUN/mcq`` (the seed's form), an exported folder, or ``owner/name``.
        config: config name inside an exported folder or Hub repo (e.g. the model's name).
        split: the pass to focus on (examples); default the folder's pass, else ``mcq``.
    """
    if split is not None and split not in PASSES:
        raise UserError(f"--split {split} is unknown; choose one of {', '.join(PASSES)}")
    path = Path(location).expanduser()
    if path.is_dir():
        is_root = (path / RUN_CONFIG).is_file() or (path / DATASET_DICT).is_file()
        is_split = (path / "state.json").is_file() or (path / "dataset_info.json").is_file()
        if (is_root or is_split) and config is not None:
            raise UserError(f"--config names a config of an exported folder or Hub repo; {location} is a run folder, "
                            "drop --config")
        if is_root:
            return _open_local_root(path, split, location)
        if is_split:
            parent = path.parent
            if (parent / RUN_CONFIG).is_file() or (parent / DATASET_DICT).is_file():
                focus = split or (path.name if path.name in PASSES else None)
                return _open_local_root(parent, focus, location)
            ds = _load_local_split(path)
            name = _pass_name(path.name, ds)
            return Run(location, {name: pass_data(name, ds, _folder_bytes(path))}, name, None, _folder_bytes(path))
        if path.name in PASSES and (path.parent / RUN_CONFIG).is_file():
            raise UserError(f"{location} is unfinished (no state.json yet); rerun the same collect command to finish it")
        return _open_with_loader(location, config, split)
    if path.exists():
        raise UserError(f"{location} is a file; pass a run folder (or one pass's folder, e.g. RUN/mcq)")
    if _HUB_RE.match(location) and not location.startswith("."):
        return _open_with_loader(location, config, split)
    raise UserError(f"{location} does not exist; pass a run folder written by collect (e.g. test_run_base/mcq)")


# --------------------------------------------------------------------------------------------
# Activations at the answer position (Arrow, no full-column reads)
# --------------------------------------------------------------------------------------------

def answer_activations(p: PassData, layer: int, rows) -> np.ndarray:
    """Activations of ``layer`` at the last stored position of the given dataset rows, (k, hidden).

    Reads only those rows' last vectors from the Arrow buffers (memory-mapped for a local run),
    in the stored dtype. Callers pass rows whose ``answer_stored`` is True.
    """
    import pyarrow as pa

    from ...schema import layer_column

    rows = np.asarray(rows, dtype=np.int64)
    out = np.empty((len(rows), p.hidden or 0), dtype=np.dtype(p.act_dtype or "float32"))
    if not len(rows):
        return out
    ds = p.ds
    indices = getattr(ds, "_indices", None)  # a select()/shuffle() mapping, if any
    raw = indices.column(0).to_numpy()[rows] if indices is not None else rows
    chunked = ds.data.column(layer_column(layer))
    starts = np.cumsum([0] + [len(c) for c in chunked.chunks])
    chunk_of = np.searchsorted(starts, raw, side="right") - 1
    for ci in np.unique(chunk_of):
        sel = np.flatnonzero(chunk_of == ci)
        arr = chunked.chunk(int(ci))
        storage = arr.storage if isinstance(arr, pa.ExtensionArray) else arr
        offsets = storage.offsets.to_numpy()
        last = offsets[raw[sel] - starts[ci] + 1] - 1
        taken = storage.values.take(pa.array(last))
        out[sel] = taken.flatten().to_numpy(zero_copy_only=False).reshape(len(sel), -1)
    return out


def activation_shapes(p: PassData, row: int) -> dict[int, tuple[int, int]]:
    """Per stored layer, the (positions, hidden) shape of one row's activations."""
    import pyarrow as pa

    from ...schema import layer_column

    indices = getattr(p.ds, "_indices", None)
    raw = int(indices.column(0)[row].as_py()) if indices is not None else row
    shapes = {}
    for layer in p.layers:
        chunked = p.ds.data.column(layer_column(layer))
        starts = np.cumsum([0] + [len(c) for c in chunked.chunks])
        ci = int(np.searchsorted(starts, raw, side="right") - 1)
        arr = chunked.chunk(ci)
        storage = arr.storage if isinstance(arr, pa.ExtensionArray) else arr
        local = raw - int(starts[ci])
        offsets = storage.offsets
        shapes[layer] = (int(offsets[local + 1].as_py() - offsets[local].as_py()), int(p.hidden or 0))
    return shapes


def layer_norms(p: PassData, max_rows: int = 2000) -> dict:
    """Mean L2 norm at the answer position per layer (at most ``max_rows`` rows) and non-finite counts."""
    rows = np.flatnonzero(p.answer_stored)[:max_rows]
    if not len(rows) or not p.layers:
        return {"rows": 0, "layers": [], "mean_norm": [], "nonfinite": []}
    norms, bad = [], []
    for layer in p.layers:
        a = answer_activations(p, layer, rows).astype(np.float64)
        finite = np.isfinite(a)
        bad.append(int((~finite).sum()))
        norms.append(float(np.linalg.norm(np.where(finite, a, 0.0), axis=1).mean()))
    return {"rows": int(len(rows)), "layers": list(p.layers), "mean_norm": norms, "nonfinite": bad}


# --------------------------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------------------------

def format_layers(layers: list[int]) -> str:
    """``[0, 1, 2, 5, 8, 9]`` -> ``'0-2,5,8-9'``.

    Example:
        >>> format_layers([0, 1, 2, 5, 8, 9])
        '0-2,5,8-9'
    """
    parts, i = [], 0
    while i < len(layers):
        j = i
        while j + 1 < len(layers) and layers[j + 1] == layers[j] + 1:
            j += 1
        parts.append(str(layers[i]) if i == j else f"{layers[i]}-{layers[j]}")
        i = j + 1
    return ",".join(parts)


def _first(p: PassData, col: str):
    v = p.cols.get(col)
    return v[0].item() if v is not None and len(v) and hasattr(v[0], "item") else (v[0] if v is not None and len(v) else None)


def header(run: Run) -> dict:
    """Model, adapter, questions, layers/positions stored, dtype, size, overflow counts."""
    cfg = run.config or {}
    ccfg = cfg.get("config", {})
    any_pass = run.passes[run.focus]
    sources = Counter()
    for p in run.passes.values():
        if "question_source" in p.cols:
            sources = Counter(p.cols["question_source"].tolist())
            break
    layers = any_pass.layers
    num_layers = cfg.get("num_layers")
    pos_info = {}
    for name, p in run.passes.items():
        seq = p.cols.get("seq_len")
        pos_info[name] = {"mean_positions": float(p.n_positions.mean()) if len(p) else math.nan,
                          "mean_seq_len": float(seq.mean()) if seq is not None and len(seq) else math.nan,
                          "answer_position_stored": int(p.answer_stored.sum())}
    return {
        "location": run.location,
        "model_name": cfg.get("model_name") or _first(any_pass, "model_name"),
        "checkpoint_id": cfg.get("checkpoint_id") or _first(any_pass, "checkpoint_id"),
        "model_type": ccfg.get("model_type"),
        "lora_checkpoint": ccfg.get("lora_checkpoint"),
        "run_id": cfg.get("run_id"),
        "created": cfg.get("created"),
        "hf_introspect_version": cfg.get("versions", {}).get("hf_introspect"),
        "question_sources": dict(sources),
        "questions_per_pass": {name: len(p) for name, p in run.passes.items()},
        "incomplete_passes": list(run.incomplete),
        "num_layers": num_layers,
        "hidden_size": any_pass.hidden or cfg.get("hidden_size"),
        "layers_stored": layers,
        "positions": ccfg.get("positions"),
        "positions_stored": pos_info,
        "act_dtype": any_pass.act_dtype,
        "temperature": _first(any_pass, "temperature"),
        "max_new_tokens": _first(any_pass, "max_new_tokens"),
        "disk_bytes": run.disk_bytes,
        "disk_bytes_per_pass": {name: p.disk_bytes for name, p in run.passes.items()},
        "fp16_overflow": {name: {"values": int(p.cols["fp16_overflow_count"].sum()),
                                 "rows": int((p.cols["fp16_overflow_count"] > 0).sum())}
                          for name, p in run.passes.items() if "fp16_overflow_count" in p.cols},
    }


def parse_stats(p: PassData) -> dict:
    """How the parsed answer was obtained: from the output text (and whether it disagreed with the
    argmax of the restricted distribution) or, when the text named no label, from the argmax."""
    n = len(p)
    src = p.cols.get("parse_source")
    if src is None or not n:
        return {"n": n}
    argmax = np.array(p.labels)[np.argmax(p.cols["probs"], axis=1)]
    from_text = src == "output_text"
    disagree = from_text & (p.cols["parsed_answer"] != argmax)
    return {"n": n, "from_output_text": int(from_text.sum()), "no_label_in_output": int((src == "argmax").sum()),
            "output_disagrees_with_argmax": int(disagree.sum()),
            "output_disagrees_rate": float(disagree.sum() / n)}


def behaviour(p: PassData) -> dict:
    """MCQ pass: accuracy (Wilson 95%), answer/correct letter distributions, entropy and margin by
    correctness, parse statistics."""
    c = p.cols
    n = len(p)
    correct = c["is_correct"].astype(bool)
    k = int(correct.sum())
    lo, hi = M.wilson_interval(k, n)
    argmax = np.array(ANSWER_LABELS)[np.argmax(c["probs"], axis=1)] if n else np.array([])
    argmax_correct = argmax == c["correct_answer_letter"]
    split = {}
    for col in ("entropy", "logit_margin"):
        split[col] = {"all": M.describe(c[col]), "correct": M.describe(c[col][correct]),
                      "incorrect": M.describe(c[col][~correct])}
    top = c["probs"].max(axis=1) if n else np.array([])
    return {
        "n": n, "correct": k, "accuracy": k / n if n else math.nan, "accuracy_ci95": [lo, hi], "chance": 0.25,
        "argmax_accuracy": float(argmax_correct.mean()) if n else math.nan,
        "mean_p_correct": float(np.take_along_axis(
            c["probs"], np.array([ANSWER_LABELS.index(x) for x in c["correct_answer_letter"]])[:, None], 1).mean())
        if n else math.nan,
        "mean_top_probability": float(top.mean()) if n else math.nan,
        "parsed_answers": M.label_counts(c["parsed_answer"].tolist(), ANSWER_LABELS),
        "argmax_answers": M.label_counts(argmax.tolist(), ANSWER_LABELS),
        "correct_letters": M.label_counts(c["correct_answer_letter"].tolist(), ANSWER_LABELS),
        "entropy": split["entropy"], "logit_margin": split["logit_margin"],
        "parsing": parse_stats(p),
    }


@dataclass
class Joined:
    """MCQ outcome and both confidences for the questions present in every pass needed."""

    question_id: np.ndarray
    correct: np.ndarray | None
    entropy: np.ndarray | None
    self_conf: np.ndarray | None  # 0-100
    other_conf: np.ndarray | None


def join_passes(run: Run) -> Joined:
    """Align the passes on question_id (the MCQ pass's order; questions missing from a pass are dropped)."""
    base = run.passes.get("mcq") or run.passes.get("self_conf") or run.passes.get("other_conf")
    qids = base.cols["question_id"]
    keep = np.ones(len(qids), dtype=bool)
    rows = {}
    for name in ("mcq", "self_conf", "other_conf"):
        p = run.passes.get(name)
        if p is None:
            continue
        r = np.array([p.row_of(q) if p.row_of(q) is not None else -1 for q in qids.tolist()], dtype=np.int64)
        keep &= r >= 0
        rows[name] = r
    qids = qids[keep]

    def col(name, column):
        if name not in rows:
            return None
        return run.passes[name].cols[column][rows[name][keep]]

    correct = col("mcq", "is_correct")
    return Joined(qids, correct.astype(bool) if correct is not None else None, col("mcq", "entropy"),
                  col("self_conf", "self_confidence"), col("other_conf", "other_confidence"))


def calibration(j: Joined) -> dict:
    """Self-confidence vs MCQ correctness: ECE (8 native bins, 10 equal bins), Brier, AUROCs, and
    Spearman correlations with the MCQ entropy (the introspection signal)."""
    out: dict = {"n": int(len(j.question_id))}
    if j.correct is not None and j.self_conf is not None and len(j.question_id):
        conf = j.self_conf.astype(np.float64) / 100.0
        out.update({
            "ece_native_bins": M.ece(conf, j.correct, M.NATIVE_BIN_EDGES),
            "ece_10_bins": M.ece(conf, j.correct, 10),
            "brier": M.brier(conf, j.correct),
            "mean_confidence_minus_accuracy": float(conf.mean() - j.correct.mean()),
            "auroc_self_confidence": M.auroc(conf, j.correct),
            "reliability_10_bins": M.reliability_table(conf, j.correct, 10),
            "reliability_native_bins": M.reliability_table(conf, j.correct, M.NATIVE_BIN_EDGES),
        })
    if j.correct is not None and j.other_conf is not None and len(j.question_id):
        out["auroc_other_confidence"] = M.auroc(j.other_conf, j.correct)
    if j.correct is not None and j.entropy is not None and len(j.question_id):
        out["auroc_neg_entropy"] = M.auroc(-j.entropy.astype(np.float64), j.correct)
    corr = {}
    if j.self_conf is not None and j.other_conf is not None:
        corr["self_vs_other"] = M.spearman(j.self_conf, j.other_conf)
    if j.entropy is not None:
        if j.self_conf is not None:
            corr["self_vs_entropy"] = M.spearman(j.self_conf, j.entropy)
        if j.other_conf is not None:
            corr["other_vs_entropy"] = M.spearman(j.other_conf, j.entropy)
    out["spearman"] = {k: {"rho": v[0], "p": v[1]} for k, v in corr.items()}
    if "self_vs_entropy" in corr and "other_vs_entropy" in corr:
        # Positive = self-confidence follows the model's own certainty (-entropy) more than other-confidence does.
        out["introspection_delta"] = -(corr["self_vs_entropy"][0] - corr["other_vs_entropy"][0])
    return out


def confidence(run: Run) -> dict:
    """Per confidence pass: distribution of the 0-100 score, argmax and parsed bin histograms."""
    out = {}
    for name, col in SCORE_COLUMN.items():
        p = run.passes.get(name)
        if p is None or col not in p.cols:
            continue
        argmax = np.array(CONFIDENCE_LABELS)[np.argmax(p.cols["probs"], axis=1)] if len(p) else np.array([])
        out[name] = {"score": M.describe(p.cols[col]),
                     "argmax_bins": M.label_counts(argmax.tolist(), CONFIDENCE_LABELS),
                     "parsed_bins": M.label_counts(p.cols["parsed_answer"].tolist(), CONFIDENCE_LABELS),
                     "mean_probs": dict(zip(CONFIDENCE_LABELS, (float(x) for x in p.cols["probs"].mean(axis=0))))
                     if len(p) else {},
                     "mean_entropy": float(np.mean(p.cols["entropy"])) if len(p) else math.nan,
                     "parsing": parse_stats(p)}
    return out


def example(run: Run, row: int, prompt_chars: int = 300) -> dict:
    """Everything about one question of the focus pass, with the other passes' readouts joined."""
    p = run.passes[run.focus]
    r = p.ds.select_columns([c for c in ("question_id", "question_text", "options", "correct_answer_letter",
                                         "prompt_text", "output_text", "activation_positions")
                             if c in p.ds.column_names])[int(row)]
    qid = r["question_id"]
    ex = {"row": int(row), "question_id": qid, "question_text": r.get("question_text"), "options": r.get("options"),
          "correct_answer_letter": r.get("correct_answer_letter"), "pass": run.focus,
          "prompt_text": _truncate(r.get("prompt_text") or "", prompt_chars, tail=prompt_chars // 3),
          "prompt_chars": len(r.get("prompt_text") or ""), "readouts": {}}
    for name, q in run.passes.items():
        i = q.row_of(qid)
        if i is None:
            continue
        c = q.cols
        d = {"parsed_answer": str(c["parsed_answer"][i]), "parse_source": str(c["parse_source"][i]),
             "probs": dict(zip(q.labels, (float(x) for x in c["probs"][i]))), "entropy": float(c["entropy"][i])}
        if name == "mcq":
            d.update(is_correct=bool(c["is_correct"][i]), logit_margin=float(c["logit_margin"][i]))
        else:
            d["confidence"] = float(c[SCORE_COLUMN[name]][i])
        if name == run.focus:
            d["output_text"] = r.get("output_text")
        else:
            d["output_text"] = q.ds.select_columns(["output_text"])[i]["output_text"]
        ex["readouts"][name] = d
    shapes = activation_shapes(p, int(row)) if p.layers else {}
    positions = r.get("activation_positions") or []
    seq_len = int(p.cols["seq_len"][row]) if "seq_len" in p.cols else None
    ex["activations"] = {"layers": len(shapes), "shapes": sorted(set(shapes.values())), "dtype": p.act_dtype,
                         "positions": _positions_text(positions, seq_len), "seq_len": seq_len,
                         "answer_row": "last" if bool(p.answer_stored[row]) else "not stored"}
    return ex


def _positions_text(positions, seq_len) -> str:
    if not len(positions):
        return "none"
    pos = list(positions)
    if seq_len and pos == list(range(seq_len)):
        return f"all {seq_len} prompt tokens"
    return f"{len(pos)} of {seq_len} prompt tokens ({format_layers(pos)})"


def _truncate(text: str, n: int, tail: int = 0) -> str:
    """At most ``n`` characters of ``text``: its head, and its last ``tail`` characters if asked.

    Example:
        >>> _truncate("abcdefghij", 6, tail=2)
        'abcd[...4 chars...]ij'
    """
    if len(text) <= n:
        return text
    head = n - tail
    return text[:head] + f"[...{len(text) - n} chars...]" + (text[-tail:] if tail else "")


def build_report(run: Run, show_examples: int = 0, activation_stats: bool = True) -> dict:
    """The one-run report as a JSON-able dict (NaN where a value is undefined)."""
    report: dict = {"kind": "run", "run": header(run)}
    if "mcq" in run.passes:
        report["behaviour"] = behaviour(run.passes["mcq"])
    report["confidence"] = confidence(run)
    report["calibration"] = calibration(join_passes(run))
    focus = run.passes[run.focus]
    if activation_stats:
        report["activations"] = {"pass": run.focus, **layer_norms(focus)}
    n = min(max(0, show_examples), len(focus))
    report["examples"] = [example(run, i) for i in range(n)]
    return report


# --------------------------------------------------------------------------------------------
# Two runs
# --------------------------------------------------------------------------------------------

def _paired_rows(a: PassData, b: PassData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Question ids in both passes (a's order) and their rows in each."""
    qa = a.cols["question_id"].tolist()
    rows_b = [b.row_of(q) for q in qa]
    keep = np.array([r is not None for r in rows_b], dtype=bool)
    ra = np.flatnonzero(keep)
    rb = np.array([r for r in rows_b if r is not None], dtype=np.int64)
    return np.asarray(qa, dtype=object)[keep], ra, rb


def layer_similarity(a: PassData, b: PassData, ra: np.ndarray, rb: np.ndarray, layers: list[int]) -> dict:
    """Mean (and quartiles of) cosine similarity of the two runs' activations at the answer
    position, per layer, over the paired questions whose answer position both runs stored."""
    ok = a.answer_stored[ra] & b.answer_stored[rb]
    ra, rb = ra[ok], rb[ok]
    out = {"n": int(len(ra)), "layers": list(layers), "mean": [], "median": [], "q25": [], "q75": []}
    if not len(ra):
        return out
    for layer in layers:
        s = M.summarise_similarity(M.row_cosine(answer_activations(a, layer, ra), answer_activations(b, layer, rb)))
        for key in ("mean", "median", "q25", "q75"):
            out[key].append(s[key])
    return out


def _shift(a: np.ndarray, b: np.ndarray) -> dict:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    return {"a": float(np.mean(a)) if len(a) else math.nan, "b": float(np.mean(b)) if len(b) else math.nan,
            "mean_diff": float(np.mean(b - a)) if len(a) else math.nan, "wilcoxon_p": M.wilcoxon_p(b - a),
            "n": int(len(a))}


def _question_brief(p: PassData, row: int, chars: int = 80) -> str:
    return _truncate(p.ds.select_columns(["question_text"])[int(row)]["question_text"], chars)


def build_comparison(a: Run, b: Run, show_examples: int = 0) -> dict:
    """Two runs joined on question_id: accuracy + McNemar, agreement, flips, shifts, calibration
    side by side, and the per-layer cosine similarity at the answer position."""
    shared_passes = [name for name in PASSES if name in a.passes and name in b.passes]
    if not shared_passes:
        raise UserError(f"the runs share no pass ({', '.join(a.passes)} vs {', '.join(b.passes)})")
    pairs = {name: _paired_rows(a.passes[name], b.passes[name]) for name in shared_passes}
    focus = a.focus if a.focus in shared_passes else shared_passes[0]
    if not len(pairs[focus][0]):
        raise UserError(f"the runs share no questions: {a.location} and {b.location} have disjoint question_id "
                        f"sets in the {focus} pass (were they collected from the same questions and --seed?)")
    pa_, pb_ = a.passes[focus], b.passes[focus]
    if pa_.hidden and pb_.hidden and pa_.hidden != pb_.hidden:
        raise UserError(f"the runs' hidden sizes differ ({pa_.hidden} vs {pb_.hidden}): they are not the same base "
                        "model, so their activations cannot be compared")
    layers = sorted(set(pa_.layers) & set(pb_.layers))
    if not layers:
        raise UserError(f"the runs share no stored layer ({format_layers(pa_.layers) or 'none'} vs "
                        f"{format_layers(pb_.layers) or 'none'}); collect both with the same --layers")
    names = _run_names(a, b)
    out: dict = {"kind": "comparison", "names": names, "runs": [header(a), header(b)], "focus": focus,
                 "shared_questions": {name: int(len(q)) for name, (q, _, _) in pairs.items()},
                 "only_in_a": {name: len(a.passes[name]) - int(len(pairs[name][0])) for name in shared_passes},
                 "only_in_b": {name: len(b.passes[name]) - int(len(pairs[name][0])) for name in shared_passes}}
    if "mcq" in shared_passes:
        qids, ra, rb = pairs["mcq"]
        A, B = a.passes["mcq"], b.passes["mcq"]
        ca, cb = A.cols["is_correct"][ra].astype(bool), B.cols["is_correct"][rb].astype(bool)
        n = len(qids)
        acc = {}
        for key, c in (("a", ca), ("b", cb)):
            acc[key] = {"correct": int(c.sum()), "accuracy": float(c.mean()), "ci95": list(M.wilson_interval(int(c.sum()), n))}
        same = A.cols["parsed_answer"][ra] == B.cols["parsed_answer"][rb]
        flips = np.flatnonzero(ca != cb)
        flip_list = []
        for k in flips[:max(0, show_examples) or 10]:
            flip_list.append({"question_id": str(qids[k]), "question": _question_brief(A, ra[k]),
                              "correct": str(A.cols["correct_answer_letter"][ra[k]]),
                              "a_answer": str(A.cols["parsed_answer"][ra[k]]), "b_answer": str(B.cols["parsed_answer"][rb[k]]),
                              "a_p_correct": _p_correct(A, ra[k]), "b_p_correct": _p_correct(B, rb[k]),
                              "direction": "gained" if cb[k] else "lost"})
        out["mcq"] = {
            "n": n, "a": acc["a"], "b": acc["b"], "accuracy_diff": acc["b"]["accuracy"] - acc["a"]["accuracy"],
            "mcnemar": M.mcnemar(int((ca & ~cb).sum()), int((~ca & cb).sum())),
            "agreement": float(same.mean()), "answers_changed": int((~same).sum()),
            "flips": {"lost": int((ca & ~cb).sum()), "gained": int((~ca & cb).sum()), "listed": flip_list},
        }
    shifts = {}
    for name, col in (("mcq", "entropy"), ("mcq", "logit_margin"), ("self_conf", "self_confidence"),
                      ("other_conf", "other_confidence"), ("self_conf", "entropy"), ("other_conf", "entropy")):
        if name in pairs and col in a.passes[name].cols and col in b.passes[name].cols:
            _, ra, rb = pairs[name]
            key = col if col != "entropy" or name == "mcq" else f"{name}_entropy"
            shifts[key] = _shift(a.passes[name].cols[col][ra], b.passes[name].cols[col][rb])
    out["shifts"] = shifts
    ja, jb = join_passes(a), join_passes(b)
    shared = np.intersect1d(ja.question_id.astype(str), jb.question_id.astype(str))
    out["calibration"] = {"n_shared": int(len(shared)), "a": calibration(_restrict(ja, shared)),
                          "b": calibration(_restrict(jb, shared))}
    sim = {}
    for name in shared_passes:
        _, ra, rb = pairs[name]
        common = sorted(set(a.passes[name].layers) & set(b.passes[name].layers))
        if common and a.passes[name].hidden == b.passes[name].hidden:
            sim[name] = layer_similarity(a.passes[name], b.passes[name], ra, rb, common)
    out["layer_similarity"] = sim
    if show_examples and "mcq" in shared_passes:
        qids, ra, rb = pairs["mcq"]
        order = list(np.flatnonzero(a.passes["mcq"].cols["is_correct"][ra] != b.passes["mcq"].cols["is_correct"][rb]))
        order += [k for k in range(len(qids)) if k not in set(order)]
        out["examples"] = [{"a": example(_refocus(a), int(ra[k])), "b": example(_refocus(b), int(rb[k]))}
                           for k in order[:show_examples]]
    return out


def _refocus(run: Run) -> Run:
    return Run(run.location, run.passes, "mcq", run.config, run.disk_bytes, run.incomplete)


def _p_correct(p: PassData, row: int) -> float:
    return float(p.cols["probs"][row][ANSWER_LABELS.index(str(p.cols["correct_answer_letter"][row]))])


def _restrict(j: Joined, qids: np.ndarray) -> Joined:
    keep = np.isin(j.question_id.astype(str), qids)
    pick = (lambda x: None if x is None else x[keep])
    return Joined(j.question_id[keep], pick(j.correct), pick(j.entropy), pick(j.self_conf), pick(j.other_conf))


def _run_names(a: Run, b: Run) -> list[str]:
    na, nb = a.name, b.name
    if na == nb:
        na, nb = f"{na} (A)", f"{nb} (B)"
    return [na, nb]


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------

def to_jsonable(obj):
    """Plain JSON types; NaN/inf -> None, numpy scalars -> Python, tuples -> lists."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def to_json(report: dict) -> str:
    return json.dumps(to_jsonable(report), indent=2, allow_nan=False)


def _f(x, nd: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    return f"{x:.{nd}f}"


def _pct(x, nd: int = 1) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:.{nd}f}%"


def _p(x) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{x:.2g}" if x < 0.001 else f"{x:.3f}"


def _size(n) -> str:
    if n is None:
        return "n/a"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def table(rows: list[list], header: list[str] | None = None, indent: int = 2, left: bool = False) -> str:
    """Aligned columns: the first left-aligned, the rest right-aligned (or all left with ``left``).

    Example:
        >>> print(table([["a", 1], ["bb", 22]], ["k", "v"]))
          k    v
          a    1
          bb  22
    """
    rows = [[str(c) for c in r] for r in ([header] if header else []) + rows]
    widths = [max(len(r[i]) for r in rows if i < len(r)) for i in range(max(len(r) for r in rows))]
    lines = []
    for r in rows:
        cells = [c.ljust(widths[i]) if i == 0 or left else c.rjust(widths[i]) for i, c in enumerate(r)]
        lines.append(" " * indent + "  ".join(cells).rstrip())
    return "\n".join(lines)


def _section(title: str) -> str:
    return f"\n== {title} " + "=" * max(3, 72 - len(title))


def _header_lines(h: dict) -> list[list]:
    adapter = h.get("checkpoint_id") or "n/a"
    if h.get("lora_checkpoint"):
        adapter = f"{h['lora_checkpoint']} (checkpoint_id {adapter})"
    elif h.get("model_type") == "base" or adapter == "base":
        adapter = f"none (checkpoint_id {adapter})"
    srcs = ", ".join(f"{k} ({v})" for k, v in h["question_sources"].items()) or "n/a"
    layers = h["layers_stored"]
    lay = f"{format_layers(layers)} ({len(layers)} of {h['num_layers'] + 1} residual-stream indices; 0 = embeddings)" \
        if h.get("num_layers") is not None else f"{format_layers(layers)} ({len(layers)} columns; 0 = embeddings)"
    pos = h["positions_stored"]
    first = next(iter(pos.values()))
    pos_text = f"{h.get('positions') or '?'}: mean {first['mean_positions']:.1f} stored of {first['mean_seq_len']:.1f} prompt tokens"
    missing = {k: v["answer_position_stored"] for k, v in pos.items()}
    per_pass = h["questions_per_pass"]
    if any(missing[k] < per_pass[k] for k in missing):
        pos_text += "; answer position stored for " + ", ".join(f"{k} {missing[k]}/{per_pass[k]}" for k in missing)
    overflow = ", ".join(f"{k} {v['values']} values in {v['rows']} rows" for k, v in h["fp16_overflow"].items()
                         if v["values"]) or ("none" if h["fp16_overflow"] else "n/a")
    size = _size(h["disk_bytes"])
    if any(v for v in h["disk_bytes_per_pass"].values()):
        size += " (" + ", ".join(f"{k} {_size(v)}" for k, v in h["disk_bytes_per_pass"].items()) + ")"
    rows = [["location", h["location"]], ["model", h.get("model_name") or "n/a"], ["adapter", adapter],
            ["questions", f"{', '.join(f'{k} {v}' for k, v in per_pass.items())}; source {srcs}"]]
    if h["incomplete_passes"]:
        rows.append(["unfinished", ", ".join(h["incomplete_passes"])])
    rows += [["layers", lay], ["hidden size", h.get("hidden_size") or "n/a"], ["positions", pos_text],
             ["dtype", h.get("act_dtype") or "n/a"],
             ["generation", f"temperature {_f(h.get('temperature'), 2)}, max_new_tokens {h.get('max_new_tokens')}"],
             ["disk", size], ["fp16 overflow", overflow]]
    if h.get("run_id"):
        rows.append(["run", f"{h['run_id']} created {h.get('created')} (hf_introspect {h.get('hf_introspect_version')})"])
    return rows


def _kv(rows: list[list], indent: int = 2) -> str:
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{' ' * indent}{r[0].ljust(width)}  {r[1]}" for r in rows)


def _dist_rows(named: list[tuple[str, dict]], labels) -> tuple[list[str], list[list]]:
    extra = ["other"] if any("other" in d for _, d in named) else []
    head = [""] + list(labels) + extra
    rows = [[name] + [d.get(lab, 0) for lab in list(labels) + extra] for name, d in named]
    return head, rows


def _render_behaviour(b: dict) -> str:
    lo, hi = b["accuracy_ci95"]
    lines = [f"  accuracy {_pct(b['accuracy'])} ({b['correct']}/{b['n']}), 95% CI [{_pct(lo)}, {_pct(hi)}] "
             f"(Wilson); chance 25.0%; argmax accuracy {_pct(b['argmax_accuracy'])}",
             f"  mean P(correct letter) {_f(b['mean_p_correct'])}, mean top probability {_f(b['mean_top_probability'])}",
             "", "  letters (position bias):"]
    head, rows = _dist_rows([("parsed answer", b["parsed_answers"]), ("argmax", b["argmax_answers"]),
                             ("correct letter", b["correct_letters"])], ANSWER_LABELS)
    lines.append(table(rows, head, indent=4))
    rows = []
    for col, label in (("entropy", "entropy (nats)"), ("logit_margin", "logit margin")):
        d = b[col]
        rows.append([label, _f(d["all"]["mean"]), _f(d["all"]["std"]), _f(d["correct"]["mean"]),
                     _f(d["incorrect"]["mean"])])
    lines += ["", table(rows, ["", "mean", "std", "correct", "incorrect"], indent=4), ""]
    lines.append("  " + _parse_line(b["parsing"]))
    return "\n".join(lines)


def _parse_line(s: dict) -> str:
    if "from_output_text" not in s:
        return "output text: n/a"
    return (f"output text named a label in {s['from_output_text']}/{s['n']}, disagreed with the argmax in "
            f"{s['output_disagrees_with_argmax']}, named no label (argmax used) in {s['no_label_in_output']}")


def _render_confidence(c: dict, cal: dict) -> str:
    lines = []
    if c:
        rows = []
        for name, d in c.items():
            s = d["score"]
            rows.append([name, s["n"], _f(s["mean"], 1), _f(s["std"], 1), _f(s["median"], 1),
                         f"{_f(s['min'], 1)}-{_f(s['max'], 1)}", _f(d["mean_entropy"])])
        lines.append(table(rows, ["confidence (0-100)", "n", "mean", "std", "median", "range", "entropy"]))
        named = []
        for name, d in c.items():
            named += [(f"{name} argmax", d["argmax_bins"]), (f"{name} parsed", d["parsed_bins"]),
                      (f"{name} mean P", {k: f"{v:.2f}" for k, v in d["mean_probs"].items()})]
        head, rows = _dist_rows(named, CONFIDENCE_LABELS)
        lines += ["", "  bins: " + "  ".join(f"{lab} {rng}" for lab, rng in zip(CONFIDENCE_LABELS, CONFIDENCE_RANGES)),
                  table(rows, head)]
        for name, d in c.items():
            lines.append(f"  {name}: " + _parse_line(d["parsing"]))
    if "ece_10_bins" in cal or cal.get("spearman"):
        lines += ["", f"  calibration of self-confidence vs MCQ correctness ({cal['n']} questions in all passes):"]
        lines.append(_kv([[k, v] for k, v in _calibration_rows(cal)], indent=4))
    return "\n".join(lines)


def _calibration_rows(cal: dict) -> list[tuple[str, str]]:
    rows = []
    for key, label in (("ece_native_bins", "ECE (8 native bins)"), ("ece_10_bins", "ECE (10 equal bins)"),
                       ("brier", "Brier score"), ("mean_confidence_minus_accuracy", "mean confidence - accuracy"),
                       ("auroc_self_confidence", "AUROC self_confidence"),
                       ("auroc_other_confidence", "AUROC other_confidence"),
                       ("auroc_neg_entropy", "AUROC -entropy (MCQ)")):
        if key in cal:
            rows.append((label, _f(cal[key])))
    sp = cal.get("spearman", {})
    for key, label in (("self_vs_other", "Spearman self vs other"), ("self_vs_entropy", "Spearman self vs MCQ entropy"),
                       ("other_vs_entropy", "Spearman other vs MCQ entropy")):
        if key in sp:
            rows.append((label, f"{_f(sp[key]['rho'])} (p {_p(sp[key]['p'])})"))
    if "introspection_delta" in cal:
        rows.append(("introspection delta", f"{_f(cal['introspection_delta'])} (rho(self,-H) - rho(other,-H); "
                                            "> 0: self-confidence tracks the model's own uncertainty better)"))
    return rows


def _render_activations(a: dict) -> str:
    if not a.get("rows"):
        return "  no answer-position activations stored"
    layers = a["layers"]
    pick = sorted(set([0, len(layers) // 4, len(layers) // 2, 3 * len(layers) // 4, len(layers) - 1]))
    rows = [[f"layer {layers[i]}", _f(a["mean_norm"][i], 2), a["nonfinite"][i]] for i in pick]
    bad = sum(a["nonfinite"])
    return (f"  {a['pass']} pass, answer position, {a['rows']} questions ({len(layers)} layers; all in --json)\n"
            + table(rows, ["", "mean L2 norm", "non-finite"], indent=4)
            + (f"\n  WARNING: {bad} non-finite values at the answer position" if bad else ""))


def _readout_line(name: str, d: dict, prefix: str = "") -> str:
    tag = prefix + {"mcq": "mcq", "self_conf": "self", "other_conf": "other"}.get(name, name)
    probs = " ".join(f"{lab} {p:.3f}" for lab, p in d["probs"].items())
    how = "" if d["parse_source"] == "output_text" else " (argmax: output named no label)"
    line = f"  {tag:<8} output {d['output_text']!r} -> {d['parsed_answer']}{how}; P {probs}; H {d['entropy']:.3f}"
    if name == "mcq":
        return line + f"; margin {d['logit_margin']:+.3f}; {'correct' if d['is_correct'] else 'wrong'}"
    return line + f"; confidence {d['confidence']:.1f}"


def _render_example(ex: dict, k: int, total: int, prefix: str = "", extra: list[str] | None = None) -> str:
    lines = [f"  --- example {k} of {total}: {ex['question_id']} (row {ex['row']} of {ex['pass']}) ---",
             f"  question: {ex['question_text']}"]
    for lab, opt in (ex.get("options") or {}).items():
        mark = "  <- correct" if lab == ex.get("correct_answer_letter") else ""
        lines.append(f"    {lab}. {opt}{mark}")
    lines.append(f"  prompt ({ex['prompt_chars']} chars): {ex['prompt_text']!r}")
    lines += [_readout_line(name, d, prefix) for name, d in ex["readouts"].items()]
    lines += extra or []
    a = ex["activations"]
    shape = ", ".join(f"({s[0]}, {s[1]})" for s in a["shapes"]) or "none"
    lines.append(f"  activations: {a['layers']} layers x {shape} {a['dtype']}; positions: {a['positions']}; "
                 f"answer position row: {a['answer_row']}")
    return "\n".join(lines)


def render_report(r: dict) -> str:
    """Readable text of :func:`build_report`'s dict."""
    out = [_section("run"), _kv(_header_lines(r["run"]))]
    if "behaviour" in r:
        out += [_section("MCQ behaviour"), _render_behaviour(r["behaviour"])]
    if r["confidence"] or r["calibration"].get("spearman"):
        out += [_section("confidence"), _render_confidence(r["confidence"], r["calibration"])]
    if "activations" in r:
        out += [_section("activations"), _render_activations(r["activations"])]
    if r["examples"]:
        out.append(_section("examples"))
        out += [_render_example(ex, k + 1, len(r["examples"])) for k, ex in enumerate(r["examples"])]
    if r.get("plots"):
        out += [_section("plots"), "\n".join(f"  {p}" for p in r["plots"])]
    return "\n".join(out).lstrip("\n") + "\n"


def render_comparison(c: dict) -> str:
    """Readable text of :func:`build_comparison`'s dict."""
    na, nb = c["names"]
    ha, hb = c["runs"]
    out = [_section(f"comparison: A = {na}, B = {nb}")]
    ra, rb = dict(_header_lines(ha)), dict(_header_lines(hb))
    keys = [k for k in ra if k in rb and k != "run"]
    out.append(table([[k, ra[k], rb[k]] for k in keys], ["", f"A: {na}", f"B: {nb}"], left=True))
    out.append("  shared questions: " + ", ".join(
        f"{k} {v} (only A {c['only_in_a'][k]}, only B {c['only_in_b'][k]})" for k, v in c["shared_questions"].items()))
    if "mcq" in c:
        m = c["mcq"]
        out.append(_section("MCQ accuracy"))
        rows = [[name, f"{_pct(m[k]['accuracy'])}", f"{m[k]['correct']}/{m['n']}",
                 f"[{_pct(m[k]['ci95'][0])}, {_pct(m[k]['ci95'][1])}]"] for name, k in ((na, "a"), (nb, "b"))]
        out.append(table(rows, ["", "accuracy", "correct", "95% CI"]))
        mc = m["mcnemar"]
        method = {"exact_binomial": "exact binomial", "chi2_cc": "chi-square, continuity corrected", "none": "no discordant pairs"}
        out += [f"  difference B - A: {100 * m['accuracy_diff']:+.1f} points; McNemar ({method[mc['method']]}): "
                f"only A right {mc['b']}, only B right {mc['c']}, p = {_p(mc['p_value'])}",
                f"  same parsed answer on {_pct(m['agreement'])} of questions ({m['answers_changed']} changed); "
                f"correctness flipped on {m['flips']['lost'] + m['flips']['gained']} "
                f"(lost {m['flips']['lost']}, gained {m['flips']['gained']})"]
        if m["flips"]["listed"]:
            rows = [[f["question_id"], f"B {f['direction']}", f["correct"], f"{f['a_answer']} ({f['a_p_correct']:.2f})",
                     f"{f['b_answer']} ({f['b_p_correct']:.2f})", f["question"]] for f in m["flips"]["listed"]]
            out += [f"  flipped questions (first {len(rows)}; answer with P(correct letter) in brackets):",
                    table(rows, ["question_id", "change", "correct", "A answer", "B answer", "question"], indent=4)]
    if c["shifts"]:
        out.append(_section("shifts (B - A, paired)"))
        rows = [[k, _f(s["a"]), _f(s["b"]), f"{s['mean_diff']:+.3f}" if math.isfinite(s["mean_diff"]) else "n/a",
                 _p(s["wilcoxon_p"]), s["n"]] for k, s in c["shifts"].items()]
        out.append(table(rows, ["", "A mean", "B mean", "mean diff", "Wilcoxon p", "n"]))
    cal = c["calibration"]
    la, lb = dict(_calibration_rows(cal["a"])), dict(_calibration_rows(cal["b"]))
    if la:
        out.append(_section(f"calibration ({cal['n_shared']} questions in every pass of both)"))
        rows = [[k, la[k].split(" (rho")[0], lb.get(k, "n/a").split(" (rho")[0]] for k in la]
        out.append(table(rows, ["", na, nb]))
    sim = {name: v for name, v in c["layer_similarity"].items() if v["n"]}
    if c["layer_similarity"]:
        out.append(_section("activation similarity at the answer position (cosine, A vs B)"))
    if sim:
        layers = sorted({l for v in sim.values() for l in v["layers"]})
        rows = []
        for l in layers:
            row = [f"layer {l}"]
            for v in sim.values():
                row.append(_f(v["mean"][v["layers"].index(l)], 4) if l in v["layers"] else "")
            rows.append(row)
        out += ["  mean over questions per pass (" + ", ".join(f"{k} n={v['n']}" for k, v in sim.items())
                + "; quartiles in --json)", table(rows, [""] + list(sim))]
    for name, v in c["layer_similarity"].items():
        if not v["n"]:
            out.append(f"  {name}: no question has its answer position stored in both runs")
    if c.get("examples"):
        out.append(_section("examples (flipped first)"))
        for k, pair in enumerate(c["examples"]):
            extra = [_readout_line(name, d, "B ") for name, d in pair["b"]["readouts"].items()]
            out.append(_render_example(pair["a"], k + 1, len(c["examples"]), "A ", extra))
    if c.get("plots"):
        out += [_section("plots"), "\n".join(f"  {p}" for p in c["plots"])]
    return "\n".join(out).lstrip("\n") + "\n"
