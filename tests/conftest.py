"""Shared fixtures: an offline, throwaway HF cache, and tiny models built once per session."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# huggingface_hub reads these once, at import: set them before any test module imports it.
for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[_var] = "1"
# Converted GGUF copies (hf_introspect.models.gguf_cache) go to a throwaway folder, never the user's cache;
# set here so that CLI subprocesses inherit it too.
_GGUF_CACHE = tempfile.mkdtemp(prefix="hf_introspect-test-gguf-cache-")
os.environ["HF_INTROSPECT_CACHE"] = _GGUF_CACHE
atexit.register(shutil.rmtree, _GGUF_CACHE, True)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True)
def offline_hf(tmp_path_factory, monkeypatch):
    """Tests never touch the Hub and never write to the user's cache."""
    cache = tmp_path_factory.getbasetemp() / "hf_cache"
    monkeypatch.setenv("HF_HOME", str(cache))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache / "datasets"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    yield


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from hf_introspect.testing import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def tiny_lora_dir(tiny_model_dir, tmp_path_factory) -> Path:
    from hf_introspect.testing import save_tiny_lora

    return save_tiny_lora(tiny_model_dir, tmp_path_factory.mktemp("adapters") / "ckpt_step_1280")


@pytest.fixture(scope="session")
def triviamc_path() -> Path:
    path = SHARED_DATA / "TriviaMC.jsonl"
    if not path.is_file():
        pytest.skip(f"{path} not present (it lives in ../shared beside the repo)")
    return path


def pytest_configure(config):
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
