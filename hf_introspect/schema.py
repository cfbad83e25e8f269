"""The `datasets.Features` of each pass's split, built once per run.

Activation columns are one per stored residual-stream index: ``activations_layer_00`` is the
embedding output, ``activations_layer_NN`` (NN = n_layers) the last block's output BEFORE the final
norm. Each is ``Array2D((None, hidden), act_dtype)``: one row per stored prompt position, in the
order given by ``activation_positions``.
"""

from __future__ import annotations

from datasets import Array2D, Features, Sequence, Value

from .passes import ANSWER_LABELS


def layer_column(index: int) -> str:
    """Column name of residual-stream index ``index``.

    Example:
        >>> layer_column(7)
        'activations_layer_07'
    """
    return f"activations_layer_{index:02d}"


def question_features() -> dict:
    return {
        "question_id": Value("string"),
        "question_text": Value("string"),
        "options": {label: Value("string") for label in ANSWER_LABELS},
        "correct_answer_letter": Value("string"),
        "question_source": Value("string"),
        "option_source_index": Sequence(Value("int32"), length=4),
    }


def prompt_features() -> dict:
    """Columns known before inference (rendered and tokenized prompt, surface features)."""
    return {
        "prompt_type": Value("string"),
        "prompt_text": Value("string"),
        "input_ids": Sequence(Value("int32")),
        "seq_len": Value("int32"),
        "question_token_span": Sequence(Value("int32"), length=2),  # [start, end) in input_ids
        "option_token_spans": Sequence(Sequence(Value("int32"), length=2), length=4),  # A..D
        "char_length": Value("int32"),
        "token_length": Value("int32"),
        "question_type": Value("string"),
        "has_negation": Value("bool"),
        "has_ambiguity": Value("bool"),
        "token_rarity_mean": Value("float32"),
        "token_rarity_max": Value("int32"),
    }


def output_features(pass_name: str, n_labels: int, layers: list[int], hidden: int, act_dtype: str) -> dict:
    """Columns the model's forward pass fills in."""
    feats = {
        "model_name": Value("string"),
        "checkpoint_id": Value("string"),
        "temperature": Value("float32"),
        "top_p": Value("float32"),
        "max_new_tokens": Value("int32"),
        "output_text": Value("string"),
        "parsed_answer": Value("string"),
        "parse_source": Value("string"),  # "output_text" | "argmax"
        "logits": Sequence(Value("float32"), length=n_labels),
        "probs": Sequence(Value("float32"), length=n_labels),
        "entropy": Value("float32"),  # nats, of probs
    }
    if pass_name == "mcq":
        feats["is_correct"] = Value("bool")
        feats["logit_margin"] = Value("float32")
        feats["answer_token_index"] = Value("int32")
    else:
        feats["confidence_token_index"] = Value("int32")
        feats["self_confidence" if pass_name == "self_conf" else "other_confidence"] = Value("float32")
    feats["activation_positions"] = Sequence(Value("int32"))  # prompt index of each stored row
    feats["fp16_overflow_count"] = Value("int32")
    for i in layers:
        feats[layer_column(i)] = Array2D(shape=(None, hidden), dtype=act_dtype)
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
