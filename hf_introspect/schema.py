"""The column registry: every column of a run, once, with its type, passes, meaning and maker.

:data:`COLUMNS` is the one list of a pass split's columns, in the stored order. Everything else
that names columns derives from it: the ``datasets.Features`` of each split (:func:`pass_features`),
the prompt dataset's columns (:func:`question_features`, :func:`prompt_features`), the order the
shard table is built in (:func:`output_columns`), the dataset card's and the docs' column tables
(:func:`column_doc`, :func:`column_table_markdown`) and the inspect report's column lists.

To add a column: add one :class:`Column` here (in the position it should take in the stored
table) and compute it in the function its ``computed_by`` names; a test checks that the name
resolves and that docs/columns.md's table is the registry's.

Activation columns are one per stored residual-stream index: ``activations_layer_00`` is the
embedding output, ``activations_layer_NN`` (NN = n_layers) the last block's output BEFORE the final
norm. Each is ``Array2D((None, hidden), act_dtype)``: one row per stored prompt position, in the
order given by ``activation_positions``. The registry holds them as one template entry,
``activations_layer_NN``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from datasets import Array2D, Features, Sequence, Value

from .passes import ANSWER_LABELS, PASSES

ALL = PASSES
MCQ = ("mcq",)
CONF = ("self_conf", "other_conf")
LAYER_TEMPLATE = "activations_layer_NN"


@dataclass(frozen=True)
class Column:
    """One column of a pass split.

    ``type`` is a compact type (see :func:`feature_of`): ``string``, ``int32``, ``float32``,
    ``bool``; ``[n]`` a fixed-length list, ``[]`` a list of any length, ``[labels]`` one entry per
    label of the pass (4 or 8); ``string{A..D}`` the options struct; ``act[][hidden]`` the
    Array2D of activations. ``stage`` is where it is made: ``question`` (the question source),
    ``prompt`` (before inference), ``output`` (the model's results). ``computed_by`` is the
    ``module.qualname`` of the function that computes it.
    """

    name: str
    type: str
    passes: tuple[str, ...]
    stage: str
    meaning: str
    computed_by: str


_Q, _P, _O = "question", "prompt", "output"
_ADAPT = "hf_introspect.questions.records.build_record"
_PROMPT = "hf_introspect.collection.prompt_dataset.build_prompt_dataset"
_SURF = "hf_introspect.questions.surface.surface_features"
_TABLE = "hf_introspect.collection.shard_table"

COLUMNS: tuple[Column, ...] = (
    Column("question_id", "string", ALL, _Q, "stable id of the question (unique within a config)", _ADAPT),
    Column("question_text", "string", ALL, _Q, "the question", _ADAPT),
    Column("options", "string{A..D}", ALL, _Q, "the four options {A, B, C, D} as shown in the prompt", _ADAPT),
    Column("correct_answer_letter", "string", ALL, _Q, "letter of the correct option", _ADAPT),
    Column("question_source", "string", ALL, _Q,
           "where the question came from (built-in bank, file, Hub dataset)", _ADAPT),
    Column("option_source_index", "int32[4]", ALL, _Q, "for A-D, the index of the option in the source "
           "(0 = the source's correct answer for TriviaMC-style sources)", _ADAPT),
    Column("prompt_type", "string", ALL, _P, "mcq | self_confidence | other_confidence", _PROMPT),
    Column("prompt_text", "string", ALL, _P,
           "the full prompt as rendered (chat template applied when the tokenizer has one)",
           "hf_introspect.collection.prompts.fill_prompt"),
    Column("input_ids", "int32[]", ALL, _P, "prompt token ids (the forward pass input)", _PROMPT),
    Column("seq_len", "int32", ALL, _P, "number of prompt tokens", _PROMPT),
    Column("question_token_span", "int32[2]", ALL, _P, "[start, end) of the question text in input_ids "
           "(-1 if not found)", "hf_introspect.collection.prompts.char_span_to_token_span"),
    Column("option_token_spans", "int32[4][2]", ALL, _P, "[start, end) of each option A-D in input_ids",
           "hf_introspect.collection.prompts.char_span_to_token_span"),
    Column("char_length", "int32", ALL, _P, "question length in characters", _SURF),
    Column("token_length", "int32", ALL, _P, "question length in tokens", _SURF),
    Column("question_type", "string", ALL, _P, "what / where / when / who / how / why / which / other",
           "hf_introspect.questions.surface.question_type"),
    Column("has_negation", "bool", ALL, _P, "the question contains a negation", _SURF),
    Column("has_ambiguity", "bool", ALL, _P, "the question contains a hedge word (possibly, might, ...)", _SURF),
    Column("token_rarity_mean", "float32", ALL, _P, "mean token id of the question (a rough rarity proxy)", _SURF),
    Column("token_rarity_max", "int32", ALL, _P, "max token id of the question", _SURF),
    Column("model_name", "string", ALL, _O, "model name", f"{_TABLE}.settings_columns"),
    Column("checkpoint_id", "string", ALL, _O, "'base' or the LoRA adapter's folder name",
           f"{_TABLE}.settings_columns"),
    Column("temperature", "float32", ALL, _O, "generation temperature of output_text (0 = greedy)",
           f"{_TABLE}.settings_columns"),
    Column("top_p", "float32", ALL, _O, "nucleus sampling p of output_text", f"{_TABLE}.settings_columns"),
    Column("max_new_tokens", "int32", ALL, _O, "length limit of output_text", f"{_TABLE}.settings_columns"),
    Column("output_text", "string", ALL, _O, "the model's continuation of the prompt (reusing its KV cache)",
           "hf_introspect.collection.decode.continue_batches"),
    Column("parsed_answer", "string", ALL, _O,
           "the label read from output_text, or the argmax label when output_text has none",
           f"{_TABLE}.readout_columns"),
    Column("parse_source", "string", ALL, _O, "output_text | argmax: where parsed_answer came from",
           f"{_TABLE}.readout_columns"),
    Column("logits", "float32[labels]", ALL, _O, "next-token logits at the last prompt token, restricted to the "
           "label tokens (A-D or S-Z), in label order; each label's logit is the logsumexp over its token forms",
           "hf_introspect.collection.readout.restricted_logits"),
    Column("probs", "float32[labels]", ALL, _O, "softmax of logits (over the labels only)",
           "hf_introspect.collection.readout.softmax_np"),
    Column("entropy", "float32", ALL, _O, "entropy of probs, in nats", "hf_introspect.collection.readout.entropy_nats"),
    Column("is_correct", "bool", MCQ, _O, "parsed_answer == correct_answer_letter", f"{_TABLE}.readout_columns"),
    Column("logit_margin", "float32", MCQ, _O, "logit of the correct letter minus the best incorrect one",
           "hf_introspect.collection.readout.logit_margin"),
    Column("answer_token_index", "int32", MCQ, _O, "prompt index of the readout token (the last prompt token)",
           f"{_TABLE}.readout_columns"),
    Column("confidence_token_index", "int32", CONF, _O,
           "prompt index of the readout token (the last prompt token)", f"{_TABLE}.readout_columns"),
    Column("self_confidence", "float32", ("self_conf",), _O,
           "expected confidence 0-100: sum of probs x bin midpoints",
           "hf_introspect.collection.readout.expected_confidence"),
    Column("other_confidence", "float32", ("other_conf",), _O,
           "expected share 0-100: sum of probs x bin midpoints",
           "hf_introspect.collection.readout.expected_confidence"),
    Column("activation_positions", "int32[]", ALL, _O, "prompt token index of each stored activation row "
           "(0..seq_len-1 with --positions all)", "hf_introspect.config.kept_positions"),
    Column("fp16_overflow_count", "int32", ALL, _O, "activation values that overflowed float16 (stored as inf) "
           "in this row, all layers (should be 0)", "hf_introspect.collection.inference.count_overflow"),
    Column(LAYER_TEMPLATE, "act[][hidden]", ALL, _O, "residual stream at index NN, one row per stored prompt "
           "position (00 = embeddings, last = last block before the final norm)",
           "hf_introspect.collection.inference.gather_stored"),
)
BY_NAME = {c.name: c for c in COLUMNS}


def layer_column(index: int) -> str:
    """Column name of residual-stream index ``index``.

    Example:
        >>> layer_column(7)
        'activations_layer_07'
    """
    return f"activations_layer_{index:02d}"


def feature_of(type_: str, n_labels: int = 4, hidden: int = 0, act_dtype: str = "float16"):
    """The ``datasets`` feature of a compact registry type.

    Example:
        >>> feature_of("int32[4][2]")
        List(List(Value('int32'), length=2), length=4)
        >>> feature_of("act[][hidden]", hidden=8)
        Array2D(shape=(None, 8), dtype='float16')
    """
    if type_ == "act[][hidden]":
        return Array2D(shape=(None, hidden), dtype=act_dtype)
    if type_ == "string{A..D}":
        return {label: Value("string") for label in ANSWER_LABELS}
    base, *sizes = type_.replace("]", "").split("[")
    feature = Value(base)
    # C order: "int32[4][2]" is 4 lists of 2, so the LAST suffix is the innermost list.
    for size in reversed(sizes):
        feature = Sequence(feature, length=-1 if size == "" else n_labels if size == "labels" else int(size))
    return feature


def columns_for(pass_name: str | None = None, stage: str | None = None) -> list[Column]:
    """Registry entries of one pass (all passes with None) and stage, in stored order.

    Example:
        >>> [c.name for c in columns_for("self_conf", "output")][-4:]
        ['self_confidence', 'activation_positions', 'fp16_overflow_count', 'activations_layer_NN']
    """
    return [c for c in COLUMNS if (pass_name is None or pass_name in c.passes) and (stage is None or c.stage == stage)]


def _features(cols, **kw) -> dict:
    return {c.name: feature_of(c.type, **kw) for c in cols if c.name != LAYER_TEMPLATE}


def question_features() -> dict:
    """Columns of a normalised question (what a question source yields)."""
    return _features(columns_for(stage="question"))


def prompt_features() -> dict:
    """Columns known before inference (rendered and tokenized prompt, surface features)."""
    return _features(columns_for(stage="prompt"))


def output_columns(pass_name: str) -> list[str]:
    """Names of the columns the model's results fill in for a pass (activations excluded), in order.

    Example:
        >>> output_columns("mcq")[-5:]
        ['is_correct', 'logit_margin', 'answer_token_index', 'activation_positions', 'fp16_overflow_count']
    """
    return [c.name for c in columns_for(pass_name, "output") if c.name != LAYER_TEMPLATE]


def output_features(pass_name: str, n_labels: int, layers: list[int], hidden: int, act_dtype: str) -> dict:
    """Columns the model's forward pass fills in."""
    feats = _features(columns_for(pass_name, "output"), n_labels=n_labels, hidden=hidden, act_dtype=act_dtype)
    for i in layers:
        feats[layer_column(i)] = feature_of(BY_NAME[LAYER_TEMPLATE].type, hidden=hidden, act_dtype=act_dtype)
    return feats


def pass_features(pass_name: str, n_labels: int, layers: list[int], hidden: int, act_dtype: str) -> Features:
    """All columns of one pass's split, in order.

    Example:
        >>> f = pass_features("mcq", 4, [0, 1], 576, "float16")
        >>> f["activations_layer_01"]
        Array2D(shape=(None, 576), dtype='float16')
    """
    return Features({**question_features(), **prompt_features(),
                     **output_features(pass_name, n_labels, layers, hidden, act_dtype)})


def column_doc(name: str) -> str:
    """One-line meaning of a column (activation columns by their template), "" if unknown.

    Example:
        >>> column_doc("entropy")
        'entropy of probs, in nats'
    """
    if re.fullmatch(r"activations_layer_\d+", name):
        name = LAYER_TEMPLATE
    col = BY_NAME.get(name)
    return col.meaning if col is not None else ""


def _passes_text(passes: tuple[str, ...]) -> str:
    return "all" if passes == ALL else ", ".join(passes)


def column_table_markdown() -> str:
    """The docs' column table (docs/columns.md), generated from the registry.

    Example:
        >>> column_table_markdown().splitlines()[2]
        '| `question_id` | string | all | stable id of the question (unique within a config) | `hf_introspect.questions.records.build_record` |'
    """
    lines = ["| column | type | passes | meaning | computed by |", "|---|---|---|---|---|"]
    for c in COLUMNS:
        lines.append(f"| `{c.name}` | {c.type} | {_passes_text(c.passes)} | {c.meaning.replace('|', '/')} "
                     f"| `{c.computed_by}` |")
    return "\n".join(lines)


def registered(*names: str) -> tuple[str, ...]:
    """``names``, checked against the registry: a column list elsewhere (the inspect report's) that
    names a column the registry lacks fails at import instead of silently reading nothing.

    Example:
        >>> registered("entropy", "is_correct")
        ('entropy', 'is_correct')
    """
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise KeyError(f"not in the column registry (hf_introspect/schema.py): {unknown}")
    return names
