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


def write_planted_run(folder: str | Path, n: int = 300, hidden: int = 32, num_layers: int = 4,
                      planted_layer: int = 2, r2: float = 0.8, seed: int = 0) -> Path:
    """A synthetic run folder (passes mcq and self_conf, every position stored) with known signals.

    At the readout token of residual index ``planted_layer`` (mcq pass), ``entropy`` is
    ``1 + 0.5 * (sqrt(r2) * x.w + sqrt(1 - r2) * noise)`` for a random unit ``w``: a linear probe's
    population R^2 there is ``r2``. ``is_correct`` is ``x.v + 0.5 * noise > 0`` for another unit ``v``
    at the same layer and token. Every other layer, token and column (``parsed_answer``,
    ``self_confidence``...) is independent noise. The self_conf pass holds the same questions in
    reverse order (joins on question_id are exercised); its readout token at ``planted_layer`` is
    the mcq readout vector plus noise. Activations are standard normal, stored as float16.

    Example:
        >>> path = write_planted_run(tmp_path / "planted")          # doctest: +SKIP
    """
    import json

    import numpy as np
    from datasets import Array2D, Dataset, Features, Sequence, Value

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w, v = rng.standard_normal((2, hidden))
    w, v = w / np.linalg.norm(w), v / np.linalg.norm(v)
    ids = [f"q{i:04d}" for i in range(n)]
    qe = 7 + np.arange(n) % 3                      # question tokens 3..qe-1; options qe..qe+3; 3 more tokens
    seq_len = qe + 4 + 3
    readout_x = rng.standard_normal((n, hidden))   # (n, hidden) the planted layer's readout vectors
    entropy = 1.0 + 0.5 * (np.sqrt(r2) * readout_x @ w + np.sqrt(1 - r2) * rng.standard_normal(n))
    correct = readout_x @ v + 0.5 * rng.standard_normal(n) > 0
    layers = list(range(num_layers + 1))

    def acts(pass_name: str) -> dict:
        cols = {}
        for layer in layers:
            rows = [rng.standard_normal((int(s), hidden)) for s in seq_len]
            if layer == planted_layer:
                for i, r in enumerate(rows):
                    r[-1] = readout_x[i] if pass_name == "mcq" else readout_x[i] + 0.5 * rng.standard_normal(hidden)
            cols[f"activations_layer_{layer:02d}"] = [r.astype(np.float16) for r in rows]
        return cols

    letters = np.array(list("ABCD"))
    base = {
        "question_id": ids, "question_text": [f"Planted question {i}?" for i in range(n)],
        "correct_answer_letter": letters[rng.integers(0, 4, n)].tolist(),
        "seq_len": seq_len.tolist(), "question_token_span": [[3, int(e)] for e in qe],
        "option_token_spans": [[[int(e) + j, int(e) + j + 1] for j in range(4)] for e in qe],
        "char_length": rng.integers(20, 80, n).tolist(), "token_length": (qe - 3).tolist(),
        "activation_positions": [list(range(int(s))) for s in seq_len],
    }
    feats = {"question_id": Value("string"), "question_text": Value("string"),
             "correct_answer_letter": Value("string"), "seq_len": Value("int32"),
             "question_token_span": Sequence(Value("int32"), length=2),
             "option_token_spans": Sequence(Sequence(Value("int32"), length=2), length=4),
             "char_length": Value("int32"), "token_length": Value("int32"),
             "logits": Sequence(Value("float32"), length=4), "parsed_answer": Value("string"),
             "entropy": Value("float32"), "activation_positions": Sequence(Value("int32"))}
    layer_feats = {f"activations_layer_{layer:02d}": Array2D((None, hidden), "float16") for layer in layers}
    mcq = {**base, "logits": rng.standard_normal((n, 4)).astype(np.float32).tolist(),
           "parsed_answer": letters[rng.integers(0, 4, n)].tolist(), "entropy": entropy.tolist(),
           "is_correct": correct.tolist(), "answer_token_index": (seq_len - 1).tolist(), **acts("mcq")}
    conf = {**base, "logits": rng.standard_normal((n, 4)).astype(np.float32).tolist(),
            "parsed_answer": letters[rng.integers(0, 4, n)].tolist(), "entropy": rng.random(n).tolist(),
            "self_confidence": (100 * rng.random(n)).tolist(), "confidence_token_index": (seq_len - 1).tolist(),
            **acts("self_conf")}
    conf = {k: list(reversed(col)) for k, col in conf.items()}   # same questions, another row order
    Dataset.from_dict(mcq, features=Features({**feats, "is_correct": Value("bool"),
                                              "answer_token_index": Value("int32"), **layer_feats})
                      ).save_to_disk(str(folder / "mcq"))
    Dataset.from_dict(conf, features=Features({**feats, "self_confidence": Value("float32"),
                                               "confidence_token_index": Value("int32"), **layer_feats})
                      ).save_to_disk(str(folder / "self_conf"))
    (folder / "dataset_dict.json").write_text(json.dumps({"splits": ["mcq", "self_conf"]}))
    (folder / "run_config.json").write_text(json.dumps({
        "run_id": f"planted-{seed}", "model_name": "planted", "num_layers": num_layers, "hidden_size": hidden,
        "config": {"positions": "all", "passes": ["mcq", "self_conf"]},
        "planted": {"layer": planted_layer, "r2": r2, "entropy_direction": w.tolist(),
                    "is_correct_direction": v.tolist()}}))
    return folder
