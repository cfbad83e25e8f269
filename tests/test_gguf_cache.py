"""The converted-GGUF cache: round trip, checksum, failures that must not break a load."""

import json
import logging

import pytest
import torch

from hf_introspect.models import gguf_cache
from hf_introspect.testing import tiny_llama, tiny_tokenizer


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_INTROSPECT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def fake_gguf(path, middle=b"m"):
    """A file standing in for a GGUF checkpoint: only its bytes matter to the cache key."""
    path.write_bytes(b"GGUF" + b"\0" * (5 << 20) + middle + b"\0" * (5 << 20) + b"end")
    return path


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    src = fake_gguf(tmp_path / "m.gguf")
    monkeypatch.setenv("HF_INTROSPECT_CACHE", "off")
    assert gguf_cache.cache_root() is None and gguf_cache.entry_for(src, torch.float32) is None
    monkeypatch.setenv("HF_INTROSPECT_CACHE", str(tmp_path))
    assert gguf_cache.cache_root() == tmp_path
    monkeypatch.delenv("HF_INTROSPECT_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # under the HF cache root by default
    assert gguf_cache.cache_root() == tmp_path / "hf" / "hf_introspect" / "gguf"
    monkeypatch.delenv("HF_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # HF_HOME's own default
    assert gguf_cache.cache_root() == tmp_path / "xdg" / "huggingface" / "hf_introspect" / "gguf"
    entry = gguf_cache.entry_for(src, torch.bfloat16)
    assert entry.name.startswith("gguf-") and "-bfloat16-transformers" in entry.name


def test_the_key_covers_the_whole_file(cache_dir, tmp_path):
    """Two files of one size and the same first and last megabytes (an edited middle layer) must
    not share a converted copy."""
    a = fake_gguf(tmp_path / "a.gguf", b"x")
    b = fake_gguf(tmp_path / "b.gguf", b"y")
    assert gguf_cache.entry_for(a, torch.float32) != gguf_cache.entry_for(b, torch.float32)
    first = gguf_cache.entry_for(a, torch.float32)
    assert len(json.loads((cache_dir / "index.json").read_text())) == 2  # remembered, not re-read
    fake_gguf(a, b"z")  # the file changes in place: new size/mtime -> new key
    assert gguf_cache.entry_for(a, torch.float32) != first


def test_round_trip_is_bit_exact(cache_dir):
    net, tok = tiny_llama(vocab_size=len(tiny_tokenizer())), tiny_tokenizer()
    folder = cache_dir / "gguf-f00d"
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
    folder = cache_dir / "gguf-beef"
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
    folder = gguf_cache.cache_root() / "gguf-cafe"
    with caplog.at_level(logging.WARNING, logger="hf_introspect"):
        gguf_cache.save(folder, tiny_tokenizer(), tiny_llama(vocab_size=len(tiny_tokenizer())))
    assert "could not keep a converted copy" in caplog.text


@pytest.mark.parametrize("damage", ["truncated weights", "no marker"])
def test_a_damaged_copy_is_removed_and_replaced(cache_dir, caplog, damage):
    net, tok = tiny_llama(vocab_size=len(tiny_tokenizer())), tiny_tokenizer()
    folder = cache_dir / "gguf-d00d"
    gguf_cache.save(folder, tok, net)
    if damage == "truncated weights":  # e.g. a power cut during an earlier, unsynced save
        weights = folder / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
    else:
        (folder / gguf_cache.MARKER).unlink()
    with caplog.at_level(logging.WARNING, logger="hf_introspect"):
        assert gguf_cache.load(folder, torch.float32) is None
    assert not folder.exists()
    gguf_cache.save(folder, tok, net)  # the next load's save puts a good copy back
    assert gguf_cache.load(folder, torch.float32) is not None


def test_a_leftover_folder_without_marker_is_replaced_on_save(cache_dir):
    folder = cache_dir / "gguf-0dd"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{")  # a half-copied folder from elsewhere
    gguf_cache.save(folder, tiny_tokenizer(), tiny_llama(vocab_size=len(tiny_tokenizer())))
    assert gguf_cache.load(folder, torch.float32) is not None
