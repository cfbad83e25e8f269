"""Hub layout: export to a folder (two configs), load_dataset back bit-exact, README merging, and the
push path against a fake Hub (HfApi methods intercepted; nothing leaves the machine)."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from datasets import Array2D, Dataset, Features, load_dataset, load_from_disk
from huggingface_hub import DatasetCard

from hf_introspect import cli
from hf_introspect.collection.run import collect
from hf_introspect.config import CollectConfig
from hf_introspect.errors import UserError
from hf_introspect.runs.hub import default_config_name, export_hub_layout, push_run
from hf_introspect.runs.read import layer_matrix, load_run
from hf_introspect.models.load import load_model
from hf_introspect.schema import question_features

N = 7
SPLITS = ("mcq", "self_conf", "other_conf")
BASE, LORA = "tiny", "tiny-lora-ckpt-step-1280"  # conftest's adapter folder is ckpt_step_1280


def make_questions(n: int = N) -> Dataset:
    rows = [{"question_id": f"h{i:02d}", "question_text": f"Which planet is number {i}" + "?" * (1 + i % 3),
             "options": {"A": "Mars", "B": "Venus", "C": "Earth", "D": "Pluto"}, "correct_answer_letter": "ABCD"[i % 4],
             "question_source": "test", "option_source_index": [0, 1, 2, 3]} for i in range(n)]
    return Dataset.from_list(rows, features=Features(question_features()))


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tiny_lora_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    out = {}
    for name, kw in {"base": {}, "lora": {"model_type": "finetuned", "lora_checkpoint": str(tiny_lora_dir)}}.items():
        cfg = CollectConfig(output_dir=str(root / name), model=str(tiny_model_dir), batch_size=4, save_every=1,
                            max_new_tokens=1, layers="0,2", **kw)
        lm = load_model(cfg.model, lora_checkpoint=cfg.lora_checkpoint)
        collect(cfg, lm=lm, questions=make_questions())
        out[name] = root / name
    return out


@pytest.fixture(scope="module")
def exported(runs, tmp_path_factory):
    folder = tmp_path_factory.mktemp("export") / "hub"
    reports = [export_hub_layout(runs["base"], folder), export_hub_layout(runs["lora"], folder)]
    return folder, reports


def bits(x) -> np.ndarray:
    return np.asarray(x).view(np.uint16)


def assert_same_as_run(ds, run_dir: Path, split: str):
    """Every column of the run's split equal in the loaded one, rows in the same order; activations
    bit for bit as float16."""
    ref = load_from_disk(str(run_dir / split)).with_format("numpy", dtype=None)
    got = ds.with_format("numpy", dtype=None)
    assert len(got) == len(ref)
    for col in ref.column_names:
        feat = got.features[col]
        if col.startswith("activations_layer_"):
            assert feat == Array2D((None, 64), "float16"), col
            for a, b in zip(got[col], ref[col]):
                assert a.dtype == np.float16 and np.array_equal(bits(a), bits(b)), col
        else:
            a, b = list(got[col]), list(ref[col])
            assert len(a) == len(b)
            for x, y in zip(a, b):
                if isinstance(y, dict):
                    assert x == y, col
                else:
                    assert np.array_equal(np.asarray(x), np.asarray(y)), col


def test_config_names():
    assert default_config_name({"model_name": "SmolLM2-135M-Instruct", "checkpoint_id": "base"}) == "smollm2-135m-instruct"
    assert (default_config_name({"model_name": "SmolLM2-135M-Instruct", "checkpoint_id": "ckpt_step_1280"})
            == "smollm2-135m-instruct-lora-ckpt-step-1280")
    assert default_config_name({"model_name": "meta-llama/Llama-3.1-8B", "checkpoint_id": "base"}) == "meta-llama-llama-3-1-8b"


def test_export_writes_the_hub_layout(exported):
    folder, reports = exported
    assert [r.config_name for r in reports] == [BASE, LORA]
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    expected = ["README.md"]
    for cfg in (BASE, LORA):
        expected += [f"{cfg}/{s}-00000-of-00001.parquet" for s in SPLITS] + [f"{cfg}/run_config.json"]
    assert files == sorted(expected)
    card = DatasetCard((folder / "README.md").read_text())
    configs = {c["config_name"]: c["data_files"] for c in card.data.configs}
    assert configs == {cfg: [{"split": s, "path": f"{cfg}/{s}-*"} for s in SPLITS] for cfg in (BASE, LORA)}
    infos = {i["config_name"]: i for i in card.data.dataset_info}
    assert set(infos) == {BASE, LORA}
    feats = {f["name"]: f for f in infos[BASE]["features"]}
    assert feats["activations_layer_02"]["dtype"] == {"array2_d": {"shape": [None, 64], "dtype": "float16"}}
    assert [s["name"] for s in infos[LORA]["splits"]] == list(SPLITS)
    assert all(s["num_examples"] == N for s in infos[LORA]["splits"])
    # parquet encoding choices: activations without dictionary, zstd; metadata with dictionary
    meta = pq.ParquetFile(folder / BASE / "mcq-00000-of-00001.parquet").metadata.row_group(0)
    cols = {meta.column(i).path_in_schema: meta.column(i) for i in range(meta.num_columns)}
    act = cols["activations_layer_02.list.element.list.element"]
    assert act.compression == "ZSTD" and "RLE_DICTIONARY" not in act.encodings and act.statistics is None
    assert "RLE_DICTIONARY" in cols["question_id"].encodings


@pytest.mark.parametrize("config,run", [(BASE, "base"), (LORA, "lora")])
def test_load_dataset_reads_export_bit_exact(exported, runs, config, run, tmp_path):
    folder, _ = exported
    for split in SPLITS:
        ds = load_dataset(str(folder), config, split=split, cache_dir=str(tmp_path))
        assert_same_as_run(ds, runs[run], split)
        # the other passes' columns exist and are null (one schema per config)
        other = "self_confidence" if split != "self_conf" else "is_correct"
        assert set(ds[other]) == {None}
    # base and lora really are different data
    a = load_dataset(str(folder), BASE, split="mcq", cache_dir=str(tmp_path)).with_format("numpy", dtype=None)
    b = load_dataset(str(folder), LORA, split="mcq", cache_dir=str(tmp_path)).with_format("numpy", dtype=None)
    assert not np.array_equal(a[0]["activations_layer_02"], b[0]["activations_layer_02"])


def test_load_run_and_layer_matrix_on_export(exported, runs, tmp_path):
    folder, _ = exported
    ds = load_run(folder, LORA, split="other_conf", cache_dir=str(tmp_path))
    ref = load_run(runs["lora"], split="other_conf")
    for position in ("last", "answer", 2):
        assert np.array_equal(bits(layer_matrix(ds, 2, position)), bits(layer_matrix(ref, 2, position)))
    with pytest.raises(UserError, match="holds configs"):
        load_run(folder, split="mcq", cache_dir=str(tmp_path))


def test_card_documents_both_configs_and_survives_reexport(exported, runs, tmp_path):
    folder, _ = exported
    text = (folder / "README.md").read_text()
    for needle in (f"### `{BASE}`", f"### `{LORA}`", "LoRA `ckpt_step_1280`", 'with_format("numpy", dtype=None)',
                   "**before** the final norm", "activation_positions", "`self_conf`", "layers stored", "[0, 2]",
                   "Reply with the letter"):
        assert needle in text, needle
    # A hand-written intro stays, re-exporting a config replaces (not duplicates) its entries.
    (folder / "README.md").write_text(text.replace("<!-- hf_introspect:card:start -->",
                                                   "My own words about this dataset.\n\n<!-- hf_introspect:card:start -->"))
    export_hub_layout(runs["base"], folder)
    again = (folder / "README.md").read_text()
    assert "My own words about this dataset." in again
    assert again.count(f"### `{BASE}`") == 1 and again.count(f"### `{LORA}`") == 1
    card = DatasetCard(again)
    assert sorted(c["config_name"] for c in card.data.configs) == [BASE, LORA]
    assert_same_as_run(load_dataset(str(folder), BASE, split="mcq", cache_dir=str(tmp_path)), runs["base"], "mcq")


def test_small_shards_and_row_groups_keep_row_order(runs, tmp_path):
    folder = tmp_path / "sharded"
    report = export_hub_layout(runs["lora"], folder, config_name="sharded", max_shard_size=30_000,
                               row_group_size=5_000, compression="none", workers=1)
    paths = report.splits["mcq"].paths
    assert len(paths) > 2 and paths[0] == f"sharded/mcq-00000-of-{len(paths):05d}.parquet"
    assert pq.ParquetFile(folder / paths[0]).metadata.num_row_groups >= 1
    ds = load_dataset(str(folder), "sharded", split="mcq", cache_dir=str(tmp_path / "cache"))
    assert_same_as_run(ds, runs["lora"], "mcq")
    # exporting again with bigger shards removes the stale small ones
    export_hub_layout(runs["lora"], folder, config_name="sharded")
    assert sorted(p.name for p in (folder / "sharded").glob("mcq-*")) == ["mcq-00000-of-00001.parquet"]


def test_export_refusals(runs, tmp_path):
    with pytest.raises(UserError, match="not usable"):
        export_hub_layout(runs["base"], tmp_path / "x", config_name="data")
    with pytest.raises(UserError, match="inside the run folder"):
        export_hub_layout(runs["base"], runs["base"] / "hub")
    with pytest.raises(UserError, match="no such run folder"):
        export_hub_layout(tmp_path / "nothing", tmp_path / "x")


# ------------------------------------------------------------------------------------------------
# push, against a fake Hub
# ------------------------------------------------------------------------------------------------

class FakeHub:
    """In-memory dataset repos behind HfApi's methods: records every call and applies commits."""

    def __init__(self):
        self.repos: dict[str, dict[str, bytes]] = {}
        self.calls: list[tuple[str, dict]] = []
        self.preuploaded: dict[str, bytes] = {}

    def install(self, monkeypatch):
        from huggingface_hub import HfApi

        hub = self

        def create_repo(self, repo_id, *, repo_type=None, private=None, exist_ok=False, **kw):
            hub.calls.append(("create_repo", {"repo_id": repo_id, "repo_type": repo_type, "private": private}))
            hub.repos.setdefault(repo_id, {})
            from huggingface_hub import RepoUrl

            return RepoUrl(f"https://huggingface.co/datasets/{repo_id}")

        def create_branch(self, repo_id, *, branch, repo_type=None, exist_ok=False, **kw):
            hub.calls.append(("create_branch", {"repo_id": repo_id, "branch": branch}))

        def list_repo_files(self, repo_id, *, revision=None, repo_type=None, **kw):
            hub.calls.append(("list_repo_files", {"repo_id": repo_id, "revision": revision}))
            return sorted(hub.repos[repo_id])

        def hf_hub_download(self, repo_id, filename, *, repo_type=None, revision=None, **kw):
            hub.calls.append(("hf_hub_download", {"repo_id": repo_id, "filename": filename}))
            path = hub.tmp / "downloads" / repo_id / filename
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(hub.repos[repo_id][filename])
            return str(path)

        def preupload_lfs_files(self, repo_id, additions, *, repo_type=None, revision=None, **kw):
            for op in additions:
                with op.as_file() as f:
                    hub.preuploaded[op.path_in_repo] = f.read()
                op._is_uploaded = True
                hub.calls.append(("preupload", {"path": op.path_in_repo, "repo_type": repo_type}))

        def create_commit(self, repo_id, operations, *, commit_message, repo_type=None, revision=None, **kw):
            from huggingface_hub import CommitInfo, CommitOperationAdd, CommitOperationDelete

            ops = list(operations)
            hub.calls.append(("create_commit", {"repo_id": repo_id, "ops": ops, "message": commit_message,
                                                "repo_type": repo_type, "revision": revision}))
            files = hub.repos[repo_id]
            for op in ops:
                if isinstance(op, CommitOperationAdd):
                    if getattr(op, "_is_uploaded", False):
                        files[op.path_in_repo] = hub.preuploaded.pop(op.path_in_repo)
                    else:
                        with op.as_file() as f:
                            files[op.path_in_repo] = f.read()
                elif isinstance(op, CommitOperationDelete):
                    del files[op.path_in_repo]
            return CommitInfo(commit_url=f"https://huggingface.co/datasets/{repo_id}/commit/abc", commit_message=commit_message,
                              commit_description="", oid="abc")

        for name, fn in dict(create_repo=create_repo, create_branch=create_branch, list_repo_files=list_repo_files,
                             hf_hub_download=hf_hub_download, preupload_lfs_files=preupload_lfs_files,
                             create_commit=create_commit).items():
            monkeypatch.setattr(HfApi, name, fn)
        # conftest keeps HF_HUB_OFFLINE=1 (so any call we did not intercept fails); let push past its own check
        monkeypatch.setattr("hf_introspect.runs.read.offline", lambda: False)

    def materialize(self, repo_id: str, folder: Path) -> Path:
        for path, data in self.repos[repo_id].items():
            (folder / path).parent.mkdir(parents=True, exist_ok=True)
            (folder / path).write_bytes(data)
        return folder

    def commits(self):
        return [c for name, c in self.calls if name == "create_commit"]


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    hub = FakeHub()
    hub.tmp = tmp_path
    hub.install(monkeypatch)
    return hub


