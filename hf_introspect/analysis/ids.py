"""Pairing rows of two splits (two passes, or two runs) by question id."""

from __future__ import annotations

import numpy as np

from ..errors import UserError


def align(ids_a, ids_b) -> tuple[np.ndarray, np.ndarray]:
    """Row indices pairing equal question ids: ``ids_a[ia] == ids_b[ib]``, in ids_a's order.

    Example:
        >>> ia, ib = align(["q2", "q0", "q1"], ["q0", "q1", "q3"])
        >>> ia.tolist(), ib.tolist()
        ([1, 2], [0, 1])
    """
    a, b = np.asarray(ids_a).astype(str), np.asarray(ids_b).astype(str)
    for ids in (a, b):
        uniq, counts = np.unique(ids, return_counts=True)
        if len(uniq) < len(ids):
            raise UserError(f"question id {uniq[counts > 1][0]!r} occurs more than once; cannot pair questions by id")
    _, ia, ib = np.intersect1d(a, b, assume_unique=True, return_indices=True)
    order = np.argsort(ia, kind="stable")
    return ia[order].astype(np.int64), ib[order].astype(np.int64)


_NO_SHARED = "the two runs share no question id; compare runs collected on the same questions"


def shared_rows(data_a, data_b, pass_name: str) -> tuple[np.ndarray, np.ndarray]:
    """Rows of each run's pass holding the questions both runs have, paired by id (``data_a``'s order).

    Example:
        >>> shared_rows(data, other, "mcq")   # doctest: +SKIP
        (array([0, 2]), array([1, 0]))
    """
    data_b.split(pass_name)  # a pass the other run lacks fails here, naming it
    rows_a, rows_b = align(data_a.question_ids(pass_name), data_b.question_ids(pass_name))
    if len(rows_a) == 0:
        raise UserError(_NO_SHARED)
    return rows_a, rows_b


def shared_question_ids(data_a, data_b, pass_name: str) -> list[str]:
    """The question ids both runs' pass holds, sorted (the order the comparison sweeps use).

    Example:
        >>> shared_question_ids(data, other, "mcq")   # doctest: +SKIP
        ['q0', 'q2']
    """
    shared = set(data_a.question_ids(pass_name)) & set(data_b.question_ids(pass_name))
    if not shared:
        raise UserError(_NO_SHARED)
    return sorted(shared)
