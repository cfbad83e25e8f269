"""What bounds hf_introspect's CPU speed-up over the reference loop, measured.

On a CPU a prompt forward runs at the core's matrix-multiply peak, so the time it takes follows
the number of tokens run, and a speed-up can only come from running fewer of them. This script
measures, with one thread (as bench_collect.py), the embedded SmolLM2-135M in float32 and the
same questions and prompts as bench_collect.py:

  sgemm peak      ``F.linear`` at the model's own weight shapes, with prompt-sized inputs
                  (4 rows x the mean prompt length): the most this core does in float32
  prefill rate    ``forward_hidden`` (every layer's hidden states, as the collector runs it) on
                  4 real prompts of each pass: tokens/s, and the share of the sgemm peak the
                  linear layers reach in it
  prompt tokens   what each side runs for N questions x 3 passes: the reference runs every
                  prompt whole; hf_introspect runs each pass's shared prefix once and
                  ``other_conf``'s question block on ``self_conf``'s (the figures its plan prints)

and prints the bound: the reference's measured seconds over hf_introspect's prompt tokens at the
measured prefill rate, i.e. the ratio hf_introspect would reach if its decode steps, writes and
setup cost nothing. The reference's seconds and hf_introspect's measured split come from a
bench_collect.py results file (``--bench_json``; default: the float32 run the README cites). That
bound is an estimate: the reference was timed in another session than the prefill rate here; the
same ratio from the results file alone (reference seconds over hf_introspect's measured prefill
seconds) is printed beside it. Also printed: the same matrix multiplies in bfloat16.

    python benchmarks/bench_floor.py                    # ~1 minute
    python benchmarks/bench_floor.py --num_questions 40
"""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent)]


def timed(fn, repeats: int) -> float:
    """Fastest of ``repeats`` calls of ``fn()``, after one warm-up call, in seconds. The best case on
    a shared machine: the sgemm peak is then not understated, and the prefill rate (hence the
    bound below) errs on hf_introspect's side."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def linear_shapes(cfg) -> list[tuple[int, int, int]]:
    """(in, out, count per layer) of a Llama block's linear layers."""
    h, kv = cfg.hidden_size, cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads)
    return [(h, h, 2), (h, kv, 2), (h, cfg.intermediate_size, 2), (cfg.intermediate_size, h, 1)]  # q,o / k,v / gate,up / down


def prompt_tokens(prompts: dict) -> dict:
    """Tokens each side runs: every prompt whole (reference) vs what the collector skips, counted
    with the collector's own helpers (``prompts``: pass -> prompt Dataset)."""
    from hf_introspect.collection.handoff import handed_lengths, shared_prefix_ids
    from hf_introspect.collection.prefix import MIN_SHARED_TOKENS
    from hf_introspect.config import CollectConfig

    cfg = CollectConfig(output_dir="unused")
    whole = {p: sum(ds["seq_len"]) for p, ds in prompts.items()}
    shared = {p: len(shared_prefix_ids(cfg, ds) or ()) for p, ds in prompts.items()}
    saved_prefix = sum(shared[p] * (len(ds) - 1) for p, ds in prompts.items())  # each run once
    # other_conf on self_conf's per-question prefixes: the pairing the collector finds with the
    # default templates (same shared prefix, >= MIN_SHARED_TOKENS per question).
    handed = 0
    if {"self_conf", "other_conf"} <= prompts.keys() and shared["self_conf"] == shared["other_conf"]:
        handed = int(handed_lengths(prompts["self_conf"], prompts["other_conf"], shared["other_conf"]).sum())
        handed = handed if handed >= MIN_SHARED_TOKENS * len(prompts["other_conf"]) else 0
    ref = sum(whole.values())
    return {"reference": ref, "hf": ref - saved_prefix - handed, "shared_prefix_saved": saved_prefix,
            "handoff_saved": handed, "per_pass_whole": whole, "per_pass_shared_prefix": shared}


# The bench_collect.py results the README cites (float32, 100 questions, ABBA x 2).
DEFAULT_BENCH_JSON = HERE / "results" / "bench_collect_cpu_6bf4285.json"