def test_push_two_models_into_one_repo(fake_hub, runs, tmp_path, monkeypatch, caplog, capsys):
    monkeypatch.setenv("HF_TOKEN", "hf_SECRETsecretSECRET")
    caplog.set_level(logging.DEBUG)
    r1 = push_run(runs["base"], "me/acts", private=True)
    r2 = push_run(runs["lora"], "me/acts")
    assert (r1.config_name, r2.config_name) == (BASE, LORA)
    assert r1.commit_url.endswith("/commit/abc")
    commits = fake_hub.commits()
    assert len(commits) == 2 and all(c["repo_type"] == "dataset" for c in commits)
    first = sorted(op.path_in_repo for op in commits[0]["ops"])
    assert first == sorted(["README.md", f"{BASE}/run_config.json"] + [f"{BASE}/{s}-00000-of-00001.parquet" for s in SPLITS])
    preuploads = [c["path"] for n, c in fake_hub.calls if n == "preupload"]
    assert sorted(preuploads) == sorted(f"{cfg}/{s}-00000-of-00001.parquet" for cfg in (BASE, LORA) for s in SPLITS)
    assert ("create_repo", {"repo_id": "me/acts", "repo_type": "dataset", "private": True}) in fake_hub.calls
    # the second push read the first README and kept its config
    assert ("hf_hub_download", {"repo_id": "me/acts", "filename": "README.md"}) in fake_hub.calls
    repo = fake_hub.materialize("me/acts", tmp_path / "repo")
    card = DatasetCard((repo / "README.md").read_text())
    assert sorted(c["config_name"] for c in card.data.configs) == [BASE, LORA]
    for config, run in ((BASE, "base"), (LORA, "lora")):
        ds = load_dataset(str(repo), config, split="self_conf", cache_dir=str(tmp_path / "cache"))
        assert_same_as_run(ds, runs[run], "self_conf")
    assert json.loads((repo / LORA / "run_config.json").read_text())["run_id"] == json.loads(
        (runs["lora"] / "run_config.json").read_text())["run_id"]
    # the token is never written or logged
    out = capsys.readouterr()
    blobs = [out.out, out.err, caplog.text] + [p.read_bytes().decode("utf-8", "replace") for p in repo.rglob("*") if p.is_file()]
    assert not any("SECRET" in b for b in blobs)


