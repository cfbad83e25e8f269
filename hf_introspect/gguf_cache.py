"""A converted copy of a GGUF checkpoint, so that only the first load pays for the conversion.

transformers reads a GGUF file three times (config, tokenizer, weights) and parses its whole
vocabulary each time; for the embedded SmolLM2 that is ~20 s per load on a 2-core machine, of which
~2 s is the dequantisation itself. The first load saves the converted model and tokenizer as a
plain transformers folder (safetensors); later loads read that in about a second.

The copy is keyed by the GGUF file's fingerprint, the dtype and the transformers version, and it
carries a sha256 of every weight: a copy whose weights do not hash to that value is ignored and
replaced. Location: ``$HF_INTROSPECT_CACHE`` (``off`` disables it), else
``$XDG_CACHE_HOME/hf_introspect``, else ``~/.cache/hf_introspect``. Size: the model in the dtype
it was loaded in (SmolLM2-135M in float32: ~540 MB).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

logger = logging.getLogger("hf_introspect")

MARKER = "hf_introspect_gguf_cache.json"


def cache_root() -> Path | None:
    """Where converted GGUF checkpoints are kept; None when caching is off.

    Example:
        >>> cache_root()                       # with HF_INTROSPECT_CACHE unset   # doctest: +SKIP
        PosixPath('/root/.cache/hf_introspect')
    """
    value = os.environ.get("HF_INTROSPECT_CACHE", "").strip()
    if value.lower() in ("off", "0", "none", "false"):
        return None
    if value:
        return Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hf_introspect"


def entry_for(gguf_fingerprint: str, dtype: torch.dtype) -> Path | None:
    """The cache folder for one GGUF file (by content fingerprint) loaded in one dtype."""
    import transformers

    root = cache_root()
    if root is None:
        return None
    name = f"gguf-{gguf_fingerprint}-{str(dtype).replace('torch.', '')}-transformers{transformers.__version__}"
    return root / name


def weights_digest(net: torch.nn.Module) -> str:
    """sha256 over every parameter and buffer of the state dict, in name order (bytes as stored)."""
    h = hashlib.sha256()
    for name, t in sorted(net.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode() + str(t.dtype).encode())
        data = t.detach().cpu().contiguous()
        h.update(data.view(torch.uint8).numpy().data if data.numel() else b"")
    return h.hexdigest()


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


def load(folder: Path, dtype: torch.dtype):
    """(tokenizer, model) from a complete cache folder whose weights hash as recorded, else None."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    marker = folder / MARKER
    if not marker.is_file():
        return None
    try:
        expected = json.loads(marker.read_text())["weights_sha256"]
        tok = AutoTokenizer.from_pretrained(folder)
        net = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    except (OSError, ValueError, KeyError) as exc:
        logger.warning("ignoring the converted copy in %s (%s); converting the GGUF file again", folder, exc)
        return None
    if weights_digest(net) != expected:
        logger.warning("the converted copy in %s does not match its checksum; converting the GGUF file again", folder)
        shutil.rmtree(folder, ignore_errors=True)
        return None
    return tok, net


def save(folder: Path, tok, net: torch.nn.Module) -> None:
    """Save a converted checkpoint atomically (a temp folder renamed into place). A failure (full
    disk, read-only home) costs only the speed-up: it is logged and the run goes on."""
    tmp = None
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))
        _save_weights(tmp, net)
        tok.save_pretrained(tmp)
        (tmp / MARKER).write_text(json.dumps({"weights_sha256": weights_digest(net)}))
        try:
            os.rename(tmp, folder)
        except OSError:  # another process got there first: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            logger.info("saved a converted copy of the GGUF checkpoint in %s (later loads take ~1 s)", folder)
    except (OSError, ValueError, RuntimeError) as exc:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        logger.warning("could not keep a converted copy of the GGUF checkpoint in %s (%s); set "
                       "HF_INTROSPECT_CACHE to a writable folder, or to off", folder, exc)
