"""Writing a finished matplotlib figure: the one tail every plot function shares."""

from __future__ import annotations

from pathlib import Path


def save_png(fig, path, *, dpi: int) -> Path:
    """Lay ``fig`` out, write it to ``path`` (parent folders made), close it and return the path.

    Example:
        >>> import matplotlib; matplotlib.use("Agg"); import matplotlib.pyplot as plt
        >>> import tempfile
        >>> out = save_png(plt.figure(), Path(tempfile.mkdtemp()) / "a" / "b.png", dpi=50)
        >>> out.is_file(), plt.get_fignums()
        (True, [])
    """
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
