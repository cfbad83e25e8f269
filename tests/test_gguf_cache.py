"""The converted-GGUF cache: round trip, checksum, failures that must not break a load."""

import json
import logging

import pytest
import torch

from hf_introspect import gguf_cache
from hf_introspect.testing import tiny_llama, tiny_tokenizer


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_INTROSPECT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_INTROSPECT_CACHE", "off")
    assert gguf_cache.cache_root() is None and gguf_cache.entry_for("abc", torch.float32) is None
    monkeypatch.setenv("HF_INTROSPECT_CACHE", str(tmp_path))
    assert gguf_cache.cache_root() == tmp_path
    monkeypatch.delenv("HF_INTROSPECT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert gguf_cache.cache_root() == tmp_path / "xdg" / "hf_introspect"
    entry = gguf_cache.entry_for("abc", torch.bfloat16)
    assert entry.name.startswith("gguf-abc-bfloat16-transformers")


def test_round_trip_is_bit_exact(cache_dir):
    net, tok = tiny_llama(vocab_size=len(tiny_tokenizer())), tiny_tokenizer()
    folder = gguf_cache.entry_for("f00d", torch.float32)
    assert gguf_cache.load(folder, torch.float32) is None  # nothing there yet
    gguf_cache.save(folder, tok, net)
    assert (folder / gguf_cache.MARKER).is_file() and not list(cache_dir.glob(".tmp-*"))
    tok2, net2 = gguf_cache.load(folder, torch.float32)
    assert gguf_cache.weights_digest(net2) == gguf_cache.weights_digest(net)
    for (name, a), (_, b) in zip(sorted(net.state_dict().items()), sorted(net2.state_dict().items())):
        assert torch.equal(a, b), name
    ids = torch.tensor([[1, 5, 9, 13]])
    with torch.no_grad():
        assert torch.equal(net(ids).logits, net2(ids).logits)
    assert tok2("What is 2+2?")["input_ids"] == tok("What is 2+2?")["input_ids"]


def test_a_copy_that_fails_its_checksum_is_dropped(cache_dir, caplog):
    net, tok = tiny_llama(vocab_size=len(tiny_tokenizer())), tiny_tokenizer()
    folder = gguf_cache.entry_for("beef", torch.float32)
    gguf_cache.save(folder, tok, net)
    marker = folder / gguf_cache.MARKER
    marker.write_text(json.dumps({"weights_sha256": "0" * 64}))  # as if the weights had changed on disk
    with caplog.at_level(logging.WARNING, logger="hf_introspect"):
        assert gguf_cache.load(folder, torch.float32) is None
    assert "does not match its checksum" in caplog.text and not folder.exists()


def test_an_unwritable_cache_only_warns(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("HF_INTROSPECT_CACHE", str(blocker / "sub"))
    folder = gguf_cache.entry_for("cafe", torch.float32)
    with caplog.at_level(logging.WARNING, logger="hf_introspect"):
        gguf_cache.save(folder, tiny_tokenizer(), tiny_llama(vocab_size=len(tiny_tokenizer())))
    assert "could not keep a converted copy" in caplog.text
