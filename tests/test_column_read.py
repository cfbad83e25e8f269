"""Issue 17 item 11: one layer from a Hub-layout split reads only that layer's Parquet chunks
(a byte count through a counting filesystem, not a time), with values equal to the local run's."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from hf_introspect import layer_matrix, load_run
from hf_introspect.errors import UserError
from hf_introspect.runs import column_read
from hf_introspect.runs.column_read import counting_local_filesystem, read_columns
from hf_introspect.runs.hub import export_hub_layout
from hf_introspect.testing import write_planted_run

CONFIG = "planted"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from datasets.utils.logging import disable_progress_bar, enable_progress_bar

    root = tmp_path_factory.mktemp("colread")
    disable_progress_bar()
    try:
        run = write_planted_run(root / "run", n=200, hidden=128, num_layers=4)
    finally:
        enable_progress_bar()
    # 256 KB row groups: several per file, as a large run has with the default 32 MB
    export_hub_layout(run, root / "hub", row_group_size=256 * 1024)
    return run, root / "hub"


def chunk_bytes(files, columns):
    wanted = 0
    for path in files:
        md = pq.ParquetFile(path).metadata
        for rg in range(md.num_row_groups):
            for c in range(md.row_group(rg).num_columns):
                col = md.row_group(rg).column(c)
                wanted += col.total_compressed_size if col.path_in_schema.split(".", 1)[0] in columns else 0
    return wanted


def test_one_layer_reads_at_most_1_3x_its_chunks(exported):
    run, hub = exported
    files = sorted((hub / CONFIG).glob("mcq-*.parquet"))
    assert pq.ParquetFile(files[0]).metadata.num_row_groups >= 3
    fs = counting_local_filesystem()
    ds = read_columns(str(hub), CONFIG, "mcq", ["activations_layer_02"], fs=fs)
    requested = chunk_bytes(files, {"activations_layer_02"})
    total = sum(f.stat().st_size for f in files)
    assert 0.15 < requested / total < 0.25  # one of 5 layers
    assert requested <= fs.bytes_read <= 1.3 * requested, (fs.bytes_read, requested, total)
    assert set(ds.column_names) == {"activations_layer_02", *column_read.ALWAYS}


@pytest.mark.parametrize("position", ["answer", "last", 3, -2])
def test_values_equal_the_local_run(exported, position):
    run, hub = exported
    local = load_run(run, split="mcq")
    remote = load_run(hub, CONFIG, "mcq", columns=[2])  # a layer index is accepted
    np.testing.assert_array_equal(layer_matrix(remote, 2, position), layer_matrix(local, 2, position))
    assert list(remote["question_id"]) == list(local["question_id"])
    assert remote.features["activations_layer_02"] == local.features["activations_layer_02"]


def test_local_run_folder_selects_columns(exported):
    run, _ = exported
    ds = load_run(run, split="self_conf", columns=["activations_layer_01", "entropy"])
    assert set(ds.column_names) == {"activations_layer_01", "entropy", "question_id", "activation_positions",
                                    "confidence_token_index"}


def test_unknown_column_is_one_line(exported):
    run, hub = exported
    with pytest.raises(UserError, match=r"'activations_layer_09' is not in .*stored layers: \[0, 1, 2, 3, 4\]"):
        read_columns(str(hub), CONFIG, "mcq", [9])
    with pytest.raises(UserError, match="'nope' is not in"):
        load_run(run, split="mcq", columns=["nope"])
    with pytest.raises(UserError, match="no split 'other_conf'"):
        read_columns(str(hub), CONFIG, "other_conf", [1])


def test_hub_repo_reads_through_the_filesystem(exported, monkeypatch):
    """load_run("USER/NAME", columns=...) goes through the repo's filesystem (HfFileSystem on the
    network; here the exported folder stands in for it) and reads only the requested chunks."""
    run, hub = exported
    fs = counting_local_filesystem()
    seen = {}

    def fake_filesystem(source, revision):
        seen["args"] = (source, revision)
        return fs, str(hub)

    monkeypatch.setattr(column_read, "_filesystem", fake_filesystem)
    monkeypatch.setattr("hf_introspect.runs.read.offline", lambda: False)
    ds = load_run("someone/acts", None, "mcq", columns=["activations_layer_04"], revision="v1")
    assert seen["args"] == ("someone/acts", "v1")
    files = sorted((hub / CONFIG).glob("mcq-*.parquet"))
    assert fs.bytes_read <= 1.3 * chunk_bytes(files, {"activations_layer_04"})
    np.testing.assert_array_equal(layer_matrix(ds, 4, "answer"), layer_matrix(load_run(run, split="mcq"), 4, "answer"))
