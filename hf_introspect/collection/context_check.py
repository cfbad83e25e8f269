"""Prompts longer than the model's context: refused by default, or dropped with ``--skip_long``.

A model computes happily past its trained positions (rotary embeddings extrapolate, learned ones
may wrap or index out of range), so an over-long prompt gives probabilities and activations that
look valid and are not. The check runs on the tokenized prompts of every pass before the plan
(and before the warm-up batch, which runs the longest prompts).

The positions a question needs: its prompt's tokens, plus the continuation's ``max_new_tokens - 1``
fed-back tokens (the first generated token is read at the last prompt position).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ..errors import UserError

logger = logging.getLogger("hf_introspect")

# Config attributes that hold the context length, in the order transformers' model families use them.
_CONTEXT_ATTRS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")


def max_positions(model_config) -> int | None:
    """The model's context length from its config (None when the config names none).

    Example:
        >>> from types import SimpleNamespace
        >>> max_positions(SimpleNamespace(max_position_embeddings=8192)), max_positions(SimpleNamespace())
        (8192, None)
    """
    for name in _CONTEXT_ATTRS:
        value = getattr(model_config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


@dataclass
class LongPrompts:
    """Questions whose prompt (in some pass) needs more positions than the model has."""

    limit: int
    question_ids: list[str]  # in dataset order
    needed: list[int]  # positions each needs (its longest pass)
    keep: np.ndarray  # (n_questions,) bool: True for the questions that fit

    def summary(self, shown: int = 5) -> str:
        ids = ", ".join(f"{q} ({n})" for q, n in zip(self.question_ids[:shown], self.needed[:shown]))
        more = f" and {len(self.question_ids) - shown} more" if len(self.question_ids) > shown else ""
        return (f"{len(self.question_ids)} of {len(self.keep)} questions need more than the model's "
                f"{self.limit} positions: {ids}{more}")

    def record(self) -> dict:
        """What ``run_config.json`` keeps about the dropped questions."""
        return {"limit": self.limit, "count": len(self.question_ids), "question_ids": self.question_ids,
                "positions_needed": self.needed}


def find_long(seq_lens: dict[str, list[int]], question_ids: list[str], limit: int | None,
              max_new_tokens: int) -> LongPrompts | None:
    """Questions whose prompt in any pass (plus the continuation) exceeds ``limit`` positions.

    ``seq_lens``: pass -> (n_questions,) prompt token counts, rows in question order.

    Example:
        >>> r = find_long({"mcq": [5, 9, 4], "self_conf": [6, 7, 11]}, ["a", "b", "c"], limit=8, max_new_tokens=1)
        >>> r.question_ids, r.needed, r.keep.tolist()
        (['b', 'c'], [9, 11], [True, False, False])
        >>> find_long({"mcq": [5]}, ["a"], limit=None, max_new_tokens=10) is None
        True
    """
    if limit is None or not question_ids:
        return None
    longest = np.max(np.stack([np.asarray(v, dtype=np.int64) for v in seq_lens.values()]), axis=0)  # (n,)
    needed = longest + max(max_new_tokens - 1, 0)
    over = needed > limit
    if not over.any():
        return None
    idx = np.flatnonzero(over)
    return LongPrompts(limit, [question_ids[i] for i in idx], needed[idx].tolist(), ~over)


def check_long(found: LongPrompts | None, skip_long: bool) -> np.ndarray | None:
    """Refuse over-long prompts, or (``skip_long``) return the rows to keep and say so.

    Returns None when every prompt fits (nothing to drop).

    Example:
        >>> found = find_long({"mcq": [5, 9]}, ["a", "b"], limit=8, max_new_tokens=1)
        >>> check_long(found, skip_long=True).tolist()
        [0]
        >>> check_long(None, skip_long=False) is None
        True
    """
    if found is None:
        return None
    if not skip_long:
        raise UserError(f"{found.summary()}; shorten them, lower --max_new_tokens, or pass --skip_long to "
                        "leave them out (recorded in run_config.json)")
    if not found.keep.any():
        raise UserError(f"--skip_long: {found.summary()}, leaving no question to collect")
    logger.warning("--skip_long: %s; they are left out (listed in run_config.json under skipped_long)",
                   found.summary())
    return np.flatnonzero(found.keep)
