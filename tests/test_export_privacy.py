"""Issue 17 item 10: nothing exported or pushed names a path of this machine (home, user, folder
layout); the local run keeps its full paths (resume and the causal commands need them)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hf_introspect import cli


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir, tiny_lora_dir, tmp_path_factory):
    """A run whose model, adapter, question file, templates and output folder are all local paths."""
    root = tmp_path_factory.mktemp("privacy")
    qfile = root / "my_questions.jsonl"
    qfile.write_text("".join(json.dumps({"question_id": f"p{i}", "question_text": f"Which number is {i}?",
                                         "options": {"A": str(i), "B": "x", "C": "y", "D": "z"},
                                         "correct_answer_letter": "A"}) + "\n" for i in range(4)))
    out = root / "runs" / "lora_run"
    assert cli.main(["collect", "--model", str(tiny_model_dir), "--model_type", "finetuned",
                     "--lora_checkpoint", str(tiny_lora_dir), "--questions", str(qfile), "--output_dir", str(out),
                     "--batch_size", "2", "--max_new_tokens", "1", "--layers", "0,2", "--positions", "last"]) == 0
    return out


def machine_paths(*paths: Path) -> list[bytes]:
    """Byte strings that would give this machine away: the test folders (as given and resolved)
    and $HOME (when it is more than '/')."""
    found = set()
    for p in paths:
        found |= {str(p), str(Path(p).resolve())}
    home = os.path.expanduser("~")
    if len(home.strip("/")) > 1:
        found.add(home)
    return sorted(s.encode() for s in found)


def files_with(folder: Path, needles: list[bytes]) -> dict[str, list[str]]:
    hits = {}
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            data = f.read_bytes()
            bad = [n.decode() for n in needles if n in data]
            if bad:
                hits[str(f.relative_to(folder))] = bad
    return hits


def test_the_local_run_keeps_full_paths(lora_run, tiny_model_dir):
    rc = json.loads((lora_run / "run_config.json").read_text())
    assert rc["identity"]["model"]["model"] == str(Path(tiny_model_dir).resolve())
    assert rc["config"]["output_dir"] == str(lora_run)


def test_hub_export_names_no_local_path(lora_run, tiny_model_dir, tiny_lora_dir, tmp_path):
    folder = tmp_path / "hub"
    assert cli.main(["export", str(lora_run), "--to", str(folder)]) == 0
    needles = machine_paths(lora_run.parent.parent, tiny_model_dir.parent, tiny_lora_dir.parent)
    assert files_with(folder, needles) == {}
    (config_dir,) = [p for p in folder.iterdir() if p.is_dir()]
    rc = json.loads((config_dir / "run_config.json").read_text())
    # folder/file names and content fingerprints instead of paths
    assert rc["config"]["output_dir"] == "lora_run" and rc["config"]["questions"] == "my_questions.jsonl"
    assert rc["config"]["lora_checkpoint"] == rc["identity"]["model"]["lora_checkpoint"] == tiny_lora_dir.name
    assert rc["identity"]["model"]["model"] == tiny_model_dir.name
    assert len(rc["identity"]["model"]["model_fingerprint"]) == 16 and len(rc["identity"]["model"]["adapter_fingerprint"]) == 16
    card = (folder / "README.md").read_text()
    assert f"`{tiny_model_dir.name}`" in card


def test_npy_export_names_no_local_path(lora_run, tiny_model_dir, tiny_lora_dir, tmp_path):
    folder = tmp_path / "npy"
    assert cli.main(["export", str(lora_run), "--to", str(folder), "--format", "npy"]) == 0
    needles = machine_paths(lora_run.parent.parent, tiny_model_dir.parent, tiny_lora_dir.parent)
    assert files_with(folder, needles) == {}
    assert json.loads((folder / "run_config.json").read_text())["identity"]["model"]["model"] == tiny_model_dir.name


def test_pushed_files_name_no_local_path(lora_run, tiny_model_dir, tiny_lora_dir, tmp_path, monkeypatch):
    """The push commits the same public run_config and card (fake Hub: the operations are kept)."""
    from huggingface_hub import CommitOperationAdd

    from hf_introspect.runs.hub import push_run

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("hf_introspect.runs.read.offline", lambda: False)
    committed = {}

    class FakeApi:
        def create_repo(self, repo_id, **kw):
            return type("R", (), {"repo_id": repo_id})()

        def list_repo_files(self, *a, **kw):
            return []

        def preupload_lfs_files(self, repo_id, additions, **kw):
            for op in additions:
                committed[op.path_in_repo] = Path(op.path_or_fileobj).read_bytes()

        def create_commit(self, repo_id, operations, **kw):
            for op in operations:
                if isinstance(op, CommitOperationAdd) and isinstance(op.path_or_fileobj, bytes):
                    committed[op.path_in_repo] = op.path_or_fileobj
            return type("C", (), {"commit_url": "https://hub/commit/1"})()

    push_run(lora_run, "me/acts", api=FakeApi())
    assert any(p.endswith("run_config.json") for p in committed) and "README.md" in committed
    needles = machine_paths(lora_run.parent.parent, tiny_model_dir.parent, tiny_lora_dir.parent)
    assert {p: [n.decode() for n in needles if n in data] for p, data in committed.items()
            if any(n in data for n in needles)} == {}