def measured_split(path: Path, n_questions: int) -> dict | None:
    """Median wall seconds of each side at ``n_questions`` and hf_introspect's median prefill
    seconds (None where the file lacks them)."""
    data = json.loads(path.read_text())
    if data.get("args", {}).get("dtype", "auto") not in ("auto", "float32"):
        print(f"{path.name} was measured in {data['args']['dtype']}; this script measures float32")
        return None
    rows = [r for r in data.get("results", []) if r.get("n") == n_questions]
    ref = [r["wall_s"] for r in rows if r.get("side") == "ref"]
    hf = [r for r in rows if r.get("side") == "hf"]
    if not ref or not hf:
        return None
    prefill = [s for r in hf for k, s in r.get("breakdown", {}).get("seconds", {}).items() if "prefill" in k]
    return {"reference_s": statistics.median(ref), "hf_s": statistics.median(r["wall_s"] for r in hf),
            "hf_prefill_s": statistics.median(prefill) if len(prefill) == len(hf) else None}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num_questions", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=7, help="timed calls per figure (the fastest counts)")
    ap.add_argument("--bench_json", default=str(DEFAULT_BENCH_JSON),
                    help="bench_collect.py results, float32 (default: the run the README cites)")
    args = ap.parse_args(argv)

    import logging
    import warnings

    import torch
    import torch.nn.functional as F
    from datasets.utils import logging as ds_logging

    from hf_introspect.collection.forward import forward_hidden, left_pad
    from hf_introspect.models.load import load_model
    from hf_introspect.collection.prompt_dataset import build_prompt_dataset
    from hf_introspect.passes import PASSES
    from hf_introspect.collection.prompts import load_templates
    from hf_introspect.questions.sources import load_questions

    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    ds_logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    print(f"load average {tuple(round(x, 2) for x in os.getloadavg())}; torch {torch.__version__}, "
          f"{args.threads} thread(s), {torch.backends.cpu.get_cpu_capability()}", flush=True)

    lm = load_model(None, dtype="float32")
    net, cfg = lm.model, lm.model.config
    qs = load_questions(None, num_questions=args.num_questions, seed=0)
    templates = load_templates(None)
    prompts = {p: build_prompt_dataset(qs, p, templates[p], lm.tokenizer, lm.use_chat_template, f"floor-{p}")
               for p in PASSES}
    seqs = {p: ds["input_ids"] for p, ds in prompts.items()}
    tokens = prompt_tokens(prompts)
    mean_len = round(sum(tokens["per_pass_whole"].values()) / sum(len(v) for v in seqs.values()))

    # sgemm peak at the block's weight shapes, 4 prompts' worth of rows: (rows, in) @ (out, in).T.
    # Measured before and after the prefill figures; the faster counts (a shared machine's bursts).
    rows, peak = 4 * mean_len, {}
    flops_linear_per_token = sum(2 * d_in * d_out * c for d_in, d_out, c in linear_shapes(cfg)) * cfg.num_hidden_layers
    g = torch.Generator().manual_seed(0)
    operands = {f"{d_in}x{d_out}": (torch.randn(rows, d_in, generator=g), torch.randn(d_out, d_in, generator=g))
                for d_in, d_out, _ in linear_shapes(cfg)}

    def measure_sgemm():
        with torch.inference_mode():
            for key, (x, w) in operands.items():
                s = timed(lambda: F.linear(x, w), args.repeats)
                peak[key] = max(peak.get(key, 0.0), 2 * x.shape[0] * x.shape[1] * w.shape[0] / s / 1e9)

    measure_sgemm()

    # Prefill rate on real prompts, 4 per pass, as the collector runs them (hidden states, cache).
    rates, computed = {}, {}  # real tokens/s (what the run's token counts need); padded tokens/s
    with torch.inference_mode():
        for p in PASSES:
            ids, mask, pos = left_pad([list(s) for s in seqs[p][:4]], lm.tokenizer.pad_token_id, "cpu")
            s = timed(lambda: forward_hidden(net, ids, mask, pos, use_cache=True), args.repeats)
            rates[p], computed[p] = int(mask.sum()) / s, ids.numel() / s
    measure_sgemm()
    # A forward's FLOPs split over the shapes as their weights do: its rate is the harmonic mean.
    weights = {f"{d_in}x{d_out}": d_in * d_out * c for d_in, d_out, c in linear_shapes(cfg)}
    sgemm = sum(weights.values()) / sum(weights[k] / peak[k] for k in peak)
    print(f"\nsgemm, {rows} rows, the model's linear shapes: "
          + ", ".join(f"{k} {v:.1f}" for k, v in peak.items()) + f" GFLOP/s (over a forward's mix {sgemm:.1f})")
    bf16 = {}
    with torch.inference_mode():  # the same in bfloat16 (what --dtype bfloat16 would get)
        for key, (x, w) in operands.items():
            xb, wb = x.bfloat16(), w.bfloat16()
            bf16[key] = 2 * x.shape[0] * x.shape[1] * w.shape[0] / timed(lambda: F.linear(xb, wb), args.repeats) / 1e9
    bf16_mix = sum(weights.values()) / sum(weights[k] / bf16[k] for k in bf16)
    print("the same in bfloat16: " + ", ".join(f"{k} {v:.1f}" for k, v in bf16.items())
          + f" GFLOP/s (over a forward's mix {bf16_mix:.1f} = {bf16_mix / sgemm:.2f}x float32)")
    n_tok = {p: tokens["per_pass_whole"][p] for p in PASSES}
    rate = sum(n_tok.values()) / sum(n_tok[p] / rates[p] for p in PASSES)  # token-weighted harmonic mean
    padded_rate = sum(n_tok.values()) / sum(n_tok[p] / computed[p] for p in PASSES)
    linear_gflops = padded_rate * flops_linear_per_token / 1e9  # padding is computed too
    print("prefill, 4 prompts per pass, forward_hidden: " + ", ".join(f"{p} {r:.0f}" for p, r in rates.items())
          + f" tokens/s; over the run's tokens {rate:.0f} tokens/s = {linear_gflops:.1f} GFLOP/s in the linear "
          f"layers = {linear_gflops / sgemm:.0%} of the sgemm peak (the rest: attention, norms, activations)")

    print(f"\nprompt tokens, {args.num_questions} questions x {len(PASSES)} passes: reference {tokens['reference']:,}; "
          f"hf_introspect {tokens['hf']:,} (shared prefixes -{tokens['shared_prefix_saved']:,}, other_conf on "
          f"self_conf -{tokens['handoff_saved']:,}) = {tokens['reference'] / tokens['hf']:.2f}x fewer")
    ref_floor, hf_floor = tokens["reference"] / rate, tokens["hf"] / rate
    print(f"prompt forwards at {rate:.0f} tokens/s: reference {ref_floor:.1f} s, hf_introspect {hf_floor:.1f} s")

    path = Path(args.bench_json)
    split = measured_split(path, args.num_questions) if path.exists() else None
    result = {"sgemm_gflops": sgemm, "sgemm_by_shape": peak, "bf16_gflops": bf16_mix, "bf16_by_shape": bf16, "prefill_tokens_per_s": rate, "prefill_by_pass": rates,
              "linear_share_of_peak": linear_gflops / sgemm, "tokens": tokens, "floor_s": {"ref": ref_floor, "hf": hf_floor}}
    if split is None:
        print(f"no float32 bench_collect results for {args.num_questions} questions in {path}: run "
              f"bench_collect.py --json FILE first and pass --bench_json FILE; the bound needs the reference's seconds")
    else:
        bound = split["reference_s"] / hf_floor
        prefill = f" (its prefill {split['hf_prefill_s']:.1f} s)" if split["hf_prefill_s"] else ""
        print(f"\nmeasured ({path.name}, median): reference {split['reference_s']:.1f} s, hf_introspect "
              f"{split['hf_s']:.1f} s = {split['reference_s'] / split['hf_s']:.2f}x{prefill}")
        print(f"bound (estimate: the reference timed in {path.name}, the prefill rate now): reference "
              f"{split['reference_s']:.1f} s / hf_introspect's prompt forwards {hf_floor:.1f} s = "
              f"{bound:.2f}x if hf_introspect's decode, writes and setup cost nothing; "
              f"2x leaves them {split['reference_s'] / 2 - hf_floor:.1f} s "
              + (f"(measured: {split['hf_s'] - split['hf_prefill_s']:.1f} s)" if split["hf_prefill_s"] else ""))
        if split["hf_prefill_s"]:
            # The same bound from the bench run alone (both sides measured in one session).
            print(f"the same from {path.name} alone: reference {split['reference_s']:.1f} s / hf_introspect's "
                  f"measured prompt forwards {split['hf_prefill_s']:.1f} s = "
                  f"{split['reference_s'] / split['hf_prefill_s']:.2f}x")
        result.update(measured=split, bound=bound)
    print(json.dumps({"bench_floor": result}, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
