"""A computed shard as its Arrow table: the behaviour columns (:func:`readout_columns`,
:func:`settings_columns`) in the column registry's order, and the activation columns wrapped
zero-copy over the shard's flat buffers (:func:`array2d_storage`).
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
from datasets import Features
from datasets.arrow_writer import OptimizedTypedSequence

from ..errors import UserError
from ..schema import layer_column, output_columns
from .readout import entropy_nats, expected_confidence, logit_margin, parse_label, softmax_np


logger = logging.getLogger("hf_introspect")


def array2d_storage(flat: np.ndarray, offsets: np.ndarray) -> pa.Array:
    """``Array2D((None, hidden))`` storage (list<list<dtype>>) over a (tokens, hidden) buffer, zero-copy.

    offsets: (rows + 1,) int32 row starts, in tokens.

    Example:
        >>> arr = array2d_storage(np.arange(6, dtype=np.float16).reshape(3, 2), np.array([0, 1, 3], np.int32))
        >>> arr.to_pylist()
        [[[0.0, 1.0]], [[2.0, 3.0], [4.0, 5.0]]]
    """
    tokens, hidden = flat.shape
    if (tokens + 1) * hidden >= 2**31:
        raise UserError(f"a shard of {tokens} stored positions x hidden {hidden} exceeds Arrow's int32 list "
                        "offsets; lower --save_every or --batch_size")
    inner = pa.ListArray.from_arrays(pa.array(np.arange(0, (tokens + 1) * hidden, hidden, dtype=np.int32)),
                                     pa.array(flat.reshape(-1)))
    return pa.ListArray.from_arrays(pa.array(offsets), inner)


def settings_columns(ctx: PassContext) -> dict:
    """The columns every row of a shard shares: the model and the generation settings."""
    cfg, lm = ctx.cfg, ctx.lm
    return {"model_name": lm.source.model_name, "checkpoint_id": lm.checkpoint_id, "temperature": cfg.temperature,
            "top_p": cfg.top_p, "max_new_tokens": cfg.max_new_tokens}


def readout_columns(pass_name: str, labels: tuple[str, ...], logits: np.ndarray, text: str, correct: str,
                    readout_index: int) -> dict:
    """One row's behaviour columns from its restricted logits (n_labels,) float32 and continuation.

    Example:
        >>> row = readout_columns("mcq", ("A", "B", "C", "D"), np.array([0., 2., 0., 0.], np.float32), "B", "B", 9)
        >>> row["parsed_answer"], row["parse_source"], row["is_correct"], round(row["logit_margin"], 1)
        ('B', 'output_text', True, 2.0)
    """
    probs = softmax_np(logits.astype(np.float64))
    parsed = parse_label(text, labels)
    source = "output_text" if parsed is not None else "argmax"
    if parsed is None:
        parsed = labels[int(np.argmax(logits))]
    row = {"output_text": text, "parsed_answer": parsed, "parse_source": source, "logits": logits,
           "probs": probs.astype(np.float32), "entropy": float(entropy_nats(probs))}
    if pass_name == "mcq":
        row.update(is_correct=parsed == correct, logit_margin=logit_margin(logits, labels.index(correct)),
                   answer_token_index=readout_index)
    else:
        row["confidence_token_index"] = readout_index
        row["self_confidence" if pass_name == "self_conf" else "other_confidence"] = expected_confidence(probs)
    return row


def shard_table(ctx: PassContext, features: Features, batch: pa.Table, data: ShardData) -> pa.Table:
    """The shard's output table (map over ``with_format("arrow")`` returns it): the input columns
    pass through untouched, the output columns (in the registry's order, ``schema.output_columns``)
    are encoded as map would, and each activation column is one flat buffer wrapped zero-copy (no
    per-row encoding, which was the slowest part of a write)."""
    n = batch.num_rows
    if batch.column("question_id").to_pylist() != data.qids:  # the computed rows must be map's rows
        raise RuntimeError(f"{ctx.pass_name}: the computed shard's rows differ from the rows map passed")
    correct_letters = batch.column("correct_answer_letter").to_pylist()
    out: dict[str, list] = {k: [] for k in output_columns(ctx.pass_name)}
    shared = settings_columns(ctx)
    for r in range(n):
        res, k = data.results[r]
        text = ctx.lm.tokenizer.decode(res.generated_ids[k], skip_special_tokens=True)
        row = readout_columns(ctx.pass_name, ctx.labels, res.label_logits[k].astype(np.float32), text,
                              correct_letters[r], len(data.seqs[r]) - 1)
        overflow = res.overflow_counts[k]  # (n_stored,) per layer
        row.update(shared, activation_positions=data.positions[r].astype(np.int32),
                   fp16_overflow_count=int(overflow.sum()))
        for name, values in out.items():
            values.append(row[name])
        if overflow.any():
            _warn_overflow(ctx, overflow)
    table = batch
    for name, values in out.items():
        table = table.append_column(name, pa.array(OptimizedTypedSequence(values, type=features[name], col=name)))
    for i, flat in zip(ctx.layers, data.flats):
        table = table.append_column(layer_column(i), array2d_storage(flat, data.offsets))
    return table


def _warn_overflow(ctx: PassContext, overflow: np.ndarray) -> None:
    new = {ctx.layers[j] for j in np.flatnonzero(overflow)} - ctx.overflow_layers
    if new:
        ctx.overflow_layers |= new
        logger.warning("%s: non-finite values after the cast to %s in layers %s (counted in "
                       "fp16_overflow_count); rerun with --act_dtype float32 to keep them",
                       ctx.pass_name, ctx.cfg.act_dtype, sorted(ctx.overflow_layers))
