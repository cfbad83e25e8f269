"""Collection side by side: hf_introspect.collect vs the seed README's generate() loop.

Same model (the embedded SmolLM2-135M-Instruct, loaded ONCE in this process), same questions
(built-in bank), same prompt token ids (``build_prompt_dataset``), same batch size, 3 passes,
every layer, every prompt position, max_new_tokens 10. Each run happens in a forked child, so
the model is shared and ``ru_maxrss`` (from ``os.wait4``) is that run's own peak RSS; the RSS at
the fork (model + questions, the same for both sides) is printed too.

    python benchmarks/bench_collect.py                        # 100 questions; RSS scaling also at 40
    python benchmarks/bench_collect.py --num_questions 25 --rss_questions 0     # quick look
    python benchmarks/bench_collect.py --repeats 2 --cprofile /tmp/collect.prof # ABBA order, + cProfile

Prints, per run: wall time, questions/s (questions through all 3 passes per second), peak RSS,
activation bytes written; then the ratio hf_introspect / reference and a breakdown of where
hf_introspect's time goes, per side (the device, inside each shard map's function: prefill
forward, decode steps, the rest of each batch, the scatter into the shard buffers, idle between
shards; the writers, inside map: per-row metadata, Arrow encode + write, datasets' map overhead,
idle waiting for the device; the main thread: warm-up, everything else), measured with timing
hooks in the child and the collector's own MapScheduler stats. The reference side reports generate / host copy / metadata / save.

Threads: ``--threads 1`` by default. On this shared 2-core machine (load average ~6-7) a forward
with 2 intra-op threads took 10x longer than with 1 (OpenMP threads wait on each other while the
other jobs hold the cores). Both sides use the same setting, so the comparison is unaffected.

The RSS scaling point defaults to 40 questions = one full shard (save_every 10 x batch_size 4):
hf_introspect holds at most two shards in memory (one being written, the next being computed, each in its own map),
so its peak is flat from two shards up, while the reference grows with every question.
Default run: ~10 minutes on the loaded 2-core machine (two 100-question runs, two 40-question runs).
"""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")  # before anything imports tqdm: no progress bars

import argparse
import functools
import json
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # reference_loop, and hf_introspect from a checkout


def load():
    return tuple(round(x, 2) for x in os.getloadavg())


def vm_rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def dir_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


