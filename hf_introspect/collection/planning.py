"""The plan printed before any inference: rows, tokens, bytes, free disk, estimated time.

Storing every layer at every position is big (8B Llama: 33 x 4096 x 2 B = 270 KB per token), so
the user sees the cost before paying it, and a run that cannot fit on the disk is refused.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..config import kept_positions, options_end
from ..errors import UserError

# Per-row metadata beyond the token-proportional columns (texts, prompt, distributions): measured
# ~2-4 KB on the embedded model; a generous constant keeps the plan an upper bound.
METADATA_BYTES_PER_ROW = 4096
METADATA_BYTES_PER_TOKEN = 8  # input_ids (int32) + activation_positions (int32)
DISK_MARGIN = 1.05


def act_bytes_per_token(n_layers_stored: int, hidden: int, act_dtype: str) -> int:
    """Bytes of activations per stored token position.

    Example:
        >>> act_bytes_per_token(33, 4096, "float16")   # Llama-3-8B, all layers
        270336
    """
    return n_layers_stored * hidden * (2 if act_dtype == "float16" else 4)


@dataclass
class PassPlan:
    name: str
    rows: int
    prompt_tokens: int
    stored_positions: int
    act_bytes: int
    meta_bytes: int
    max_row_positions: int = 0  # the longest row's stored positions (sizes the host buffers)

    @property
    def total_bytes(self) -> int:
        return self.act_bytes + self.meta_bytes


@dataclass
class Plan:
    passes: list[PassPlan]
    layers: list[int]
    hidden: int
    act_dtype: str
    free_bytes: int
    done_bytes: int = 0  # already on disk (resumed shards)
    seconds: float | None = None  # estimated inference time, from the warm-up
    notes: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(p.total_bytes for p in self.passes)

    @property
    def needed_bytes(self) -> int:
        return max(0, int(self.total_bytes * DISK_MARGIN) - self.done_bytes)

    def __str__(self) -> str:
        lines = [f"plan: {len(self.layers)} layers x hidden {self.hidden} x {self.act_dtype} = "
                 f"{fmt_bytes(act_bytes_per_token(len(self.layers), self.hidden, self.act_dtype))} per stored token"]
        lines.append(f"  {'pass':<11}{'rows':>7}{'tokens':>10}{'stored':>10}{'activations':>13}{'metadata':>11}{'total':>11}")
        for p in self.passes:
            lines.append(f"  {p.name:<11}{p.rows:>7}{p.prompt_tokens:>10}{p.stored_positions:>10}"
                         f"{fmt_bytes(p.act_bytes):>13}{fmt_bytes(p.meta_bytes):>11}{fmt_bytes(p.total_bytes):>11}")
        lines.append(f"  total {fmt_bytes(self.total_bytes)}; free on disk {fmt_bytes(self.free_bytes)}"
                     + (f"; already written {fmt_bytes(self.done_bytes)}" if self.done_bytes else ""))
        if self.seconds is not None:
            lines.append(f"  estimated inference time {fmt_seconds(self.seconds)} (from a warm-up batch)")
        lines += [f"  {n}" for n in self.notes]
        return "\n".join(lines)


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def fmt_seconds(s: float) -> str:
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def plan_pass(name: str, seq_lens: list[int], question_spans: list, positions: str, layers: list[int], hidden: int,
              act_dtype: str, option_spans: list | None = None) -> PassPlan:
    ends = [options_end(o) for o in option_spans] if option_spans is not None else [None] * len(seq_lens)
    per_row = [len(kept_positions(positions, n, tuple(span), e)) for n, span, e in zip(seq_lens, question_spans, ends)]
    stored = sum(per_row)
    tokens = sum(seq_lens)
    return PassPlan(name=name, rows=len(seq_lens), prompt_tokens=tokens, stored_positions=stored,
                    max_row_positions=max(per_row, default=0),
                    act_bytes=stored * act_bytes_per_token(len(layers), hidden, act_dtype),
                    meta_bytes=len(seq_lens) * METADATA_BYTES_PER_ROW + (tokens + stored) * METADATA_BYTES_PER_TOKEN // 2)


def host_buffer_bytes(plan: Plan, shard_rows: int, slots: int, micro_batch: int) -> int:
    """Upper bound of the host memory the collector's activation buffers take: ``slots`` shard
    buffer sets (one being computed, the others being written) and two micro-batch staging buffers.

    Example:
        >>> p = Plan([PassPlan("mcq", 10, 1000, 1000, 0, 0, max_row_positions=100)], list(range(33)), 4096,
        ...          "float16", free_bytes=0)
        >>> fmt_bytes(host_buffer_bytes(p, shard_rows=40, slots=2, micro_batch=4))
        '2.4 GB'
    """
    longest = max((pp.max_row_positions for pp in plan.passes), default=0)
    per_token = act_bytes_per_token(len(plan.layers), plan.hidden, plan.act_dtype)
    return longest * per_token * (slots * shard_rows + 2 * micro_batch)


def free_bytes(path: str | Path) -> int:
    """Free space on the filesystem that will hold ``path`` (which may not exist yet)."""
    p = Path(path).resolve()
    while not p.exists():
        p = p.parent
    return shutil.disk_usage(p).free


def check_fits(plan: Plan, output_dir: str, force: bool) -> None:
    """Refuse a run that will not fit on the disk, naming the flags that shrink it."""
    if plan.needed_bytes <= plan.free_bytes or force:
        return
    raise UserError(f"the run needs ~{fmt_bytes(plan.needed_bytes)} but {output_dir} has {fmt_bytes(plan.free_bytes)} "
                    "free; store less with --positions last (or answer), --layers ::4, fewer --num_questions, "
                    "or pass --force to start anyway")
