"""Tiny offline models for tests, examples and benchmarks: a random-weight Llama built from a
config and a byte-level BPE tokenizer trained in a second on a few sentences. No network."""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_CORPUS = [
    "What is the capital of France? Paris Berlin Rome Madrid London",
    "Which element has the symbol Au? Gold Silver Copper Iron",
    "Who wrote Hamlet? Shakespeare Dickens Austen Tolstoy",
    "Answer the following multiple-choice question. Reply with the letter of the correct option only.",
    "How confident are you that you know the correct answer? Choose one confidence bin.",
    "estimate what share of college-educated people would know the correct answer",
    "A B C D S T U V W X Y Z <5% 5-10% 10-20% 20-40% 40-60% 60-80% 80-90% >90% 0123456789",
]


def tiny_tokenizer(chat_template: bool = True):
    """A fast tokenizer with ~400 tokens in which every label A-D and S-Z is one token.

    Example:
        >>> tok = tiny_tokenizer()
        >>> len(tok.encode("A", add_special_tokens=False))
        1
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    raw.train_from_iterator(_CORPUS * 4, trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                  unk_token="<|endoftext|>", pad_token="<|endoftext|>")
    if chat_template:
        tok.chat_template = CHAT_TEMPLATE
    return tok


def tiny_llama(vocab_size: int, num_layers: int = 2, hidden: int = 64, seed: int = 0):
    """A random-weight LlamaForCausalLM small enough for CPU tests (float32)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=1024, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                      tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).eval()


def save_tiny_model(folder: str | Path, num_layers: int = 2, hidden: int = 64, seed: int = 0,
                    chat_template: bool = True) -> Path:
    """Write a tiny model + tokenizer folder loadable with ``--model FOLDER``.

    Example:
        >>> path = save_tiny_model(tmp_path / "tiny")          # doctest: +SKIP
    """
    folder = Path(folder)
    tok = tiny_tokenizer(chat_template=chat_template)
    net = tiny_llama(len(tok), num_layers=num_layers, hidden=hidden, seed=seed)
    net.config.bos_token_id, net.config.eos_token_id = tok.bos_token_id, tok.eos_token_id
    net.config.pad_token_id = tok.pad_token_id
    net.generation_config.bos_token_id, net.generation_config.eos_token_id = tok.bos_token_id, tok.eos_token_id
    net.generation_config.pad_token_id = tok.pad_token_id
    net.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def save_tiny_lora(model_folder: str | Path, folder: str | Path, seed: int = 1, r: int = 4) -> Path:
    """A LoRA adapter for a tiny model with non-zero B matrices (so it changes the logits)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_folder)
    peft_model = get_peft_model(base, LoraConfig(r=r, lora_alpha=2 * r, target_modules=["q_proj", "v_proj"]))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:  # B starts at zero; randomise it so the adapter does something
                param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
    peft_model.save_pretrained(folder)
    return Path(folder)