# --------------------------------------------------------------------------- hf_introspect side
class Breakdown:
    """Timing hooks around the collector's stages (installed in the child only)."""

    def __init__(self):
        self.t = {k: 0.0 for k in ("warmup", "prefill", "decode", "launch_batch", "continue_batches", "compute_shard",
                                   "shard_table", "arrow_write", "map", "shards", "device_waited_s",
                                   "writers_waited_s", "maps_waited_s")}
        self.n = {"prefill": 0, "decode": 0}
        self._in_warmup = False

    def install(self, lm):
        import datasets
        from datasets.arrow_writer import ArrowWriter

        from hf_introspect.collection import run as collector

        bd = self
        starts = {}

        def pre(_m, args, kwargs):
            starts["fwd"] = time.perf_counter()

        def post(_m, args, kwargs, _out):
            dt = time.perf_counter() - starts.pop("fwd")
            ids = kwargs.get("input_ids", args[0] if args else None)
            if bd._in_warmup:
                return
            kind = "decode" if ids is not None and ids.shape[1] == 1 else "prefill"
            bd.t[kind] += dt
            bd.n[kind] += 1

        lm.model.register_forward_pre_hook(pre, with_kwargs=True)
        lm.model.register_forward_hook(post, with_kwargs=True)

        def timed(key, fn, guard=None):
            @functools.wraps(fn)  # keeps attributes a patched shard fn may carry
            def wrapper(*a, **k):
                if guard is not None and not guard(a, k):
                    return fn(*a, **k)
                t0 = time.perf_counter()
                try:
                    return fn(*a, **k)
                finally:
                    if not bd._in_warmup or key == "warmup":
                        bd.t[key] += time.perf_counter() - t0
            return wrapper

        # The collector's stages by module (collection/run.py was split by concern).
        from hf_introspect.collection import backoff, estimate, pass_context, writers

        orig_warm = estimate.warmup_seconds

        def warm(*a, **k):
            bd._in_warmup = True
            t0 = time.perf_counter()
            try:
                return orig_warm(*a, **k)
            finally:
                bd._in_warmup = False
                bd.t["warmup"] += time.perf_counter() - t0

        from hf_introspect.collection import pipeline

        estimate.warmup_seconds = warm
        pass_context.launch_batch = timed("launch_batch", pass_context.launch_batch)
        backoff.continue_batches = timed("continue_batches", backoff.continue_batches)
        collector.compute_shard = timed("compute_shard", collector.compute_shard)
        writers.shard_table = timed("shard_table", writers.shard_table)
        real_run = pipeline.MapScheduler.run

        def scheduler_run(sched, *a, **k):  # the shards' maps: wall time, and who waited for whom
            t0 = time.perf_counter()
            try:
                return real_run(sched, *a, **k)
            finally:
                bd.t["shards"] += time.perf_counter() - t0
                for key in ("device_waited_s", "writers_waited_s", "maps_waited_s"):
                    bd.t[key] += sched.stats[key]

        pipeline.MapScheduler.run = scheduler_run
        depth = [0]

        def writer_timed(fn):
            def wrapper(*a, **k):
                depth[0] += 1
                t0 = time.perf_counter()
                try:
                    return fn(*a, **k)
                finally:
                    depth[0] -= 1
                    if depth[0] == 0:
                        bd.t["arrow_write"] += time.perf_counter() - t0
            return wrapper

        for name in ("write_batch", "write_table", "write", "finalize"):
            setattr(ArrowWriter, name, writer_timed(getattr(ArrowWriter, name)))
        datasets.Dataset.map = timed("map", datasets.Dataset.map, guard=lambda a, k: bool(k.get("cache_file_name")))

    def report(self, total: float) -> dict:
        """Per side. The device (the computes, one at a time inside the maps' functions: forwards,
        the rest of each batch, the scatter into the shard buffers, idle between shards) and the
        writers (inside the maps: per-row metadata, Arrow write, map's own overhead, idle waiting
        for the device) each add up to about the shards' wall time; the maps run concurrently, so
        the sides overlap. The main thread: warm-up and everything outside the shards."""
        t = self.t
        fwd = t["prefill"] + t["decode"]
        rows = {
            "[device, in map] model forward, prompt (prefill)": t["prefill"],
            "[device, in map] model forward, decode steps": t["decode"],
            "[device, in map] rest of launch_batch + continue_batches":
                t["launch_batch"] + t["continue_batches"] - fwd,
            "[device, in map] rest of the shard (results, scatter into shard buffers)":
                t["compute_shard"] - t["launch_batch"] - t["continue_batches"],
            "[device] idle between shards, waiting for the writers": t["device_waited_s"],
            "[writers, in map] per-row metadata (decode text, readout, lists)": t["shard_table"],
            "[writers, in map] Arrow encode + write (ArrowWriter)": t["arrow_write"],
            "[writers, in map] datasets map overhead (select, iterate, finalize)":
                t["map"] - t["compute_shard"] - t["maps_waited_s"] - t["shard_table"] - t["arrow_write"],
            "[writers] idle, waiting for the device": t["writers_waited_s"],
            "[main thread] all shards' maps, wall time": t["shards"],
            "[main thread] warm-up estimate batch": t["warmup"],
            "[main thread] other (prompts, plan, finalize, load_from_disk)": total - t["shards"] - t["warmup"],
        }
        return {"seconds": rows, "calls": dict(self.n)}


