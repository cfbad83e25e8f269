"""run_config.json: what a run is (settings, model identity, templates, label ids, question ids)
hashed into its ``run_id``, with the library versions and the residual-stream convention.
"""

from __future__ import annotations

import platform
import time

import numpy as np
import torch
from datasets import Dataset

from .. import __version__
from ..config import CollectConfig, config_hash
from ..models.load import LoadedModel


RESIDUAL_DOC = ("activations_layer_00 = embedding output; activations_layer_i = residual stream after "
                "block i; the last index is the last block's output BEFORE the final norm")


def versions() -> dict:
    # From the installed packages' metadata: importing peft only to read its version took 0.3 s.
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    return {"hf_introspect": __version__, "python": platform.python_version(), "torch": torch.__version__,
            **{name: installed(name) for name in ("transformers", "datasets", "accelerate", "peft", "pyarrow")},
            "numpy": np.__version__}


def build_run_config(cfg: CollectConfig, lm: LoadedModel, templates: dict, layers: list[int], label_ids: dict,
                     questions: Dataset, shard_plan: dict) -> dict:
    identity = {"config": cfg.identity(), "model": lm.identity, "templates": templates,
                "use_chat_template": lm.use_chat_template, "label_token_ids": label_ids,
                "question_ids_hash": config_hash({"ids": questions["question_id"]})}
    return {
        "run_id": config_hash(identity),
        "config": cfg.to_dict(),
        "model_name": lm.source.model_name,
        "checkpoint_id": lm.checkpoint_id,
        "num_layers": lm.num_layers,
        "hidden_size": lm.hidden_size,
        "layers_stored": layers,
        "residual_stream": RESIDUAL_DOC,
        "num_questions": len(questions),
        "question_sources": sorted(set(questions["question_source"])),
        "shards": shard_plan,
        "versions": versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "identity": identity,
    }
