"""Behaviour read out of the next-token distribution: label tokens, restricted softmax, parsing.

The model's answer distribution is the next-token distribution at the last prompt token,
restricted to the label tokens (A-D, or the 8 confidence bins S-Z) and renormalised.
"""

from __future__ import annotations

import re

import numpy as np
import torch

from ..errors import UserError
from ..passes import CONFIDENCE_MIDPOINTS


def resolve_label_token_ids(tokenizer, labels: tuple[str, ...]) -> dict[str, list[int]]:
    """Token ids that spell each label as ONE token, bare ("A") and with a leading space (" A").

    A chat prompt ends with a newline, so the bare form is what the model emits; a plain prompt
    ending in "Answer:" is followed by " A". Both are kept and their probabilities summed
    (logsumexp of the logits), so the readout does not depend on which form the template invites.

    Example:
        >>> ids = resolve_label_token_ids(tok, ("A", "B"))   # doctest: +SKIP
        >>> ids["A"]                                          # doctest: +SKIP
        [49, 330]
    """
    resolved: dict[str, list[int]] = {}
    for label in labels:
        ids: list[int] = []
        for form in (label, " " + label):
            enc = tokenizer.encode(form, add_special_tokens=False)
            if len(enc) == 1 and enc[0] not in ids and enc[0] != tokenizer.unk_token_id:
                ids.append(int(enc[0]))
        if not ids:
            raise UserError(f"label '{label}' is not a single token in this tokenizer's vocabulary "
                            f"(neither '{label}' nor ' {label}'); this model cannot be read out with these labels")
        resolved[label] = ids
    all_ids = [i for ids in resolved.values() for i in ids]
    if len(set(all_ids)) != len(all_ids):
        raise UserError(f"labels {list(labels)} share token ids {resolved}; the tokenizer cannot tell them apart")
    return resolved


def restricted_logits(next_token_logits: torch.Tensor, label_ids: dict[str, list[int] | torch.Tensor]) -> torch.Tensor:
    """Per-label logits: logsumexp over each label's token forms.

    next_token_logits: (batch, vocab) -> returns (batch, n_labels) in float32. ``label_ids``
    values may be index tensors already on the logits' device (no host round trip).
    """
    logits = next_token_logits.float()
    cols = [torch.logsumexp(logits[:, ids], dim=-1) for ids in label_ids.values()]
    return torch.stack(cols, dim=-1)


def softmax_np(logits: np.ndarray) -> np.ndarray:
    """Numerically stable softmax over the last axis."""
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def entropy_nats(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy in nats over the last axis (0 * log 0 counted as 0).

    Example:
        >>> float(entropy_nats(np.array([0.25, 0.25, 0.25, 0.25])))  # ln 4
        1.3862943611198906
    """
    p = np.clip(probs, 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log(p), 0.0)
    return terms.sum(axis=-1)


def logit_margin(logits: np.ndarray, correct_index: int) -> float:
    """Correct label's logit minus the best incorrect one (> 0 iff the argmax is correct).

    Example:
        >>> logit_margin(np.array([1.0, 3.0, 2.5, 0.0]), 1)
        0.5
    """
    others = np.delete(logits, correct_index)
    return float(logits[correct_index] - others.max())


def expected_confidence(probs: np.ndarray) -> float:
    """Expected confidence in % = sum(p_bin * bin midpoint) over the 8 bins S-Z.

    Example:
        >>> expected_confidence(np.array([0, 0, 0, 0, 0, 0, 0.5, 0.5]))
        90.0
    """
    return float(np.dot(probs, np.asarray(CONFIDENCE_MIDPOINTS)))


def parse_label(output_text: str, labels: tuple[str, ...]) -> str | None:
    """The label an output names: at its start ("B", "(B)", "B. Paris", "Z: >90%") or after
    "answer is". Returns None when the text names no label, e.g. "Paris".

    Example:
        >>> parse_label(" B. Paris", ("A", "B", "C", "D")), parse_label("Paris", ("A", "B", "C", "D"))
        ('B', None)
    """
    alt = "".join(labels)
    start = re.match(rf"\s*(?:\*\*)?[\(\[]?([{alt}])(?:[\)\].:,\s*]|$)", output_text)
    if start:
        return start.group(1)
    said = re.search(rf"answer(?: is|:)\s*(?:\*\*)?[\(\[]?([{alt}])\b", output_text, flags=re.IGNORECASE)
    return said.group(1) if said else None
