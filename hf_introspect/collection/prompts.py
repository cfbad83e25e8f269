"""The three prompt passes' templates and prompt rendering.

Every template lives here (and can be overridden from a JSON file); the rendered prompt and the
templates themselves are recorded verbatim, so a run can always be reproduced and audited.

The passes and their label sets are in :mod:`hf_introspect.passes`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..passes import ANSWER_LABELS, CONFIDENCE_LABELS, CONFIDENCE_RANGES, PASSES

_SCALE = "\n".join(f"{label}: {rng}" for label, rng in zip(CONFIDENCE_LABELS, CONFIDENCE_RANGES))

# Placeholders: {question}, {options} (the "A. ..." block), {A}..{D} (single options), {scale}.
DEFAULT_TEMPLATES: dict[str, str] = {
    "mcq": (
        "Answer the following multiple-choice question.\n\n"
        "Question: {question}\n{options}\n\n"
        "Reply with the letter of the correct option (A, B, C or D) only."
    ),
    "self_conf": (
        "Here is a multiple-choice question.\n\n"
        "Question: {question}\n{options}\n\n"
        "Do not answer it. Instead, how confident are you that you know the correct answer? "
        "Choose one confidence bin:\n{scale}\n\n"
        "Reply with the letter of the bin (S to Z) only."
    ),
    "other_conf": (
        "Here is a multiple-choice question.\n\n"
        "Question: {question}\n{options}\n\n"
        "Do not answer it. Instead, estimate what share of college-educated people would know "
        "the correct answer. Choose one bin:\n{scale}\n\n"
        "Reply with the letter of the bin (S to Z) only."
    ),
}
# Appended to the user message when the tokenizer has no chat template, so the next token is the
# label: "...only.\nAnswer:" -> " B".
PLAIN_SUFFIX = "\nAnswer:"


def load_templates(path: str | Path | None) -> dict[str, str]:
    """Default templates, with any overridden from a JSON file ``{"mcq": "...", ...}``.

    Example:
        >>> load_templates(None)["mcq"].startswith("Answer the following")
        True
    """
    templates = dict(DEFAULT_TEMPLATES)
    if path is None:
        return templates
    path = Path(path)
    try:
        overrides = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UserError(f"cannot read --prompt_templates {path}: {exc.strerror}; pass a readable JSON file") from exc
    except json.JSONDecodeError as exc:
        raise UserError(f"--prompt_templates {path} is not valid JSON (line {exc.lineno}): {exc.msg}") from exc
    if not isinstance(overrides, dict) or not set(overrides) <= set(PASSES):
        raise UserError(f"--prompt_templates {path} must be a JSON object with keys among {list(PASSES)}")
    for name, text in overrides.items():
        if not isinstance(text, str) or "{question}" not in text:
            raise UserError(f"--prompt_templates {path}: template '{name}' must be a string containing {{question}}")
        try:
            text.format(question="q", options="o", A="a", B="b", C="c", D="d", scale="s")
        except (KeyError, IndexError, ValueError) as exc:
            raise UserError(f"--prompt_templates {path}: template '{name}' has a bad placeholder ({exc}); "
                            "allowed: {question} {options} {A} {B} {C} {D} {scale}") from exc
        templates[name] = text
    return templates


@dataclass(frozen=True)
class RenderedPrompt:
    """A prompt as the model sees it, with where the question and options sit in the text."""

    text: str
    question_char_span: tuple[int, int]
    option_char_spans: tuple[tuple[int, int], ...]  # A..D, (start, end) character offsets in text


def marked_prompt(template: str, tokenizer, use_chat_template: bool) -> str:
    """The full prompt text (chat template applied) with sentinels where the question and options
    go. It is the same for every question of a pass, so the chat template is rendered once per
    pass, not once per question; :func:`fill_prompt` puts each question's values in."""
    # Sentinels locate the question and options inside whatever the chat template wraps around them.
    marks = {k: f"\x00{k}\x00" for k in ("question", *ANSWER_LABELS)}
    marked_block = "\n".join(f"{label}. {marks[label]}" for label in ANSWER_LABELS)
    user = template.format(question=marks["question"], options=marked_block, scale=_SCALE,
                           **{label: marks[label] for label in ANSWER_LABELS})
    if use_chat_template:
        return tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                             add_generation_prompt=True)
    return user + PLAIN_SUFFIX


def fill_prompt(marked: str, question: str, options: dict[str, str]) -> RenderedPrompt:
    """Replace :func:`marked_prompt`'s sentinels with one question's values, left to right,
    tracking where each value lands in the final text. Character spans are found after the chat
    template is applied (it may add text before the user message), so token spans can be derived
    from the tokenizer's offset mapping.

    Example:
        >>> marked = marked_prompt(DEFAULT_TEMPLATES["mcq"], None, False)
        >>> p = fill_prompt(marked, "2+2?", {"A": "3", "B": "4", "C": "5", "D": "6"})
        >>> p.text[p.question_char_span[0]:p.question_char_span[1]]
        '2+2?'
    """
    values = {"question": question, **{label: options[label] for label in ANSWER_LABELS}}
    spans: dict[str, tuple[int, int]] = {}
    out, pos, offset = [], 0, 0
    while True:
        start = marked.find("\x00", pos)
        if start < 0:
            out.append(marked[pos:])
            break
        end = marked.index("\x00", start + 1)
        key = marked[start + 1:end]
        out.append(marked[pos:start])
        offset += start - pos
        spans.setdefault(key, (offset, offset + len(values[key])))
        out.append(values[key])
        offset += len(values[key])
        pos = end + 1
    missing = (-1, -1)
    return RenderedPrompt(
        text="".join(out),
        question_char_span=spans.get("question", missing),
        option_char_spans=tuple(spans.get(label, missing) for label in ANSWER_LABELS),
    )


def char_span_to_token_span(offsets: list[tuple[int, int]], span: tuple[int, int]) -> tuple[int, int]:
    """Map a character span to the [start, end) token span covering it (-1, -1 if absent).

    Example:
        >>> char_span_to_token_span([(0, 3), (3, 7), (7, 9)], (4, 8))
        (1, 3)
    """
    start_c, end_c = span
    if start_c < 0:
        return (-1, -1)
    toks = [i for i, (s, e) in enumerate(offsets) if e > start_c and s < end_c and e > s]
    if not toks:
        return (-1, -1)
    return (toks[0], toks[-1] + 1)
