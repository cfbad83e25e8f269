"""What of a run's settings may leave the machine: ``run_config.json`` without local paths.

A local run records the full paths of its output folder, model, adapter, question file and
templates (a resume and the causal commands need them). An exported folder or a pushed repo would
show the user's home, user name and folder layout to everyone, so the copy written there keeps
only each path's last component (the folder or file name) and relies on the content fingerprints
already recorded (``model_fingerprint``, ``adapter_fingerprint``, ``question_ids_hash``) to say
which weights and questions were used.
"""

from __future__ import annotations

import copy
import re

# Keys whose value is a local path whenever it is not a Hub id or a built-in name.
PATH_KEYS = ("output_dir", "lora_checkpoint", "questions", "question_ids", "prompt_templates", "path", "source",
             "model")
_ABSOLUTE = re.compile(r"^(/|~|[A-Za-z]:[\\/]|\\\\)")   # POSIX, home, Windows drive, UNC
_RELATIVE = re.compile(r"^\.{1,2}[\\/]")                # ./x, ../x
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")   # org/name: not a local path on its own


def _name(path: str) -> str:
    """The last component of a path (either separator).

    >>> _name("/home/ana/models/llama-8b/")
    'llama-8b'
    """
    return re.split(r"[\\/]+", path.rstrip("/\\"))[-1] or path


def _public_value(key: str | None, value, model_is_local: bool):
    if isinstance(value, dict):
        local = model_is_local or value.get("model_kind") in ("local", "gguf", "embedded")
        return {k: _public_value(k, v, local) for k, v in value.items()}
    if isinstance(value, list):
        return [_public_value(key, v, model_is_local) for v in value]
    if not isinstance(value, str) or "\n" in value or not value:
        return value
    if _ABSOLUTE.match(value) or _RELATIVE.match(value):
        return _name(value)
    if key in PATH_KEYS and not value.startswith(("hub:", "file:", "builtin")):
        if key == "model" and not model_is_local and _HUB_ID.match(value):
            return value  # a Hub id is public already
        if "/" in value or "\\" in value:
            return _name(value)
    return value


def public_run_config(run_config: dict) -> dict:
    """A copy of ``run_config`` for export/push: every local path reduced to its folder or file name.

    Hub ids (``meta-llama/Llama-3.1-8B``, ``hub:cais/mmlu``), fingerprints, the run id and every
    other setting are kept as they are.

    Example:
        >>> rc = {"config": {"output_dir": "/home/ana/runs/r1", "model": "/home/ana/m/tiny", "questions": "hub:x/y"},
        ...       "identity": {"model": {"model": "/home/ana/m/tiny", "model_kind": "local", "model_fingerprint": "ab12"}}}
        >>> pub = public_run_config(rc)
        >>> pub["config"], pub["identity"]["model"]["model"]
        ({'output_dir': 'r1', 'model': 'tiny', 'questions': 'hub:x/y'}, 'tiny')
        >>> public_run_config({"config": {"model": "meta-llama/Llama-3.1-8B"}})["config"]["model"]
        'meta-llama/Llama-3.1-8B'
    """
    kind = ((run_config.get("identity") or {}).get("model") or {}).get("model_kind")
    out = _public_value(None, copy.deepcopy(run_config), kind in ("local", "gguf", "embedded"))
    out["local_paths"] = "reduced to folder/file names on export; the run's own run_config.json has them in full"
    return out
