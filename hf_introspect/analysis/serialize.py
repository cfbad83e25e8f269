"""Results as plain JSON: dataclasses, numpy scalars and arrays, Paths; NaN/inf -> null."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np


def jsonable(obj):
    """``obj`` with dataclasses as dicts (fields starting with ``_`` left out), numpy as Python, NaN as None.

    Example:
        >>> jsonable({"a": np.float32(0.5), "b": [np.int64(2), float("nan")], "c": np.arange(2)})
        {'a': 0.5, 'b': [2, None], 'c': [0, 1]}
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if not f.name.startswith("_")}
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return None if not math.isfinite(float(obj)) else float(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj
