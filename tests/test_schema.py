"""The column registry (hf_introspect/schema.py) is the one list of columns: the docs' table, the
dataset card's column docs, the Features and the shard table's order all come from it."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
from datasets import Array2D, Sequence, Value

from hf_introspect import schema
from hf_introspect.passes import PASSES

DOCS = Path(__file__).resolve().parents[1] / "docs" / "columns.md"


def test_docs_column_table_is_the_registry():
    text = DOCS.read_text(encoding="utf-8")
    block = re.search(r"<!-- columns:start[^\n]*-->\n(.*?)<!-- columns:end -->", text, re.S)
    assert block, "docs/columns.md lost its generated-table markers"
    # Regenerate with: python -c "from hf_introspect.schema import column_table_markdown as t; print(t())"
    assert block.group(1).strip() == schema.column_table_markdown()


@pytest.mark.parametrize("column", schema.COLUMNS, ids=lambda c: c.name)
def test_each_column_names_a_function_that_exists(column):
    module, _, qualname = column.computed_by.rpartition(".")
    obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    assert callable(obj)
    assert column.stage in ("question", "prompt", "output") and set(column.passes) <= set(PASSES)
    assert column.meaning and "\n" not in column.meaning


def test_features_follow_the_registry_per_pass():
    mcq = schema.pass_features("mcq", 4, [0, 7], 16, "float16")
    conf = schema.pass_features("self_conf", 8, [3], 16, "float32")
    assert list(mcq)[:3] == ["question_id", "question_text", "options"]
    assert "is_correct" in mcq and "self_confidence" not in mcq and "other_confidence" not in conf
    assert mcq["logits"] == Sequence(Value("float32"), length=4) and conf["probs"].length == 8
    assert mcq["option_token_spans"] == Sequence(Sequence(Value("int32"), length=2), length=4)
    assert conf[schema.layer_column(3)] == Array2D(shape=(None, 16), dtype="float32")
    # the output columns come right before the activations, in the order the shard table builds them
    names = list(conf)
    outputs = schema.output_columns("self_conf")
    assert names[names.index("model_name"):names.index(schema.layer_column(3))] == outputs
    assert outputs[-3:] == ["self_confidence", "activation_positions", "fp16_overflow_count"]


def test_card_and_inspect_lists_use_registry_names():
    from hf_introspect.runs import hub

    named = {c.name for c in schema.COLUMNS} - {schema.LAYER_TEMPLATE}
    assert set(hub.COLUMN_DOCS) == named
    assert hub.COLUMN_DOCS["is_correct"].endswith("(mcq)")
    assert schema.column_doc("activations_layer_12") == schema.column_doc(schema.LAYER_TEMPLATE) != ""
    with pytest.raises(KeyError, match="not in the column registry"):
        schema.registered("question_id", "no_such_column")
