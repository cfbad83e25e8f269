"""Helpers of the causal tests: a tiny-model run stored in float32 (so stored activations written
back are exact), its inputs and model."""

from __future__ import annotations

import numpy as np

N_QUESTIONS = 12


def collect_run(model_dir, folder, lora=None, n: int = N_QUESTIONS):
    from hf_introspect import CollectConfig, collect

    from .conftest import make_questions

    cfg = CollectConfig(output_dir=str(folder), model=str(model_dir), batch_size=5, save_every=2, max_new_tokens=0,
                        positions="last", act_dtype="float32", passes=("mcq", "self_conf"),
                        lora_checkpoint=str(lora) if lora else None, model_type="finetuned" if lora else "base")
    collect(cfg, questions=make_questions(n))
    return folder


def open_inputs(run, pass_name="self_conf"):
    from hf_introspect.analysis.causal.pass_inputs import pass_inputs
    from hf_introspect.analysis.causal.run_model import load_run_model
    from hf_introspect.analysis.data import open_run_data

    rd = open_run_data(run)
    return rd, pass_inputs(rd, pass_name), load_run_model(rd.run_config)


def unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return (v / np.linalg.norm(v)).astype(np.float32)
