"""The private `datasets` / `huggingface_hub` APIs the package relies on, one test each: a new
release that changes one fails here with a message naming the use, not deep inside a collect."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest


def _changed(what: str, used_in: str, exc: BaseException | str) -> str:
    import datasets
    import huggingface_hub

    return (f"{what} changed in this release (datasets {datasets.__version__}, huggingface_hub "
            f"{huggingface_hub.__version__}): {used_in} relies on it; pin the last working version "
            f"or update that code ({exc})")


def test_optimized_typed_sequence_builds_typed_arrays():
    """collection/shard_table.py: pa.array(OptimizedTypedSequence(values, type=feature, col=name))
    gives a column of the feature's Arrow type (lists of float32, int32 scalars...)."""
    from datasets import Sequence, Value

    try:
        from datasets.arrow_writer import OptimizedTypedSequence

        probs = pa.array(OptimizedTypedSequence([[0.25, 0.75], [1.0, 0.0]], type=Sequence(Value("float32")), col="probs"))
        counts = pa.array(OptimizedTypedSequence([3, 4], type=Value("int32"), col="n"))
    except (ImportError, TypeError, AttributeError) as exc:
        pytest.fail(_changed("datasets.arrow_writer.OptimizedTypedSequence", "collection/shard_table.py", exc))
    assert pa.types.is_list(probs.type) and probs.type.value_type == pa.float32(), \
        _changed("OptimizedTypedSequence's output type", "collection/shard_table.py", probs.type)
    assert probs.to_pylist() == [[0.25, 0.75], [1.0, 0.0]]
    assert counts.type == pa.int32() and counts.to_pylist() == [3, 4]


def test_dataset_indices_map_of_views():
    """runs/read.py layer_matrix and analysis/data.py: a select/shuffle view keeps ``_indices``, a
    table whose column 0 holds the view's rows of ``ds.data`` in order; a whole split has None."""
    from datasets import Dataset

    ds = Dataset.from_dict({"x": list(range(10))})
    try:
        assert ds._indices is None
        picked = ds.select([7, 2, 5])._indices.column(0).to_pylist()
        nested = ds.select([7, 2, 5, 9]).select([3, 0])._indices.column(0).to_pylist()
        shuffled = ds.shuffle(seed=1)
        order = shuffled._indices.column(0).to_numpy()
    except AttributeError as exc:
        pytest.fail(_changed("datasets.Dataset._indices", "runs/read.py layer_matrix, analysis/data.py", exc))
    assert picked == [7, 2, 5], _changed("Dataset._indices of select()", "runs/read.py layer_matrix", picked)
    assert nested == [9, 7], _changed("Dataset._indices of nested select()", "runs/read.py layer_matrix", nested)
    np.testing.assert_array_equal(order, shuffled["x"])
    assert ds.select([7, 2]).flatten_indices()._indices is None
    assert ds.select([7, 2]).data.num_rows == 10  # .data stays the whole table under a view


def test_commit_operation_add_is_uploaded_flag():
    """runs/hub.py push: after preupload_lfs_files, ``op._is_uploaded`` says the shard's bytes are
    on the Hub, so the local temp shard is deleted before the next is written."""
    from huggingface_hub import CommitOperationAdd

    op = CommitOperationAdd(path_in_repo="c/mcq-00000.parquet", path_or_fileobj=b"PAR1")
    assert hasattr(op, "_is_uploaded"), _changed("CommitOperationAdd._is_uploaded", "runs/hub.py push", "attribute gone")
    assert op._is_uploaded is False, _changed("CommitOperationAdd._is_uploaded's default", "runs/hub.py push", op._is_uploaded)


def test_card_metadata_helpers_merge_into_card_data():
    """runs/hub.py merge_card: DatasetInfosDict / MetadataConfigs .to_dataset_card_data write the
    dataset_info and configs blocks and keep the other configs already declared."""
    from datasets import DatasetInfo, Features, Value
    from huggingface_hub import DatasetCardData

    try:
        from datasets.info import DatasetInfosDict
        from datasets.utils.metadata import MetadataConfigs

        data = DatasetCardData()
        MetadataConfigs({"old": {"data_files": [{"split": "mcq", "path": "old/mcq-*"}]}}).to_dataset_card_data(data)
        MetadataConfigs({"new": {"data_files": [{"split": "mcq", "path": "new/mcq-*"}]}}).to_dataset_card_data(data)
        DatasetInfosDict({"new": DatasetInfo(features=Features({"x": Value("int32")}))}).to_dataset_card_data(data)
    except (ImportError, AttributeError, TypeError) as exc:
        pytest.fail(_changed("datasets' card metadata helpers", "runs/hub.py merge_card", exc))
    names = sorted(c["config_name"] for c in data.to_dict()["configs"])
    assert names == ["new", "old"], _changed("MetadataConfigs.to_dataset_card_data", "runs/hub.py merge_card", names)
    info = data.to_dict()["dataset_info"]
    info = info if isinstance(info, list) else [info]
    assert [i.get("config_name") for i in info] == ["new"]
