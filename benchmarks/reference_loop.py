"""The baseline: activation collection written the way a user would from the seed README.

Per batch, one ``model.generate(max_new_tokens=10, output_hidden_states=True,
return_dict_in_generate=True, output_scores=True)``; the prompt step's hidden states of every
layer go to host memory with ``.cpu().numpy()`` (float16); the answer distribution is read from
the first step's scores restricted to the label tokens; metadata rows are kept as dicts. Nothing
is written until the end: then ``metadata.json`` and one ``activations_layer_NN.npy`` per layer,
shaped [n_questions, max_seq_len, hidden] float16 with each prompt right-aligned (left padding),
so ``acts[i, -1]`` is question i's last prompt token, as in the seed README. Peak memory therefore
grows with the number of questions.

Only the collection strategy differs from ``hf_introspect.collection.run.collect``: the caller passes
the same model, the same prompt token ids (``hf_introspect.collection.prompt_dataset.build_prompt_dataset``),
the same label token ids and the same batch size.

    from benchmarks.reference_loop import reference_collect
    summary = reference_collect(lm.model, lm.tokenizer, prompts, "ref_run", label_ids=label_ids)
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import torch

PROMPT_TYPES = {"mcq": "mcq", "self_conf": "self_confidence", "other_conf": "other_confidence"}
MIDPOINTS = np.array([2.5, 7.5, 15.0, 30.0, 50.0, 70.0, 85.0, 95.0])


def _parse(text: str, labels: list[str]) -> str | None:
    m = re.match(rf"\s*[\(\[]?([{''.join(labels)}])(?:[\)\].:,\s]|$)", text)
    return m.group(1) if m else None


def _run_pass(model, tokenizer, prompts, pass_name: str, label_ids: dict[str, list[int]], batch_size: int,
              max_new_tokens: int, timings: dict) -> tuple[list[dict], list[list[np.ndarray]]]:
    labels = list(label_ids)
    n_layers = model.config.num_hidden_layers + 1
    acts: list[list[np.ndarray]] = [[] for _ in range(n_layers)]  # acts[layer][question]: (seq_len, hidden)
    rows: list[dict] = []
    device = next(model.parameters()).device
    for lo in range(0, len(prompts), batch_size):
        batch = prompts[lo:lo + batch_size]  # dict of columns
        enc = tokenizer.pad({"input_ids": batch["input_ids"]}, padding=True, padding_side="left", return_tensors="pt")
        enc = {k: v.to(device) for k, v in enc.items()}
        t0 = time.perf_counter()
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 output_hidden_states=True, return_dict_in_generate=True, output_scores=True,
                                 pad_token_id=tokenizer.pad_token_id)
        t1 = time.perf_counter()
        width = enc["input_ids"].shape[1]
        prompt_hidden = out.hidden_states[0]  # n_layers + 1 tensors of (batch, width, hidden)
        for layer in range(n_layers):
            h = prompt_hidden[layer].to(torch.float16).cpu().numpy()
            for b, ids in enumerate(batch["input_ids"]):
                acts[layer].append(h[b, width - len(ids):].copy())  # drop the left padding
        t2 = time.perf_counter()
        first = out.scores[0].float()  # (batch, vocab) scores of the first generated token
        logits = torch.stack([torch.logsumexp(first[:, ids], dim=-1) for ids in label_ids.values()], -1)
        probs = torch.softmax(logits, dim=-1).cpu().numpy()
        logits = logits.cpu().numpy()
        for b in range(len(batch["input_ids"])):
            text = tokenizer.decode(out.sequences[b, width:], skip_special_tokens=True)
            parsed = _parse(text, labels) or labels[int(np.argmax(logits[b]))]
            p = probs[b]
            row = {k: batch[k][b] for k in ("question_id", "question_text", "options", "correct_answer_letter",
                                            "prompt_text", "char_length", "token_length", "question_type",
                                            "has_negation", "has_ambiguity", "token_rarity_mean", "token_rarity_max")}
            row.update(model_name=getattr(model.config, "_name_or_path", "model"), checkpoint_id="base",
                       prompt_type=PROMPT_TYPES[pass_name], temperature=0.0, top_p=1.0,
                       max_new_tokens=max_new_tokens, output_text=text, parsed_answer=parsed,
                       logits=logits[b].tolist(), probs=p.tolist(),
                       entropy=float(-(p * np.log(np.clip(p, 1e-30, None))).sum()))
            index = len(batch["input_ids"][b]) - 1
            if pass_name == "mcq":
                c = labels.index(row["correct_answer_letter"])
                row.update(is_correct=parsed == row["correct_answer_letter"], answer_token_index=index,
                           logit_margin=float(logits[b][c] - np.delete(logits[b], c).max()))
            else:
                key = "self_confidence" if pass_name == "self_conf" else "other_confidence"
                row.update({key: float(p @ MIDPOINTS), "confidence_token_index": index})
            rows.append(row)
        timings["generate_s"] += t1 - t0
        timings["host_copy_s"] += t2 - t1
        timings["metadata_s"] += time.perf_counter() - t2
        del out, prompt_hidden
    return rows, acts


def _save_pass(folder: Path, rows: list[dict], acts: list[list[np.ndarray]]) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "metadata.json", "w") as f:
        json.dump(rows, f, default=str)
    written = 0
    max_len = max(a.shape[0] for a in acts[0])
    for layer, per_q in enumerate(acts):
        arr = np.zeros((len(per_q), max_len, per_q[0].shape[1]), dtype=np.float16)  # (n, max_len, hidden)
        for i, a in enumerate(per_q):
            arr[i, max_len - a.shape[0]:] = a
        np.save(folder / f"activations_layer_{layer:02d}.npy", arr)
        written += arr.nbytes
        del arr
    return written


def reference_collect(model, tokenizer, prompts: dict, output_dir: str | Path, *, label_ids: dict,
                      batch_size: int = 4, max_new_tokens: int = 10) -> dict:
    """Collect every pass in ``prompts`` ({pass: prompt Dataset}) the seed README's way.

    ``label_ids[pass]`` maps each label to its token ids (as ``resolve_label_token_ids`` gives).
    Everything stays in RAM until every pass has run; then it is saved. Returns timings, bytes
    written and a small sample of the values (for cross-checking against hf_introspect).
    """
    out = Path(output_dir)
    timings = {"generate_s": 0.0, "host_copy_s": 0.0, "metadata_s": 0.0, "save_s": 0.0}
    held = {}
    for pass_name, ds in prompts.items():
        held[pass_name] = _run_pass(model, tokenizer, ds, pass_name, label_ids[pass_name], batch_size,
                                    max_new_tokens, timings)
    t0 = time.perf_counter()
    written = 0
    for pass_name, (rows, acts) in held.items():
        written += _save_pass(out / pass_name, rows, acts)
    with open(out / "run_config.json", "w") as f:
        json.dump({"batch_size": batch_size, "max_new_tokens": max_new_tokens, "passes": list(prompts)}, f)
    timings["save_s"] = time.perf_counter() - t0
    k = min(10, len(next(iter(held.values()))[1]) - 1)
    sample = {p: {"probs": [r["probs"] for r in rows[:4]], "output_text": [r["output_text"] for r in rows[:4]],
                  "layer10_last": [acts[k][i][-1].astype(np.float32).tolist()[:8] for i in range(min(4, len(rows)))]}
              for p, (rows, acts) in held.items()}
    return {"timings": timings, "activation_bytes": written, "sample": sample}
