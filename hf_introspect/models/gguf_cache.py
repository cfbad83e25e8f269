"""A converted copy of a GGUF checkpoint, so that only the first load pays for the conversion.

transformers reads a GGUF file three times (config, tokenizer, weights) and parses its whole
vocabulary each time; for the embedded SmolLM2 that is ~20 s per load on a 2-core machine, of which
~2 s is the dequantisation itself. The first load saves the converted model and tokenizer as a
plain transformers folder (safetensors); later loads read that in about a second.

The copy is keyed by the sha256 of the whole GGUF file (computed once per file version and
remembered by path, size, mtime and inode), the dtype and the versions of transformers, gguf and
torch that converted it; it carries a sha256 of every converted weight, and a copy that does not
load or does not hash to that value is removed and converted again. Location:
``$HF_INTROSPECT_CACHE`` (``off`` disables it), else ``$HF_HOME/hf_introspect/gguf`` (HF_HOME
defaulting as in huggingface_hub: ``~/.cache/huggingface``). Size: the model in the dtype it was
loaded in (SmolLM2-135M in float32: ~540 MB).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

logger = logging.getLogger("hf_introspect")

MARKER = "hf_introspect_gguf_cache.json"


def cache_root() -> Path | None:
    """Where converted GGUF checkpoints are kept; None when caching is off.

    ``$HF_INTROSPECT_CACHE`` (``off`` disables it), else ``hf_introspect/gguf`` under the Hugging
    Face cache root (``$HF_HOME``, else ``$XDG_CACHE_HOME/huggingface``, else
    ``~/.cache/huggingface``): one place to look at and clean, beside the models it came from.

    Example:
        >>> os.environ["HF_HOME"] = "/data/hf"; os.environ.pop("HF_INTROSPECT_CACHE", None)  # doctest: +SKIP
        >>> cache_root()                                                                       # doctest: +SKIP
        PosixPath('/data/hf/hf_introspect/gguf')
    """
    value = os.environ.get("HF_INTROSPECT_CACHE", "").strip()
    if value.lower() in ("off", "0", "none", "false"):
        return None
    if value:
        return Path(value).expanduser()
    # read at call time, not from huggingface_hub.constants (fixed at its import)
    hf_home = os.environ.get("HF_HOME") or str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
                                               / "huggingface")
    return Path(hf_home).expanduser() / "hf_introspect" / "gguf"


def _versions() -> str:
    import transformers

    try:
        import gguf
        gguf_version = getattr(gguf, "__version__", None) or _dist_version("gguf")
    except ImportError:
        gguf_version = "none"
    return f"transformers{transformers.__version__}-gguf{gguf_version}-torch{torch.__version__.split('+')[0]}"


def _dist_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


def file_sha256(path: Path, root: Path | None = None) -> str:
    """sha256 of a whole file, remembered in ``root/index.json`` by (path, size, mtime, inode) so a
    file is read once per version (a few seconds per GB), not at every load."""
    path = Path(path).resolve()
    st = path.stat()
    key = f"{path}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}"
    index_file = root / "index.json" if root is not None else None
    index = {}
    if index_file is not None and index_file.is_file():
        try:
            index = json.loads(index_file.read_text())
        except (OSError, ValueError):
            index = {}
    if key in index:
        return index[key]
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    digest = h.hexdigest()
    if index_file is not None:
        try:
            index_file.parent.mkdir(parents=True, exist_ok=True)
            index[key] = digest
            tmp = index_file.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(index))
            os.replace(tmp, index_file)
        except OSError:
            pass  # remembering is an optimisation
    return digest


def entry_for(gguf_path: Path, dtype: torch.dtype) -> Path | None:
    """The cache folder for one GGUF file (by the sha256 of its content) loaded in one dtype."""
    root = cache_root()
    if root is None:
        return None
    digest = file_sha256(Path(gguf_path), root)[:24]
    return root / f"gguf-{digest}-{str(dtype).replace('torch.', '')}-{_versions()}"


def weights_digest(net: torch.nn.Module) -> str:
    """sha256 over every parameter and buffer of the state dict, in name order (bytes as stored)."""
    h = hashlib.sha256()
    for name, t in sorted(net.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode() + str(t.dtype).encode())
        data = t.detach().cpu().contiguous()
        h.update(data.view(torch.uint8).numpy().data if data.numel() else b"")
    return h.hexdigest()


def load(folder: Path, dtype: torch.dtype):
    """(tokenizer, model) from a complete cache folder whose weights hash as recorded, else None;
    a folder that is incomplete, unreadable or wrong is removed (the caller converts again)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not folder.exists():
        return None
    try:
        expected = json.loads((folder / MARKER).read_text())["weights_sha256"]
        tok = AutoTokenizer.from_pretrained(folder)
        net = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
        ok = weights_digest(net) == expected
    except Exception as exc:  # noqa: BLE001 - a damaged copy may fail in many ways (safetensors, json, ...)
        logger.warning("removing the unreadable converted copy in %s (%s: %s); converting the GGUF file again",
                       folder, type(exc).__name__, str(exc)[:120])
        shutil.rmtree(folder, ignore_errors=True)
        return None
    if not ok:
        logger.warning("the converted copy in %s does not match its checksum; converting the GGUF file again", folder)
        shutil.rmtree(folder, ignore_errors=True)
        return None
    return tok, net


