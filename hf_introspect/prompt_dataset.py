"""Questions -> one pass's prompts: rendered, tokenized, with token spans and surface features.

Runs as a batched ``Dataset.map`` in memory (cheap: no model involved), so the plan and the
collector see exact token counts before any inference.
"""

from __future__ import annotations

from datasets import Dataset, Features

from .prompts import ANSWER_LABELS, PROMPT_TYPES, char_span_to_token_span, render_prompt
from .schema import prompt_features, question_features
from .surface import surface_features


def _tokenize_prompt(tokenizer, text: str, use_chat_template: bool):
    # A chat template already spells out its special tokens (BOS, role markers); a plain prompt
    # gets the tokenizer's own BOS.
    return tokenizer(text, add_special_tokens=not use_chat_template, return_offsets_mapping=True)


def build_prompt_dataset(questions: Dataset, pass_name: str, template: str, tokenizer, use_chat_template: bool,
                         fingerprint: str) -> Dataset:
    """Add the pass's prompt columns to the normalised questions.

    Example:
        >>> prompts = build_prompt_dataset(questions, "mcq", DEFAULT_TEMPLATES["mcq"], tok, True, "run1-mcq")  # doctest: +SKIP
        >>> prompts[0]["prompt_text"][:40]                                                             # doctest: +SKIP
    """
    def fn(batch):
        out = {k: [] for k in prompt_features()}
        for text, options in zip(batch["question_text"], batch["options"]):
            rendered = render_prompt(template, text, options, tokenizer, use_chat_template)
            enc = _tokenize_prompt(tokenizer, rendered.text, use_chat_template)
            offsets = [tuple(o) for o in enc["offset_mapping"]]
            q_ids = tokenizer.encode(text, add_special_tokens=False)
            out["prompt_type"].append(PROMPT_TYPES[pass_name])
            out["prompt_text"].append(rendered.text)
            out["input_ids"].append(enc["input_ids"])
            out["seq_len"].append(len(enc["input_ids"]))
            out["question_token_span"].append(list(char_span_to_token_span(offsets, rendered.question_char_span)))
            out["option_token_spans"].append([list(char_span_to_token_span(offsets, rendered.option_char_spans[i]))
                                              for i in range(len(ANSWER_LABELS))])
            for key, value in surface_features(text, q_ids).items():
                out[key].append(value)
        return out

    features = Features({**question_features(), **prompt_features()})
    return questions.map(fn, batched=True, batch_size=256, features=features, keep_in_memory=True,
                         new_fingerprint=fingerprint, desc=None)
