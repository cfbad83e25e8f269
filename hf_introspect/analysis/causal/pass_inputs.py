"""What a causal experiment needs from one pass of a run: its prompts, readout and stored outputs.

The prompts are the run's own ``input_ids`` (never re-rendered), the readout token is the stored
``answer_token_index`` / ``confidence_token_index`` (the prompt's last token), and the label
token ids are the ones recorded in ``run_config.json``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...errors import UserError

READOUT_COLUMNS = ("answer_token_index", "confidence_token_index")


@dataclass
class PassInputs:
    pass_name: str
    question_ids: np.ndarray  # (n,) str
    seqs: list[list[int]]  # n prompts' token ids, each ending at its readout token
    logits: np.ndarray  # (n, n_labels) float32 stored restricted logits
    probs: np.ndarray  # (n, n_labels) float32 stored restricted probabilities
    labels: tuple[str, ...]
    label_ids: dict[str, list[int]]  # label -> token ids (bare and with a leading space)

    @property
    def n(self) -> int:
        return len(self.seqs)


def pass_inputs(rd, pass_name: str, rows: np.ndarray | None = None) -> PassInputs:
    """Read one pass's prompts and stored readout (``rows``: a subset, in that order).

    Example:
        >>> inp = pass_inputs(open_run_data("runs/trivia500"), "self_conf", np.arange(10))  # doctest: +SKIP
        >>> inp.labels, len(inp.seqs[0]) - 1 == inp.readout[0]                             # doctest: +SKIP
        (('S', 'T', 'U', 'V', 'W', 'X', 'Y', 'Z'), True)
    """
    from ...passes import labels_for_pass
    from ..data import column_values, ragged_values

    ds = rd.split(pass_name)
    rows = np.arange(len(ds)) if rows is None else np.asarray(rows, dtype=np.int64)
    offsets, values = ragged_values(ds, "input_ids")
    seqs = [values[offsets[r]:offsets[r + 1]].astype(np.int64).tolist() for r in rows]
    col = next((c for c in READOUT_COLUMNS if c in ds.column_names), None)
    if col is None:
        raise UserError(f"pass {pass_name} has no readout index column ({' or '.join(READOUT_COLUMNS)}); "
                        "is it a run written by `hf-introspect collect`?")
    readout = column_values(ds, col)[rows].astype(np.int64)
    if any(int(r) != len(s) - 1 for r, s in zip(readout, seqs)):
        raise UserError(f"pass {pass_name}: the readout token is not the prompt's last token; this run cannot be "
                        "intervened on at the readout")
    labels = labels_for_pass(pass_name)
    ids = ((rd.run_config or {}).get("identity") or {}).get("label_token_ids", {}).get(pass_name)
    if not ids or list(ids) != list(labels):
        raise UserError(f"run_config.json records no label token ids for pass {pass_name}; "
                        "causal commands need the run folder written by `hf-introspect collect`")
    return PassInputs(pass_name, rd.question_ids(pass_name)[rows], seqs,
                      column_values(ds, "logits")[rows].astype(np.float32),
                      column_values(ds, "probs")[rows].astype(np.float32), labels,
                      {k: [int(i) for i in v] for k, v in ids.items()})


def readout_norms(rd, pass_name: str, layers: list[int]) -> dict[int, float]:
    """Mean L2 norm of the stored readout-token activation per layer (the unit of steering strengths).

    Example:
        >>> readout_norms(open_run_data("runs/trivia500"), "self_conf", [30])   # doctest: +SKIP
        {30: 97.3}
    """
    stored = set(rd.layers(pass_name))
    missing = [layer for layer in layers if layer not in stored]
    if missing:
        raise UserError(f"layer {missing[0]} is not stored in pass {pass_name}, so its mean activation norm is "
                        "unknown; pass --raw_strength to give strengths in raw units")
    return {layer: float(np.linalg.norm(rd.matrix(pass_name, layer, "answer"), axis=1).mean()) for layer in layers}