def _save_weights(folder: Path, net: torch.nn.Module) -> None:
    """config.json, generation_config.json and model.safetensors of an already dequantised model.
    (``save_pretrained`` refuses a model loaded from GGUF; its weights are plain tensors by now.)"""
    from safetensors.torch import save_model

    config = net.config.to_dict()
    config.pop("quantization_config", None)
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=str))
    if getattr(net, "generation_config", None) is not None:
        net.generation_config.save_pretrained(folder)
    save_model(net, str(folder / "model.safetensors"), metadata={"format": "pt"})  # handles tied weights


def _fsync_tree(folder: Path) -> None:
    for p in folder.iterdir():
        if p.is_file():
            with p.open("rb") as f:
                os.fsync(f.fileno())


def _clean_stale_temps(root: Path, max_age_s: float = 3600) -> None:
    """Temp folders of saves that crashed (an hour old: no save takes that long)."""
    for tmp in root.glob(".tmp-*"):
        try:
            if time.time() - tmp.stat().st_mtime > max_age_s:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass


def save(folder: Path, tok, net: torch.nn.Module, source: Path | None = None) -> None:
    """Save a converted checkpoint atomically: written to a temp folder, fsynced, renamed into place.
    A failure (full disk, read-only home) costs only the speed-up: it is logged and the run goes on."""
    tmp = None
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        _clean_stale_temps(folder.parent)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))
        _save_weights(tmp, net)
        tok.save_pretrained(tmp)
        marker = {"weights_sha256": weights_digest(net)}
        if source is not None:
            st = Path(source).stat()
            marker.update(source=str(Path(source).resolve()), source_size=st.st_size, source_mtime_ns=st.st_mtime_ns)
        (tmp / MARKER).write_text(json.dumps(marker, indent=1))
        _fsync_tree(tmp)
        for attempt in range(2):
            try:
                os.rename(tmp, folder)
                break
            except OSError:
                if (folder / MARKER).is_file():  # another process finished the same copy first: keep it
                    shutil.rmtree(tmp, ignore_errors=True)
                    return
                if attempt == 0:  # a leftover without its marker: replace it
                    shutil.rmtree(folder, ignore_errors=True)
                else:
                    raise
        logger.info("saved a converted copy of the GGUF checkpoint in %s (later loads take ~1 s)", folder)
    except (OSError, ValueError, RuntimeError) as exc:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        logger.warning("could not keep a converted copy of the GGUF checkpoint in %s (%s); set "
                       "HF_INTROSPECT_CACHE to a writable folder, or to off", folder, exc)