def apply_patch(path: str) -> None:
    """Run ``apply()`` of a Python file: monkeypatches that A/B a collector change without editing it."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("hf_patch", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.apply()


def run_hf(lm, qs, args, out: Path, patch: str | None = None) -> dict:
    from datasets.utils import logging as ds_logging

    if patch:
        apply_patch(patch)  # first: it may replace whole modules
    from hf_introspect.collection.run import collect
    from hf_introspect.config import CollectConfig

    ds_logging.disable_progress_bar()
    bd = Breakdown()
    bd.install(lm)
    cfg = CollectConfig(output_dir=str(out), num_questions=len(qs), batch_size=args.batch_size,
                        max_new_tokens=args.max_new_tokens)
    prof = None
    if args.cprofile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    t0 = time.perf_counter()
    dd = collect(cfg, lm=lm, questions=qs)
    wall = time.perf_counter() - t0
    if prof is not None:
        prof.disable()
        prof.dump_stats(args.cprofile)
    sample = {}
    for p in dd:
        d = dd[p].with_format("numpy", dtype=None)
        rows = d.select(range(min(4, len(d))))
        sample[p] = {"probs": [r.tolist() for r in rows["probs"]], "output_text": list(rows["output_text"]),
                     "layer10_last": [a[-1].astype("float32").tolist()[:8] for a in rows["activations_layer_10"]]}
    return {"wall_s": wall, "breakdown": bd.report(wall), "sample": sample}


# --------------------------------------------------------------------------- reference side
def run_ref(lm, qs, args, out: Path) -> dict:
    from reference_loop import reference_collect
    from hf_introspect.collection.prompt_dataset import build_prompt_dataset
    from hf_introspect.passes import PASSES, labels_for_pass
    from hf_introspect.collection.prompts import load_templates
    from hf_introspect.collection.readout import resolve_label_token_ids

    t0 = time.perf_counter()
    templates = load_templates(None)
    prompts = {p: build_prompt_dataset(qs, p, templates[p], lm.tokenizer, lm.use_chat_template, f"bench-ref-{p}")
               for p in PASSES}
    label_ids = {p: resolve_label_token_ids(lm.tokenizer, labels_for_pass(p)) for p in PASSES}
    res = reference_collect(lm.model, lm.tokenizer, prompts, out, label_ids=label_ids,
                            batch_size=args.batch_size, max_new_tokens=args.max_new_tokens)
    res["wall_s"] = time.perf_counter() - t0
    return res


# --------------------------------------------------------------------------- one run in a child
def run_child(side: str, lm, qs, args, workdir: Path) -> dict:
    out = workdir / f"{side}-{len(qs)}"
    result_path = workdir / f"{side}-{len(qs)}.json"
    log_path = workdir / f"{side}-{len(qs)}.log"
    shutil.rmtree(out, ignore_errors=True)
    load_before = load()
    rss_at_fork = vm_rss_kb()
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            if side == "ref":
                res = run_ref(lm, qs, args, out)
            else:
                res = run_hf(lm, qs, args, out, patch=args.hf_patch if side == "hf+patch" else None)
            res["activation_bytes_on_disk"] = dir_bytes(out)
            result_path.write_text(json.dumps(res))
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status, ru = os.wait4(pid, 0)
    if status != 0:
        print(open(log_path).read()[-4000:], file=sys.stderr)
        raise SystemExit(f"{side} run failed (see {log_path})")
    res = json.loads(result_path.read_text())
    res.update(side=side, n=len(qs), peak_rss_mb=ru.ru_maxrss / 1024, rss_at_fork_mb=rss_at_fork / 1024,
               load_before=load_before, load_after=load(), qps=len(qs) / res["wall_s"])
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num_questions", type=int, default=100)
    ap.add_argument("--rss_questions", type=int, default=40,
                    help="second size for the peak-RSS scaling check (0 = skip); default one shard")
    ap.add_argument("--batch_size", type=int, default=4)
    ap.add_argument("--max_new_tokens", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (see the module docstring)")
    ap.add_argument("--dtype", default="auto", help="model dtype for both sides (auto = float32 on a CPU)")
    ap.add_argument("--repeats", type=int, default=1, help="main-size runs per side, in ABBA order; median reported")
    ap.add_argument("--cprofile", default=None, help="also cProfile the (last) hf_introspect run into this file")
    ap.add_argument("--hf_patch", default=None,
                    help="a .py file whose apply() monkeypatches the collector: adds a third side 'hf+patch'")
    ap.add_argument("--no_reference", action="store_true", help="skip the reference side (A/B of --hf_patch only)")
    ap.add_argument("--workdir", default=None, help="where outputs go (default: a temp dir on /tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the outputs")
    ap.add_argument("--json", default=None, help="write all results to this JSON file")
    args = ap.parse_args(argv)

    import logging
    import warnings

    import numpy as np
    import torch

    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)
    from datasets.utils import logging as ds_logging

    from hf_introspect.models.load import load_model
    from hf_introspect.questions.sources import load_questions

    ds_logging.disable_progress_bar()
    print(f"load average at start {load()}  cpus {os.cpu_count()}  torch threads {args.threads}", flush=True)
    t0 = time.perf_counter()
    lm = load_model(None, dtype=args.dtype)
    qs_all = load_questions(None, num_questions=args.num_questions, seed=0)
    print(f"model {lm.source.model_name} ({lm.num_layers} layers, hidden {lm.hidden_size}, "
          f"{next(lm.model.parameters()).dtype}) + {len(qs_all)} questions loaded in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_collect_", dir="/tmp"))
    workdir.mkdir(parents=True, exist_ok=True)
    sides = ["hf"] + (["hf+patch"] if args.hf_patch else []) + ([] if args.no_reference else ["ref"])
    plan = []
    for r in range(args.repeats):  # ABBA: alternate the order to cancel drift in the machine's load
        plan += [(s, args.num_questions) for s in (sides if r % 2 == 0 else sides[::-1])]
    if args.rss_questions and not args.no_reference:
        plan += [("ref", args.rss_questions), ("hf", args.rss_questions)] if args.repeats % 2 else \
            [("hf", args.rss_questions), ("ref", args.rss_questions)]
    results = []
    print(f"\n{'side':<14}{'questions':>10}{'wall s':>9}{'q/s':>8}{'peak RSS MB':>13}{'RSS@fork MB':>13}"
          f"{'act. GB':>9}   load before -> after", flush=True)
    for side, n in plan:
        res = run_child(side, lm, qs_all.select(range(n)), args, workdir)
        results.append(res)
        name = {"hf": "hf_introspect", "hf+patch": "hf+patch", "ref": "reference"}[side]
        print(f"{name:<14}{n:>10}{res['wall_s']:>9.1f}{res['qps']:>8.3f}{res['peak_rss_mb']:>13.0f}"
              f"{res['rss_at_fork_mb']:>13.0f}{res['activation_bytes_on_disk'] / 1e9:>9.2f}   "
              f"{res['load_before']} -> {res['load_after']}", flush=True)

    def median(side, n, key):
        vals = [r[key] for r in results if r["side"] == side and r["n"] == n]
        return float(np.median(vals)) if vals else float("nan")

    N = args.num_questions
    summary = {}
    hf_q = median("hf", N, "qps")
    if not args.no_reference:
        ref_q = median("ref", N, "qps")
        summary["ratio_hf_vs_reference"] = hf_q / ref_q
        print(f"\nthroughput at {N} questions x 3 passes (median of {args.repeats}): hf_introspect {hf_q:.3f} q/s, "
              f"reference {ref_q:.3f} q/s -> ratio {hf_q / ref_q:.2f}x (target >= 2x)")
    if args.hf_patch:
        p_q = median("hf+patch", N, "qps")
        summary["ratio_patch_vs_hf"] = p_q / hf_q
        print(f"hf+patch ({args.hf_patch}) {p_q:.3f} q/s = {p_q / hf_q:.3f}x hf_introspect"
              + (f" = {p_q / ref_q:.2f}x reference" if not args.no_reference else ""))
    if args.rss_questions and not args.no_reference:
        S = args.rss_questions
        for side, name in (("hf", "hf_introspect"), ("ref", "reference")):
            a, b = median(side, S, "peak_rss_mb"), median(side, N, "peak_rss_mb")
            f = median(side, S, "rss_at_fork_mb")
            summary[f"peak_rss_mb_{side}"] = {S: a, N: b}
            print(f"peak RSS {name:<14} {S:>4} q: {a:7.0f} MB  {N:>4} q: {b:7.0f} MB  growth x{b / a:.2f} "
                  f"(above the {f:.0f} MB at fork: {a - f:.0f} -> {b - f:.0f} MB)")

    def breakdown_median(side):
        runs = [r for r in results if r["side"] == side and r["n"] == N]
        keys = list(runs[0]["breakdown"]["seconds"])
        return {k: float(np.median([r["breakdown"]["seconds"][k] for r in runs])) for k in keys}, runs[-1]

    bd, last = breakdown_median("hf")
    bdp = breakdown_median("hf+patch")[0] if args.hf_patch else None
    wall = float(np.median([r["wall_s"] for r in results if r["side"] == "hf" and r["n"] == N]))
    print(f"\nwhere hf_introspect's {wall:.1f} s went ({N} questions; median of {args.repeats}; "
          f"{last['breakdown']['calls']['prefill']} prefill and {last['breakdown']['calls']['decode']} decode forwards):"
          + ("   hf+patch" if bdp else ""))
    for k, v in bd.items():
        print(f"  {k:<68}{v:8.2f} s {100 * v / wall:5.1f} %" + (f"   {bdp[k]:8.2f} s" if bdp else ""))
    if not args.no_reference:
        ref_last = [r for r in results if r["side"] == "ref" and r["n"] == N][-1]
        print(f"reference's {ref_last['wall_s']:.1f} s: " + ", ".join(
            f"{k} {v:.1f}" for k, v in ref_last["timings"].items()) + f", prompts+other "
            f"{ref_last['wall_s'] - sum(ref_last['timings'].values()):.1f}")
        # Same work? Compare the first rows' readout and one layer's last-position activations.
        diffs = []
        for p in last["sample"]:
            a, b = last["sample"][p], ref_last["sample"][p]
            dp = float(np.max(np.abs(np.array(a["probs"]) - np.array(b["probs"]))))
            da = float(np.max(np.abs(np.array(a["layer10_last"]) - np.array(b["layer10_last"]))))
            same_text = sum(x == y for x, y in zip(a["output_text"], b["output_text"]))
            diffs.append(f"{p}: max|dprob| {dp:.1e}, max|d layer10| {da:.1e}, "
                         f"same output_text {same_text}/{len(a['output_text'])}")
        print("cross-check on the first 4 questions: " + "; ".join(diffs))
    if args.cprofile:
        import pstats

        print(f"\ncProfile of the last hf_introspect run ({args.cprofile}), top 15 by own time:")
        pstats.Stats(args.cprofile, stream=sys.stdout).sort_stats("tottime").print_stats(15)
    print(f"load average at end {load()}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results, "summary": summary,
                                               "load_end": load()}, indent=1))
    if not args.keep and not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
