"""The model a run was collected with, loaded again and checked against the run's record.

``run_config.json`` records the model's identity (path or Hub id, kind, GGUF file, content
fingerprint, dtype) and the adapter's; :func:`load_run_model` loads the same model through the
collector's :func:`hf_introspect.models.load.load_model` and refuses, in one line, when what it
finds is not what the run used (a different file at the recorded path, a changed adapter).
"""

from __future__ import annotations

from pathlib import Path

from ...errors import UserError


def _model_arg(identity: dict, model: str | None) -> str | None:
    """What to pass as ``--model``: the user's override, else the recorded one (None = embedded)."""
    if model is not None:
        return model
    kind, path = identity.get("model_kind"), identity.get("model")
    if kind == "embedded":
        return None
    if kind == "hub":
        return path
    if kind == "gguf":
        path = str(Path(path) / identity["gguf_file"])
    if not path or not Path(path).exists():
        raise UserError(f"the run's model {path} cannot be found; pass --model PATH pointing to the same model")
    return path


def load_run_model(run_config: dict | None, *, model: str | None = None, lora_checkpoint: str | None = None,
                   dtype: str | None = None, device: str | None = None, device_map: str | None = None):
    """Load the run's model (and adapter) and check its fingerprint against ``run_config.json``.

    ``model`` / ``lora_checkpoint`` point to the same model elsewhere (it was moved or the run
    came from another machine); the fingerprint must still agree. ``dtype`` defaults to the run's.

    Example:
        >>> lm = load_run_model(json.load(open("run/run_config.json")))   # doctest: +SKIP
        >>> lm.num_layers                                                   # doctest: +SKIP
        30
    """
    from ...models.load import load_model

    if not run_config or "identity" not in run_config or "model" not in run_config["identity"]:
        raise UserError("the run has no run_config.json with the model's identity (an exported or Hub copy?); "
                        "causal commands need the run folder written by `hf-introspect collect`")
    recorded = run_config["identity"]["model"]
    adapter = lora_checkpoint or recorded.get("lora_checkpoint")
    if adapter and not Path(adapter).exists():
        raise UserError(f"the run's adapter {adapter} cannot be found; pass --lora_checkpoint DIR pointing to it")
    lm = load_model(_model_arg(recorded, model), lora_checkpoint=adapter, dtype=dtype or recorded.get("torch_dtype", "auto"),
                    device=device, device_map=device_map,
                    # a run collected with --allow_missing_weights re-loads the same checkpoint the same way
                    allow_missing_weights=bool(recorded.get("weights_not_loaded")))
    for key, what, flag in (("model_fingerprint", "model", "--model"), ("adapter_fingerprint", "adapter", "--lora_checkpoint")):
        want, got = recorded.get(key), lm.identity.get(key)
        if want and want != "unknown" and got != want:
            raise UserError(f"the {what} found ({lm.identity.get('lora_checkpoint' if what == 'adapter' else 'model')}) "
                            f"has fingerprint {got}, the run was collected with {want}; point {flag} at the run's {what}")
    if (lm.num_layers, lm.hidden_size) != (run_config.get("num_layers"), run_config.get("hidden_size")):
        raise UserError(f"the model has {lm.num_layers} layers x {lm.hidden_size}, the run {run_config.get('num_layers')} "
                        f"x {run_config.get('hidden_size')}; point --model at the run's model")
    return lm
