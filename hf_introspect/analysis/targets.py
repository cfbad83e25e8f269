"""Target specs -> per-question values a probe predicts.

A spec names one of:

- a numeric column of the split: ``entropy``, ``logit_margin``, ``self_confidence``,
  ``other_confidence``, surface features (``char_length``, ``token_rarity_mean``, ...);
- a boolean column (``is_correct``, ``has_negation``): a binary target (AUROC, accuracy);
- a letter column (``parsed_answer``, ``correct_answer_letter``) or any other string column: classes;
- a quantity over the pass's label logits z (softmax p over the labels only), as the reference
  research defines them: ``logit_gap`` = z1 - z2 (top minus second; ``logit_margin`` is correct
  minus best incorrect, a different quantity), ``top_prob`` = max p, ``top_logit`` = z1 - mean(z);
- ``PASS.COL``: any of the above from another pass of the same questions, joined on ``question_id``
  (e.g. ``mcq.entropy`` while probing ``self_conf`` activations).

Rows without a value (NaN, null, a parsed answer that is not a label, a question missing from the
other pass) are masked: ``Target.valid`` is False there and ``Target.n_missing`` counts them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UserError
from ..passes import ANSWER_LABELS

DERIVED = ("logit_gap", "top_prob", "top_logit")
LETTER_COLUMNS = ("parsed_answer", "correct_answer_letter")
LETTERS = np.array(ANSWER_LABELS)  # the option letters: one owner, hf_introspect.passes


@dataclass
class Target:
    """Per-question values of one target.

    name: the spec; kind: "regression" | "binary" | "multiclass".
    values: (n,) float64 (regression; 0/1 for binary) or int64 class codes (multiclass), 0 where masked.
    classes: class names for multiclass (codes index them), None otherwise. valid: (n,) bool.
    """

    name: str
    kind: str
    values: np.ndarray
    valid: np.ndarray
    classes: np.ndarray | None = None

    @property
    def n_missing(self) -> int:
        return int((~self.valid).sum())

    @property
    def metric(self) -> str:
        return {"regression": "r2", "binary": "auroc", "multiclass": "accuracy"}[self.kind]

    def require_variation(self) -> "Target":
        """Raise a one-line UserError unless at least 2 valid rows differ (probes need a varying target)."""
        v = self.values[self.valid]
        if len(v) < 2 or np.all(v == v[0]):
            what = f"constant ({v[0]!r})" if len(v) else "empty"
            raise UserError(f"target {self.name!r} is {what} over the {len(v)} questions with a value "
                            f"({self.n_missing} masked); a probe needs a varying target, pick another")
        if self.kind != "regression":
            counts = np.bincount(v.astype(np.int64))
            if np.count_nonzero(counts) < 2:
                raise UserError(f"target {self.name!r} has a single class; pick another target")
        return self


def derived_from_logits(name: str, logits: np.ndarray) -> np.ndarray:
    """logit_gap / top_prob / top_logit of each row of label logits z (n, k).

    Example:
        >>> z = np.array([[2.0, 0.0, 1.0, -1.0]])
        >>> derived_from_logits("logit_gap", z).tolist(), derived_from_logits("top_logit", z).tolist()
        ([1.0], [1.5])
    """
    z = logits.astype(np.float64)
    top2 = -np.sort(-z, axis=1)[:, :2]                               # (n, 2) largest first
    if name == "logit_gap":
        return top2[:, 0] - top2[:, 1]
    if name == "top_logit":
        return top2[:, 0] - z.mean(axis=1)
    if name == "top_prob":
        p = np.exp(z - top2[:, :1])
        return 1.0 / p.sum(axis=1)                                   # max p = exp(0) / sum exp(z - z1)
    raise UserError(f"unknown derived target {name!r}; choose {', '.join(DERIVED)}")


def from_column(name: str, raw: np.ndarray, kind: str | None = None) -> Target:
    """A Target from one column's raw values (numbers, bools, strings; None/NaN masked).

    Example:
        >>> t = from_column("parsed_answer", np.array(["A", "C", "", "A"], dtype=object))
        >>> t.kind, t.values.tolist(), t.valid.tolist(), t.classes.tolist()
        ('multiclass', [0, 2, 0, 0], [True, True, False, True], ['A', 'B', 'C', 'D'])
    """
    raw = np.asarray(raw)
    n = len(raw)
    if raw.dtype == bool or (raw.dtype == object and all(isinstance(x, (bool, np.bool_)) or x is None for x in raw)):
        valid = np.array([x is not None for x in raw]) if raw.dtype == object else np.ones(n, dtype=bool)
        vals = np.where(valid, raw, False).astype(bool).astype(np.float64)
        return Target(name, "binary", vals, valid)
    if raw.dtype.kind in "iuf":
        vals = raw.astype(np.float64)
        valid = np.isfinite(vals)
        return Target(name, kind or "regression", np.where(valid, vals, 0.0), valid)
    if raw.dtype.kind in "OUS":
        text = np.array(["" if x is None else str(x) for x in raw], dtype=object)
        if name in LETTER_COLUMNS or name.endswith(tuple("." + c for c in LETTER_COLUMNS)):
            classes = LETTERS
        else:
            classes = np.array(sorted({t for t in text if t}))
        code = {c: i for i, c in enumerate(classes)}
        valid = np.array([t in code for t in text])
        vals = np.array([code.get(t, 0) for t in text], dtype=np.int64)
        return Target(name, "multiclass", vals, valid, classes)
    raise UserError(f"column {name!r} ({raw.dtype}) is not a usable target; pick a numeric, boolean or letter column")


def joined(target: Target, own_ids: np.ndarray, other_ids: np.ndarray) -> Target:
    """``target`` (rows in other_ids order) re-indexed to own_ids; questions the other pass lacks are masked.

    Example:
        >>> t = Target("mcq.entropy", "regression", np.array([1.0, 2.0]), np.array([True, True]))
        >>> j = joined(t, np.array(["b", "c", "a"]), np.array(["a", "b"]))
        >>> j.values.tolist(), j.valid.tolist()
        ([2.0, 0.0, 1.0], [True, False, True])
    """
    from .ids import align

    mine, theirs = align(own_ids, other_ids)
    values = np.zeros(len(own_ids), dtype=target.values.dtype)
    valid = np.zeros(len(own_ids), dtype=bool)
    values[mine], valid[mine] = target.values[theirs], target.valid[theirs]
    return Target(target.name, target.kind, values, valid, target.classes)
