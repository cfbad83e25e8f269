"""Progress bars in bytes (rate and ETA) for the long file operations: export, push, merge and
the .npy export, which would otherwise print nothing until they end."""

from __future__ import annotations

import os
import sys


def bars_enabled() -> bool:
    """On when stderr is a terminal; ``HF_INTROSPECT_PROGRESS=1`` / ``0`` forces them on / off
    (a log file would otherwise fill with carriage-return redraws).

    Example:
        >>> isinstance(bars_enabled(), bool)
        True
    """
    forced = os.environ.get("HF_INTROSPECT_PROGRESS", "").strip().lower()
    if forced in ("1", "true", "yes", "on"):
        return True
    if forced in ("0", "false", "no", "off"):
        return False
    return sys.stderr.isatty()


def byte_bar(total: int, desc: str):
    """A tqdm bar counting ``total`` bytes (``bar.update(n)``; thread-safe), shown as MB, MB/s, ETA.

    Example:
        >>> with byte_bar(2048, "export") as bar:
        ...     _ = bar.update(2048)
        >>> bar.total
        2048
    """
    from tqdm.auto import tqdm

    return tqdm(total=int(total), desc=desc, unit="B", unit_scale=True, unit_divisor=1024, mininterval=0.5,
                disable=not bars_enabled(), file=sys.stderr, dynamic_ncols=True)
