"""Collection settings as one validated dataclass, and the parsers for its compact flags."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from .errors import UserError
from .passes import PASSES

POSITION_MODES = ("all", "last", "answer", "question", "question+last", "marks")


@dataclass
class CollectConfig:
    """Everything that defines a collection run. Validated on construction.

    Example:
        >>> cfg = CollectConfig(output_dir="test_run_base", num_questions=10, batch_size=4)
        >>> cfg.shard_rows
        40
    """

    output_dir: str

    # --- model ---
    model: str | None = None  # Hub id, local folder or .gguf file; None = embedded SmolLM2-135M-Instruct
    model_type: str = "base"  # "base" | "finetuned" (finetuned requires lora_checkpoint)
    lora_checkpoint: str | None = None
    dtype: str = "auto"  # auto | float32 | float16 | bfloat16
    device_map: str | None = None  # e.g. "auto": one process spread over all visible GPUs

    # --- questions ---
    questions: str | None = None  # None = built-in bank; PATH.jsonl|.json|.csv|.parquet; hub:REPO[:CONFIG][:SPLIT]
    num_questions: int | None = None  # None = all
    seed: int = 0
    shuffle_options: bool | None = None  # None = the source's own rule
    question_ids: str | None = None  # file with exact ids to use
    question_format: str | None = None  # e.g. "cais/mmlu" for a local file in that schema
    question_columns: str | None = None  # "question=COL,answer=COL,options=COL1,COL2,..." for other layouts

    # --- passes and prompts ---
    passes: tuple[str, ...] = PASSES
    prompt_templates: str | None = None  # JSON file overriding templates per pass

    # --- generation (the continuation that gives output_text) ---
    max_new_tokens: int = 10
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0

    # --- batching and sharding ---
    batch_size: int | str = 4  # int, or "auto" (largest that fits, backs off on OOM)
    save_every: int = 10  # batches per shard; a shard is the unit of atomic writes and resume
    # Run the prompts' common opening tokens once per pass (see hf_introspect.collection.prefix). It changes
    # values at float-rounding level only, but it is part of the identity (as the batch size is):
    # a resumed run equals an uninterrupted one bit for bit.
    share_prefix: bool = True

    # --- storage controls ---
    layers: str = "all"  # all | "0,8,16-20" | "::4"
    positions: str = "all"  # all | last | last:N | answer | question | question+last
    act_dtype: str = "float16"  # float16 | float32

    # --- behaviour (not part of the run's identity) ---
    overwrite: bool = False
    dry_run: bool = False
    force: bool = False
    # Go on when the checkpoint lacks weights (initialised at random) or has unused ones; the
    # weights not loaded are recorded in run_config.json's model identity.
    allow_missing_weights: bool = False
    # Leave out questions whose prompt exceeds the model's context (listed in run_config.json);
    # the kept questions' ids are part of the identity already (question_ids_hash).
    skip_long: bool = False

    NON_IDENTITY = ("output_dir", "overwrite", "dry_run", "force", "allow_missing_weights", "skip_long")

    def __post_init__(self):
        if self.model_type not in ("base", "finetuned"):
            raise UserError(f"--model_type must be 'base' or 'finetuned' (got {self.model_type!r})")
        if self.model_type == "finetuned" and not self.lora_checkpoint:
            raise UserError("--model_type finetuned needs --lora_checkpoint PATH (a PEFT adapter folder)")
        if self.model_type == "base" and self.lora_checkpoint:
            raise UserError("--lora_checkpoint given with --model_type base; add --model_type finetuned to use the adapter")
        if self.num_questions is not None and self.num_questions <= 0:
            raise UserError(f"--num_questions must be >= 1 (got {self.num_questions}); omit it to use every question")
        if isinstance(self.batch_size, str):
            if self.batch_size != "auto":
                if not self.batch_size.lstrip("-").isdigit():
                    raise UserError(f"--batch_size must be a positive integer or 'auto' (got {self.batch_size!r})")
                self.batch_size = int(self.batch_size)
        if isinstance(self.batch_size, int) and self.batch_size < 1:
            raise UserError(f"--batch_size must be >= 1 (got {self.batch_size}); try 4, or 'auto'")
        if self.save_every < 1:
            raise UserError(f"--save_every must be >= 1 batch (got {self.save_every})")
        if self.max_new_tokens < 0:
            raise UserError(f"--max_new_tokens must be >= 0 (got {self.max_new_tokens})")
        if self.temperature < 0:
            raise UserError(f"--temperature must be >= 0 (got {self.temperature}); 0 means greedy")
        if not 0 < self.top_p <= 1:
            raise UserError(f"--top_p must be in (0, 1] (got {self.top_p})")
        if isinstance(self.passes, str):
            self.passes = tuple(p.strip() for p in self.passes.split(",") if p.strip())
        bad = [p for p in self.passes if p not in PASSES]
        if bad or not self.passes:
            raise UserError(f"--passes {','.join(self.passes)}: unknown pass {bad}; choose from {','.join(PASSES)}")
        self.passes = tuple(p for p in PASSES if p in self.passes)  # canonical order
        if self.act_dtype not in ("float16", "float32"):
            raise UserError(f"--act_dtype must be float16 or float32 (got {self.act_dtype!r})")
        parse_positions(self.positions)  # validates
        if self.layers != "all":
            parse_layers(self.layers, 10**6)  # syntax check now; range check once the model is known
        out = Path(self.output_dir)
        if out.exists() and not out.is_dir():
            raise UserError(f"--output_dir {self.output_dir} is a file; pass a folder path")

    @property
    def nominal_batch_size(self) -> int:
        """Batch size that defines the shard layout (auto tunes only the micro-batches)."""
        return 8 if self.batch_size == "auto" else int(self.batch_size)

    @property
    def shard_rows(self) -> int:
        return self.save_every * self.nominal_batch_size

    def to_dict(self) -> dict:
        d = asdict(self)
        d["passes"] = list(self.passes)
        return d

    def identity(self) -> dict:
        """The settings that shape the data: a rerun into the same folder must match them."""
        return {k: v for k, v in self.to_dict().items() if k not in self.NON_IDENTITY}

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


def parse_layers(spec: str, n_residual: int) -> list[int]:
    """Residual-stream indices to store, out of ``n_residual`` = n_layers + 1.

    Example:
        >>> parse_layers("0,8,16-18", 31), parse_layers("::10", 31)
        ([0, 8, 16, 17, 18], [0, 10, 20, 30])
    """
    if spec == "all":
        return list(range(n_residual))
    chosen: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        if ":" in part:
            # python-slice style: start:stop:step, e.g. ::4 or 8:20:2
            pieces = (part.split(":") + ["", ""])[:3]
            if len(part.split(":")) > 3 or not all(p == "" or p.isdigit() for p in pieces):
                raise UserError(f"--layers {spec}: cannot read '{part}'; use all, a list like 0,8,16-20, or ::4")
            start = int(pieces[0]) if pieces[0] else 0
            stop = int(pieces[1]) if pieces[1] else n_residual
            step = int(pieces[2]) if pieces[2] else 1
            if step < 1:
                raise UserError(f"--layers {spec}: step must be >= 1")
            chosen.update(range(start, min(stop, n_residual), step))
        elif re.fullmatch(r"\d+-\d+", part):
            a, b = map(int, part.split("-"))
            if b < a:
                raise UserError(f"--layers {spec}: range {part} runs backwards")
            chosen.update(range(a, b + 1))
        elif part.isdigit():
            chosen.add(int(part))
        else:
            raise UserError(f"--layers {spec}: cannot read '{part}'; use all, a list like 0,8,16-20, or ::4")
    bad = sorted(i for i in chosen if i >= n_residual)
    if bad:
        raise UserError(f"--layers {spec}: index {bad[0]} is out of range; this model has indices 0-{n_residual - 1} "
                        "(0 = embeddings)")
    if not chosen:
        raise UserError(f"--layers {spec} selects no layer")
    return sorted(chosen)


def parse_positions(spec: str) -> tuple[str, int]:
    """``--positions`` as (mode, n): ``last:5`` -> ("last", 5); ``all`` -> ("all", 0)."""
    if spec.startswith("last:"):
        n = spec.split(":", 1)[1]
        if not n.isdigit() or int(n) < 1:
            raise UserError(f"--positions {spec}: N in last:N must be a positive integer")
        return "last", int(n)
    if spec not in POSITION_MODES:
        raise UserError(f"--positions {spec} is unknown; choose all, last, last:N, answer, question, question+last or marks")
    return spec, (1 if spec in ("last", "answer") else 0)


def kept_positions(spec: str, seq_len: int, question_span: tuple[int, int], options_end: int | None = None
                   ) -> np.ndarray:
    """Prompt token indices whose activations are stored, sorted.

    The answer (readout) position is the last prompt token: its next-token distribution is the
    restricted answer distribution. ``marks`` keeps the three tokens the analysis names: the
    question's last token, option D's last token (``options_end``: the end of its token span) and
    the readout token.

    Example:
        >>> kept_positions("question+last", 10, (3, 6)).tolist()
        [3, 4, 5, 9]
        >>> kept_positions("marks", 20, (3, 6), options_end=15).tolist()
        [5, 14, 19]
    """
    mode, n = parse_positions(spec)
    if mode == "all":
        return np.arange(seq_len, dtype=np.int64)
    if mode in ("last", "answer"):
        return np.arange(max(seq_len - n, 0), seq_len, dtype=np.int64)
    qs, qe = question_span
    if mode == "marks":  # a span not found in the prompt is (-1, -1): that mark is not stored
        marks = [qe - 1] if 0 <= qs < qe else []
        marks += [options_end - 1] if options_end is not None and options_end > 0 else []
        return np.union1d(np.asarray(marks, dtype=np.int64), [seq_len - 1]).astype(np.int64)
    question = np.arange(qs, qe, dtype=np.int64) if qs >= 0 else np.zeros(0, dtype=np.int64)
    if mode == "question":
        return question
    return np.union1d(question, [seq_len - 1]).astype(np.int64)


def options_end(option_spans) -> int | None:
    """End (exclusive) of the last option's token span, from a row's ``option_token_spans``.

    Example:
        >>> options_end([[10, 12], [12, 14], [14, 16], [16, 19]]), options_end(None)
        (19, None)
    """
    return int(option_spans[-1][1]) if option_spans else None


def config_hash(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:12]
