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
