"""Position names -> which stored activation row of each question a probe reads.

A run stores, per question, the activations of some prompt tokens (``activation_positions`` lists
their prompt indices, sorted). Probes name a token by its role instead:

- ``answer``: the readout token (``answer_token_index`` / ``confidence_token_index``);
- ``question_end``: the last token of the question (``question_token_span`` end - 1);
- ``options_end``: the last token of option D (``option_token_spans[3]`` end - 1);
- an int ``k``: the k-th stored row of every question (negative counts from the end);
- ``mean:question``: the mean over all the question's tokens.

A name whose token was not stored raises a one-line error naming the ``--positions`` of
``collect`` that stores it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UserError

NAMES = ("answer", "question_end", "options_end", "mean:question")
# --positions modes of `collect` that store each named token (marks: question end, options end, readout)
_STORED_BY = {
    "answer": "last (or marks, question+last, all)",
    "question_end": "marks (or question, question+last, all)",
    "options_end": "marks (or all)",
    "mean:question": "question+last (or question, all)",
}


@dataclass
class PositionRows:
    """Stored-row indices of one position for every question of a split.

    rows: (n, m) int64 stored-row index per question; m = 1 except for means.
    mask: (n, m) bool, which of the m entries count (means over spans of different lengths).
    """

    name: str
    rows: np.ndarray
    mask: np.ndarray

    @property
    def width(self) -> int:
        return self.rows.shape[1]


def _key_search(offsets: np.ndarray, values: np.ndarray, wanted: np.ndarray, side: str = "left") -> np.ndarray:
    """Per question i, the local index in values[offsets[i]:offsets[i+1]] (sorted) where wanted[i] would go.

    One searchsorted over all questions at once: key = question * BIG + prompt index is sorted.
    """
    n = len(offsets) - 1
    lens = np.diff(offsets)
    owner = np.repeat(np.arange(n, dtype=np.int64), lens)
    big = int(max(values.max(initial=0), wanted.max(initial=0))) + 2
    keys = owner * big + values.astype(np.int64)                     # (total stored rows,)
    flat = np.searchsorted(keys, np.arange(n, dtype=np.int64) * big + wanted.astype(np.int64), side=side)
    return flat - offsets[:-1]


def find_stored(offsets: np.ndarray, values: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Stored-row index of prompt token ``wanted[i]`` in question i, -1 where it was not stored.

    Example:
        >>> offsets, values = np.array([0, 3, 5]), np.array([2, 5, 9, 0, 7])
        >>> find_stored(offsets, values, np.array([5, 3])).tolist()
        [1, -1]
    """
    local = _key_search(offsets, values, wanted)
    lens = np.diff(offsets)
    inside = local < lens
    hit = np.zeros(len(wanted), dtype=bool)
    hit[inside] = values[offsets[:-1][inside] + local[inside]] == wanted[inside]
    return np.where(hit, local, -1).astype(np.int64)


def _missing(name: str, found: np.ndarray, question_ids, collected_with: str | None) -> None:
    bad = np.flatnonzero(found < 0)
    if len(bad):
        how = f" (collected with --positions {collected_with})" if collected_with else ""
        raise UserError(f"position {name!r} was not stored for {len(bad)} of {len(found)} questions "
                        f"(e.g. {question_ids[bad[0]]}){how}; collect with --positions {_STORED_BY[name]}")


def resolve_position(name, columns: dict, collected_with: str | None = None) -> PositionRows:
    """The stored rows a position name reads, for every question.

    Args:
        name: ``answer`` | ``question_end`` | ``options_end`` | ``mean:question`` | an int (or its digits).
        columns: numpy arrays of the split: ``ap_offsets`` (n+1,), ``ap_values`` (stored rows,),
            ``readout`` (n,), ``question_span`` (n, 2), ``option_spans`` (n, 4, 2), ``question_id`` (n,).
        collected_with: the run's ``--positions``, for the error message.

    Example:
        >>> cols = {"ap_offsets": np.array([0, 3]), "ap_values": np.array([4, 5, 9]), "readout": np.array([9]),
        ...         "question_span": np.array([[4, 6]]), "option_spans": np.array([[[6, 7]] * 4]),
        ...         "question_id": np.array(["q0"])}
        >>> resolve_position("answer", cols).rows.tolist(), resolve_position("mean:question", cols).rows.tolist()
        ([[2]], [[0, 1]])
    """
    offsets, values, ids = columns["ap_offsets"], columns["ap_values"], columns["question_id"]
    n, lens = len(offsets) - 1, np.diff(offsets)
    if isinstance(name, (int, np.integer)) or (isinstance(name, str) and name.lstrip("-").isdigit()):
        k = int(name)
        local = np.where(k < 0, lens + k, np.full(n, k))
        short = np.flatnonzero((local < 0) | (local >= lens))
        if len(short):
            raise UserError(f"position {k} is out of range: question {ids[short[0]]} has {int(lens[short[0]])} "
                            f"stored rows; use -1 for the last, or a named position ({', '.join(NAMES)})")
        return PositionRows(str(k), local.astype(np.int64)[:, None], np.ones((n, 1), dtype=bool))
    if name == "answer":
        found = find_stored(offsets, values, columns["readout"])
    elif name == "question_end":
        found = find_stored(offsets, values, columns["question_span"][:, 1] - 1)
    elif name == "options_end":
        found = find_stored(offsets, values, columns["option_spans"][:, 3, 1] - 1)
    elif name == "mean:question":
        start, end = columns["question_span"][:, 0], columns["question_span"][:, 1]
        lo = _key_search(offsets, values, start)
        hi = _key_search(offsets, values, end)
        complete = (hi - lo == end - start) & (end > start)  # every question token stored
        _missing(name, np.where(complete, 0, -1), ids, collected_with)
        width = int((end - start).max())
        j = np.arange(width)[None, :]                         # (1, m)
        mask = j < (end - start)[:, None]                     # (n, m)
        return PositionRows(name, np.where(mask, lo[:, None] + j, lo[:, None]), mask)
    else:
        raise UserError(f"unknown position {name!r}; choose {', '.join(NAMES)} or an int index into the stored rows")
    _missing(name, found, ids, collected_with)
    return PositionRows(name, found[:, None], np.ones((n, 1), dtype=bool))