def test_repush_replaces_the_config_files(fake_hub, runs, tmp_path):
    push_run(runs["base"], "me/acts", max_shard_size=30_000)
    files = set(fake_hub.repos["me/acts"])
    small = sorted(f for f in files if re.match(rf"{BASE}/mcq-", f))
    assert len(small) > 2
    push_run(runs["lora"], "me/acts")
    push_run(runs["base"], "me/acts", revision="v2", commit_message="again")
    last = fake_hub.commits()[-1]
    deleted = sorted(op.path_in_repo for op in last["ops"] if type(op).__name__ == "CommitOperationDelete")
    assert set(small) <= set(deleted) and last["revision"] == "v2" and last["message"] == "again"
    assert ("create_branch", {"repo_id": "me/acts", "branch": "v2"}) in fake_hub.calls
    files = set(fake_hub.repos["me/acts"])
    assert {f for f in files if f.startswith(f"{BASE}/mcq-")} == {f"{BASE}/mcq-00000-of-00001.parquet"}
    assert f"{LORA}/mcq-00000-of-00001.parquet" in files  # the other config is untouched
    repo = fake_hub.materialize("me/acts", tmp_path / "repo")
    assert_same_as_run(load_dataset(str(repo), BASE, split="mcq", cache_dir=str(tmp_path / "c")), runs["base"], "mcq")


def test_push_refusals(runs, fake_hub, monkeypatch):
    with pytest.raises(UserError, match="USER/NAME"):
        push_run(runs["base"], "not-a-repo-id")
    monkeypatch.setattr("hf_introspect.runs.read.offline", lambda: True)
    with pytest.raises(UserError, match="HF_HUB_OFFLINE"):
        push_run(runs["base"], "me/acts")
    assert fake_hub.calls == []  # refused before any Hub call


def test_cli_export_and_push(runs, fake_hub, tmp_path, capsys):
    assert cli.main(["export", str(runs["base"]), "--to", str(tmp_path / "f"), "--config_name", "mine",
                     "--max_shard_size", "20KB"]) == 0
    out = capsys.readouterr().out
    assert "config 'mine'" in out and "MB/s" in out and 'load_dataset("' in out
    assert len(list((tmp_path / "f" / "mine").glob("mcq-*.parquet"))) > 1
    assert cli.main(["push", str(runs["lora"]), "--repo_id", "me/cli", "--private"]) == 0
    assert f"{LORA}/mcq-00000-of-00001.parquet" in fake_hub.repos["me/cli"]
    assert cli.main(["push", str(tmp_path / "nope"), "--repo_id", "me/cli"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
