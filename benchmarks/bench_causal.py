"""Time of the causal runner per edit (one question x layer x strength x direction): packed readout
tokens on the prompt's KV cache vs whole-prompt forwards, on a run's own prompts.

    .venv/bin/python benchmarks/bench_causal.py /work/runs/trivia500 --questions 8 --edits 1024

Prints: the prompt-minus-readout forward (once per batch), seconds per edit for the packed path at
several edits per step, seconds per edit for whole prompts, and their ratio. The values are the
same on both paths (tests/analysis/test_causal_runner.py); only the time differs.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def main() -> None:
    from hf_introspect.analysis.causal.hooks import ADD, RowEdits
    from hf_introspect.analysis.causal.pass_inputs import pass_inputs
    from hf_introspect.analysis.causal.run_model import load_run_model
    from hf_introspect.analysis.causal.runner import PromptBatch, label_index
    from hf_introspect.analysis.data import open_run_data

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--pass", dest="pass_name", default="self_conf")
    ap.add_argument("--questions", type=int, default=8, help="prompts in the batch (default 8)")
    ap.add_argument("--edits", default="8,64,256,1024", help="edits per step to time (default 8,64,256,1024)")
    ap.add_argument("--whole", type=int, default=8, help="edits to time as whole prompts (default 8)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()

    rd = open_run_data(args.run)
    inputs = pass_inputs(rd, args.pass_name, np.arange(args.questions))
    lm = load_run_model(rd.run_config, device=args.device)
    index = label_index(inputs.label_ids, args.device)
    hidden, n = lm.hidden_size, inputs.n
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    def edits(k: int) -> RowEdits:  # k random additive edits at random layers
        rng = np.random.default_rng(k)
        return RowEdits(rng.integers(1, lm.num_layers + 1, k), np.full(k, ADD), np.zeros(k, np.int64),
                        rng.uniform(-1, 1, k).astype(np.float32), torch.randn(1, hidden))

    print(f"{lm.source.model_name} on {args.device}, {torch.get_num_threads()} threads; {n} prompts of "
          f"{np.mean([len(s) for s in inputs.seqs]):.0f} tokens ({args.pass_name})")
    sync()
    t = time.perf_counter()
    batch = PromptBatch(lm.model, inputs.seqs, lm.tokenizer.pad_token_id)
    sync()
    print(f"prompt minus readout token, once per batch: {time.perf_counter() - t:.2f} s")
    packed = {}
    for k in [int(x) for x in args.edits.split(",")]:
        batch.readout(np.arange(min(k, 8)) % n, edits(min(k, 8)), index)  # warm-up
        sync()
        t = time.perf_counter()
        batch.readout(np.arange(k) % n, edits(k), index, max_tokens=k)
        sync()
        packed[k] = (time.perf_counter() - t) / k
        print(f"packed, {k:5d} edits in one step: {packed[k] * 1e3:8.2f} ms per edit")
    whole = PromptBatch(lm.model, inputs.seqs, lm.tokenizer.pad_token_id, reuse_prefix=False)
    sync()
    t = time.perf_counter()
    whole.readout(np.arange(args.whole) % n, edits(args.whole), index)
    sync()
    per_whole = (time.perf_counter() - t) / args.whole
    best = min(packed.values())
    print(f"whole prompts: {per_whole * 1e3:8.1f} ms per edit; packed is {per_whole / best:.0f}x faster at its best")


if __name__ == "__main__":
    main()
