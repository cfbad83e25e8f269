"""Reading only some columns of a Hub-layout split (an exported folder or a Hub dataset repo).

A Parquet file stores each column of each row group as one contiguous chunk, and its footer says
where every chunk lies. So one layer of a 33-layer, 50 GB split is ~1/33 of the bytes: the footer,
then one ranged read per row group for that layer's chunk. Locally the files are opened through
fsspec's local filesystem; a Hub repo through ``huggingface_hub.HfFileSystem`` with
``cache_type="none"``, so every read is one HTTP range request of exactly the bytes pyarrow asks for
(fsspec's default read-ahead cache would fetch 5 MB blocks around each chunk).

The small columns :data:`ALWAYS` (ids and the readout/position indices, a few bytes per row) are
added to any request, so that :func:`hf_introspect.layer_matrix` can find the ``"answer"`` row.
"""

from __future__ import annotations

import fnmatch
import logging

from ..errors import UserError

logger = logging.getLogger("hf_introspect")

ALWAYS = ("question_id", "activation_positions", "answer_token_index", "confidence_token_index")


def _split_patterns(card_text: str, config: str, split: str) -> list[str]:
    """The ``data_files`` path patterns the card's YAML declares for one config and split.

    Example:
        >>> card = "---\\nconfigs:\\n- config_name: tiny\\n  data_files:\\n  - split: mcq\\n    path: tiny/mcq-*\\n---\\n"
        >>> _split_patterns(card, "tiny", "mcq")
        ['tiny/mcq-*']
    """
    from huggingface_hub import DatasetCard

    configs = DatasetCard(card_text).data.to_dict().get("configs") or []
    for c in configs:
        if c.get("config_name") != config:
            continue
        files = c.get("data_files")
        entries = files if isinstance(files, list) else [{"split": "train", "path": files}]
        for e in entries:
            if isinstance(e, dict) and e.get("split") == split:
                paths = e["path"]
                return [paths] if isinstance(paths, str) else list(paths)
        raise UserError(f"config {config!r} has no split {split!r}; it holds "
                        f"{[e.get('split') for e in entries if isinstance(e, dict)]}")
    return [f"{config}/{split}-*"]  # our own layout when the card declares nothing


def _filesystem(source: str, revision: str | None):
    """(fsspec filesystem, root path inside it) for a local folder or a Hub dataset repo."""
    from pathlib import Path

    folder = Path(source).expanduser()
    if folder.is_dir():
        from fsspec.implementations.local import LocalFileSystem

        return LocalFileSystem(), str(folder.resolve())
    from huggingface_hub import HfFileSystem

    return HfFileSystem(), f"datasets/{source}" + (f"@{revision}" if revision else "")


def split_files(source: str, config: str | None, split: str, *, fs=None, revision: str | None = None) -> tuple[object, list[str]]:
    """(filesystem, parquet paths in order) of one config's split, from the card's ``configs``."""
    if fs is None:
        fs, root = _filesystem(source, revision)
    else:
        root = str(source)
    with fs.open(f"{root}/README.md", "rb") as f:
        card = f.read().decode("utf-8")
    if config is None:
        from huggingface_hub import DatasetCard

        names = [c.get("config_name") for c in DatasetCard(card).data.to_dict().get("configs") or []]
        if len(names) != 1:
            raise UserError(f"{source} holds configs {names}; pass config= one of them")
        config = names[0]
    patterns = _split_patterns(card, config, split)
    files = sorted(p for p in fs.find(root) if p.endswith(".parquet")
                   and any(fnmatch.fnmatch(p[len(root) + 1:], pat) for pat in patterns))
    if not files:
        raise UserError(f"{source}: no parquet files match {patterns} for config {config!r}, split {split!r}")
    return fs, files


def read_columns(source: str, config: str | None, split: str, columns: list[str], *, fs=None,
                 revision: str | None = None):
    """Only ``columns`` (plus :data:`ALWAYS`) of a Hub-layout split -> ``datasets.Dataset`` in memory.

    ``source``: an exported folder or a Hub repo id; ``fs``: an fsspec filesystem to read through
    (default: local, or ``HfFileSystem``; the benchmark passes a byte-counting one). A column may
    be given as a layer index (``15`` for ``activations_layer_15``).

    Example:
        >>> ds = read_columns("hub_folder", "smollm2-135m-instruct", "mcq", ["activations_layer_15"])  # doctest: +SKIP
        >>> layer_matrix(ds, 15, "answer").shape                                                      # doctest: +SKIP
        (500, 576)
    """
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset, DatasetInfo, Features

    from ..schema import layer_column

    columns = [layer_column(c) if isinstance(c, int) else c for c in columns]  # 15 -> activations_layer_15
    fs, files = split_files(source, config, split, fs=fs, revision=revision)
    tables, features = [], None
    for path in files:
        # cache_type "none": a read is exactly the range pyarrow asks for (one request on the Hub)
        with fs.open(path, "rb", cache_type="none") as f:
            pf = pq.ParquetFile(f)
            names = pf.schema_arrow.names
            unknown = [c for c in columns if c not in names]
            if unknown:
                layers = [n for n in names if n.startswith("activations_layer_")]
                raise UserError(f"column {unknown[0]!r} is not in {source} ({config}/{split}); stored layers: "
                                f"{[int(n.rsplit('_', 1)[1]) for n in layers]}")
            wanted = [n for n in names if n in columns or n in ALWAYS]
            if features is None:
                meta = (pf.schema_arrow.metadata or {}).get(b"huggingface")
                full = Features.from_dict(json.loads(meta)["info"]["features"]) if meta else \
                    Features.from_arrow_schema(pf.schema_arrow)
                features = Features({n: full[n] for n in wanted})
            tables.append(pf.read(columns=wanted))
    table = pa.concat_tables(tables).replace_schema_metadata(None)
    return Dataset(table, info=DatasetInfo(features=features))


class _CountingFile:
    """A file object that adds every byte it returns to ``box[0]``."""

    def __init__(self, f, box: list):
        self._f, self._box = f, box

    def read(self, n=-1):
        data = self._f.read(n)
        self._box[0] += len(data)
        return data

    def readinto(self, buf):
        n = self._f.readinto(buf)
        self._box[0] += n or 0
        return n

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def counting_local_filesystem():
    """A local fsspec filesystem that counts the bytes read through it (``fs.bytes_read``): what
    :func:`read_columns` would download from the Hub, measured on an exported folder.

    Example:
        >>> fs = counting_local_filesystem()
        >>> with fs.open(__file__, "rb") as f:
        ...     _ = f.read(10)
        >>> fs.bytes_read
        10
    """
    from fsspec.implementations.local import LocalFileSystem

    class CountingLocalFileSystem(LocalFileSystem):
        cachable = False  # fsspec would hand back one shared instance otherwise

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._box = [0]

        @property
        def bytes_read(self) -> int:
            return self._box[0]

        def _open(self, path, mode="rb", **kwargs):
            kwargs.pop("cache_type", None)  # a local file has no read-ahead cache to turn off
            return _CountingFile(super()._open(path, mode, **kwargs), self._box)

    return CountingLocalFileSystem()
