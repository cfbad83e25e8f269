"""Surface features of a question: cheap text statistics that probes on activations must beat.

If a probe on layer activations predicts correctness no better than these do, the "internal"
signal may be nothing but question length or wording.
"""

from __future__ import annotations

import re

QUESTION_TYPES = ("what", "which", "who", "where", "when", "how", "why")
_NEGATION = re.compile(r"\b(not|no|never|none|neither|nor|except|without)\b|n't\b", re.IGNORECASE)
_AMBIGUITY = re.compile(
    r"\b(possibly|possible|might|may|maybe|perhaps|probably|likely|could|approximately|roughly|"
    r"about|around|arguably|allegedly|reportedly|usually|often|generally)\b",
    re.IGNORECASE,
)


def question_type(text: str) -> str:
    """The first wh-word of the question (what/which/who/where/when/how/why), else "other".

    Example:
        >>> question_type("In which year did WW2 end?")
        'which'
    """
    words = re.findall(r"[a-z]+", text.lower())
    for word in words:
        if word in QUESTION_TYPES:
            return word
        if word in ("whom", "whose"):
            return "who"
    return "other"


def surface_features(text: str, token_ids: list[int]) -> dict:
    """Surface features from the seed README, given the question text and its token ids alone.

    token_rarity_* use the token id as a rarity proxy (BPE vocabularies put frequent merges first).

    Example:
        >>> surface_features("Who did not win?", [10, 20, 30])["has_negation"]
        True
    """
    return {
        "char_length": len(text),
        "token_length": len(token_ids),
        "question_type": question_type(text),
        "has_negation": bool(_NEGATION.search(text)),
        "has_ambiguity": bool(_AMBIGUITY.search(text)),
        "token_rarity_mean": float(sum(token_ids) / len(token_ids)) if token_ids else 0.0,
        "token_rarity_max": int(max(token_ids)) if token_ids else 0,
    }
