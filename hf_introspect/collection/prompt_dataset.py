"""Questions -> one pass's prompts: rendered, tokenized, with token spans and surface features.

Runs as a batched ``Dataset.map`` in memory (cheap: no model involved), so the plan and the
collector see exact token counts before any inference.
"""

from __future__ import annotations

from datasets import Dataset, Features

from ..passes import ANSWER_LABELS, PROMPT_TYPES
from .prompts import char_span_to_token_span, fill_prompt, marked_prompt
from ..schema import prompt_features, question_features
from ..questions.surface import surface_features


def _tokenize_prompts(tokenizer, texts: list[str], use_chat_template: bool):
    # A chat template already spells out its special tokens (BOS, role markers); a plain prompt
    # gets the tokenizer's own BOS. One call per batch: a fast tokenizer encodes it in parallel.
    return tokenizer(texts, add_special_tokens=not use_chat_template, return_offsets_mapping=True)


def build_prompt_dataset(questions: Dataset, pass_name: str, template: str, tokenizer, use_chat_template: bool,
                         fingerprint: str) -> Dataset:
    """Add the pass's prompt columns to the normalised questions.

    Example:
        >>> prompts = build_prompt_dataset(questions, "mcq", DEFAULT_TEMPLATES["mcq"], tok, True, "run1-mcq")  # doctest: +SKIP
        >>> prompts[0]["prompt_text"][:40]                                                             # doctest: +SKIP
    """
    marked = marked_prompt(template, tokenizer, use_chat_template)  # the chat template, rendered once

    def fn(batch):
        out = {k: [] for k in prompt_features()}
        rendered_rows = [fill_prompt(marked, text, options) for text, options in zip(batch["question_text"], batch["options"])]
        enc = _tokenize_prompts(tokenizer, [r.text for r in rendered_rows], use_chat_template)
        question_ids = tokenizer(list(batch["question_text"]), add_special_tokens=False)["input_ids"]
        for i, (text, rendered, q_ids) in enumerate(zip(batch["question_text"], rendered_rows, question_ids)):
            ids = enc["input_ids"][i]
            offsets = [tuple(o) for o in enc["offset_mapping"][i]]
            out["prompt_type"].append(PROMPT_TYPES[pass_name])
            out["prompt_text"].append(rendered.text)
            out["input_ids"].append(ids)
            out["seq_len"].append(len(ids))
            out["question_token_span"].append(list(char_span_to_token_span(offsets, rendered.question_char_span)))
            out["option_token_spans"].append([list(char_span_to_token_span(offsets, rendered.option_char_spans[i]))
                                              for i in range(len(ANSWER_LABELS))])
            for key, value in surface_features(text, q_ids).items():
                out[key].append(value)
        return out

    features = Features({**question_features(), **prompt_features()})
    return questions.map(fn, batched=True, batch_size=256, features=features, keep_in_memory=True,
                         new_fingerprint=fingerprint, desc=None)
