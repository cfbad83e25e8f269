"""GPU throughput of hf_introspect.collect against the ceilings measured in the same script.

Self-contained, no downloads: a random-weight Llama-3-8B-shaped model (``LlamaConfig``: hidden 4096,
32 layers, 32 heads, 8 KV heads, intermediate 14336, vocab 128256) in bfloat16 on one GPU, the tiny
offline tokenizer (only token ids matter), and random prompts of ``--seq_len`` (192) tokens. One
prompt per question (``passes="mcq"``: every pass costs the same on random prompts), so questions/s
here is prompts/s. Measures, in this order:

  forward ceiling      plain ``net(ids, output_hidden_states=True, logits_to_keep=1)`` loop, batches
                       of ``--batch_size``, nothing copied off the GPU
  hf last, mnt 0       ``collect(positions="last", max_new_tokens=0)``      target >= 0.9x forward
  hf last, mnt 10      ``collect(positions="last")`` (default max_new_tokens=10), reported
  ... unmerged         the same with every micro-batch's continuation decoded on its own (A/B of
                       merged decoding; stage ``last1dec``)
  disk ceiling         ``np.save`` of as many bytes as the all-positions run writes, to the same
                       folder, page cache flushed before (``os.sync``, untimed) -> bytes/s and
                       the questions/s that allows (bytes per question = seq_len x 33 x 4096 x 2)
  hf all, mnt 0        ``collect(positions="all", max_new_tokens=0)``       target >= 0.85x disk
  hf all, mnt 10       ``collect(positions="all")``, reported
  reference            the seed README's ``generate()`` loop (benchmarks/reference_loop.py), all
                       positions, max_new_tokens 10, held in RAM, np.save at the end; hf all/mnt 10
                       over this is the ">= 2x" figure on a GPU

Run on the GPU machine (its image lacks ``datasets``, ``dill`` and ``multiprocess``; it has
pyarrow, pandas, xxhash, fsspec, huggingface_hub, accelerate, peft). Bring wheels for its Python
3.12 first, from a machine with network, into ``.whl/`` at the repo root (ignored through
``.git/info/exclude``; ~1 MB; the device tool must ``carry`` it)::

    pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux2014_x86_64 -d .whl datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19

then, from the repo root on the GPU machine::

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
    python3 benchmarks/gpu_bench.py                 # ~4 min on one H100 after the machine starts
    python benchmarks/gpu_bench.py --tiny           # CPU smoke test: tiny config, seconds

If ``import datasets`` still fails, the script itself tries ``pip install --no-index --no-deps``
from ``.whl/`` or ``wheels/``. Results are printed and saved as JSON (after every stage, so a run
cut short keeps what it measured) to ``$OUT/gpu_bench.json`` when ``$OUT`` is set (else
``--json``). Outputs go to ``--out_dir`` (default: a temp dir under $TMPDIR) and are deleted after
each run; the all-positions runs write ``--all_questions`` x ~52 MB (400 -> ~21 GB) each.
"""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")  # before anything imports tqdm: no progress bars in the log

import argparse
import contextlib
import glob
import io
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT)]


def ensure_datasets(wheels: list[Path]) -> None:
    try:
        import datasets  # noqa: F401
        return
    except ImportError:
        pass
    folder = next((w for w in wheels if w.is_dir() and glob.glob(str(w / "*.whl"))), None)
    if folder is None:
        raise SystemExit("`datasets` is not installed and no wheels/ folder was found; see this script's header")
    print(f"installing datasets from {folder}", flush=True)
    target = Path(tempfile.gettempdir()) / "gpu_bench_site"
    subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
                           "--target", str(target)] + sorted(glob.glob(str(folder / "*.whl"))))
    sys.path.insert(0, str(target))
    import importlib

    importlib.invalidate_caches()


def load():
    return tuple(round(x, 2) for x in os.getloadavg())


def build_model(tiny: bool, device):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if tiny:
        cfg = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
        dtype = torch.float32
    else:  # Llama-3-8B shape
        cfg = LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                          num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                          rms_norm_eps=1e-5, tie_word_embeddings=False)  # rope base irrelevant to speed
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id = 1, 2, 0  # the tiny tokenizer's ids
    torch.manual_seed(0)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device:
            net = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(old)
    net.generation_config.eos_token_id, net.generation_config.pad_token_id = 2, 0
    return net.eval(), dtype


def loaded_model(net, tok):
    from hf_introspect.models.load import LoadedModel, ModelSource

    name = "random-llama3-8b-shape" if net.config.hidden_size == 4096 else "random-tiny-llama"
    return LoadedModel(model=net, tokenizer=tok, source=ModelSource(name, None, name, "local"), checkpoint_id="base",
                       identity={"model": name, "random_seed": 0}, num_layers=net.config.num_hidden_layers,
                       hidden_size=net.config.hidden_size, use_chat_template=True)


def random_prompts(seq_len: int, vocab: int):
    """Patch for collector.build_prompt_dataset: the real prompt columns, with input_ids replaced by
    ``seq_len`` random token ids (seeded per question)."""
    import numpy as np

    from hf_introspect.collection.prompt_dataset import build_prompt_dataset

    def build(questions, pass_name, template, tokenizer, use_chat_template, fingerprint):
        ds = build_prompt_dataset(questions, pass_name, template, tokenizer, use_chat_template, fingerprint)

        def fn(batch, idx):
            ids = [np.random.default_rng(i).integers(3, vocab, size=seq_len).tolist() for i in idx]
            return {"input_ids": ids, "seq_len": [seq_len] * len(idx),
                    "question_token_span": [[1, min(seq_len, 64)]] * len(idx)}

        return ds.map(fn, batched=True, with_indices=True, keep_in_memory=True, features=ds.features,
                      new_fingerprint=fingerprint + "-random")

    return build


def sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def forward_ceiling(net, n: int, batch: int, seq_len: int, vocab: int, device) -> float:
    import torch

    g = torch.Generator().manual_seed(1)
    batches = [torch.randint(3, vocab, (min(batch, n - lo), seq_len), generator=g) for lo in range(0, n, batch)]
    with torch.inference_mode():
        net(input_ids=batches[0].to(device), output_hidden_states=True, logits_to_keep=1)  # warm-up
        sync(device)
        t = time.perf_counter()
        for ids in batches:
            out = net(input_ids=ids.to(device), output_hidden_states=True, logits_to_keep=1)
            del out
        sync(device)
    return n / (time.perf_counter() - t)


def disk_ceiling(folder: Path, nbytes: int, chunk: int = 1 << 30) -> tuple[float, float]:
    """np.save of nbytes of float16 in 1 GiB arrays (no fsync) and the same with fsync; bytes/s."""
    import numpy as np

    chunk = max(1 << 20, min(chunk, nbytes))
    arr = np.random.default_rng(0).standard_normal(chunk // 2, dtype=np.float32).astype(np.float16)
    rates = []
    for do_fsync in (False, True):
        folder.mkdir(parents=True, exist_ok=True)
        os.sync()
        t = time.perf_counter()
        written = 0
        i = 0
        while written < nbytes:
            with open(folder / f"disk-{i}.npy", "wb") as f:
                np.save(f, arr)
                if do_fsync:
                    f.flush()
                    os.fsync(f.fileno())
            written += arr.nbytes
            i += 1
        rates.append(written / (time.perf_counter() - t))
        shutil.rmtree(folder)
    return rates[0], rates[1]


class _Capture:
    """Keeps the collector's log lines (the maps' summary, ``inference in map: ...``, says which side bounded the run)."""

    def __init__(self):
        import logging

        self.lines: list[str] = []
        self.handler = logging.Handler()
        self.handler.emit = lambda record: self.lines.append(record.getMessage())
        self.logger = logging.getLogger("hf_introspect")

    def __enter__(self):
        import logging

        self.old = self.logger.level
        self.logger.setLevel(logging.INFO)
        self.logger.addHandler(self.handler)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self.old)


def run_collect(lm, qs, out: Path, *, positions: str, max_new_tokens: int, batch: int, save_every: int) -> dict:
    from hf_introspect.collection.run import collect
    from hf_introspect.config import CollectConfig

    shutil.rmtree(out, ignore_errors=True)
    os.sync()
    cfg = CollectConfig(output_dir=str(out), passes="mcq", positions=positions, max_new_tokens=max_new_tokens,
                        batch_size=batch, save_every=save_every, force=True)
    log = io.StringIO()  # the plan collect prints to stderr; shown only if the run fails
    t = time.perf_counter()
    try:
        with contextlib.redirect_stderr(log), _Capture() as cap:
            dd = collect(cfg, lm=lm, questions=qs)
    except BaseException:
        print(log.getvalue()[-3000:], file=sys.stderr)
        raise
    wall = time.perf_counter() - t
    nbytes = sum(p.stat().st_size for p in out.rglob("*.arrow"))
    rows = len(dd["mcq"])
    first = dd["mcq"].with_format("numpy", dtype=None)[0]
    check = {"probs_sum": float(first["probs"].sum()), "finite": bool(all(
        np_isfinite(first[c]) for c in dd["mcq"].column_names if c.startswith("activations_")))}
    shutil.rmtree(out, ignore_errors=True)
    thread = next((line for line in cap.lines if line.startswith("inference in map")), "")
    return {"questions": rows, "wall_s": wall, "qps": rows / wall, "bytes": nbytes, "bytes_per_s": nbytes / wall,
            "save_every": save_every, "pipeline": thread, "check_first_row": check}


def np_isfinite(a) -> bool:
    import numpy as np

    return bool(np.isfinite(np.asarray(a, dtype=np.float32)).all())


def run_reference(lm, qs, out: Path, *, batch: int, seq_len: int, vocab: int) -> dict:
    from reference_loop import reference_collect

    from hf_introspect.collection.prompts import load_templates
    from hf_introspect.collection.readout import resolve_label_token_ids

    shutil.rmtree(out, ignore_errors=True)
    os.sync()
    prompts = {"mcq": random_prompts(seq_len, vocab)(qs, "mcq", load_templates(None)["mcq"], lm.tokenizer, True,
                                                     "gpu-bench-ref")}
    t = time.perf_counter()
    res = reference_collect(lm.model, lm.tokenizer, prompts, out,
                            label_ids={"mcq": resolve_label_token_ids(lm.tokenizer, ("A", "B", "C", "D"))},
                            batch_size=batch, max_new_tokens=10)
    wall = time.perf_counter() - t
    shutil.rmtree(out, ignore_errors=True)
    return {"questions": len(qs), "wall_s": wall, "qps": len(qs) / wall, "timings": res["timings"],
            "bytes": res["activation_bytes"]}


def sync_check(net, batch: int, seq_len: int, vocab: int) -> dict:
    """Which operations inside one ``launch_batch`` (prompt forward, gather, readout, copies; no
    continuation) make the host wait for the GPU: ``torch.cuda.set_sync_debug_mode("warn")``
    names each. Every such wait idles the GPU while the host launches the next batch."""
    import warnings

    import numpy as np
    import torch

    from hf_introspect.collection.inference import PassSpec, launch_batch

    seqs = [list(np.random.default_rng(r).integers(3, vocab, size=seq_len - (r % 3))) for r in range(batch)]
    spec = PassSpec(pad_id=0, label_ids={"A": [10], "B": [11]}, layers=list(range(net.config.num_hidden_layers + 1)))
    kw = dict(spec=spec, keep_positions=[np.array([len(s) - 1]) for s in seqs])
    launch_batch(net, seqs, **kw).result()  # warm-up
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            pending = launch_batch(net, seqs, **kw)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        pending.result()
    where = [f"{'/'.join(Path(w.filename).parts[-2:])}:{w.lineno}" for w in caught]
    return {"count": len(where), "where": where[:12]}


def filesystem(path: Path) -> dict:
    """The output folder's mount (type, device) and free space: the disk ceiling depends on it."""
    best = ("", "", "")
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            dev, mnt, fstype = line.split()[:3]
            if str(path.resolve()).startswith(mnt) and len(mnt) >= len(best[1]):
                best = (dev, mnt, fstype)
    usage = shutil.disk_usage(path)
    return {"device": best[0], "mount": best[1], "type": best[2], "free_gb": usage.free / 1e9,
            "total_gb": usage.total / 1e9}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny config, few questions (CPU smoke test)")
    ap.add_argument("--batch_size", type=int, default=16)
    ap.add_argument("--seq_len", type=int, default=192)
    ap.add_argument("--last_questions", type=int, default=1600,
                    help="questions for the forward ceiling and the last-position runs (~10 s each on an H100)")
    ap.add_argument("--all_questions", type=int, default=400, help="questions for the all-position runs")
    ap.add_argument("--ref_questions", type=int, default=64, help="questions for the reference loop (0 = skip)")
    ap.add_argument("--last_mnt", default="0,10", help="max_new_tokens values for the last-position runs")
    ap.add_argument("--mnt10_questions", type=int, default=None,
                    help="questions for the runs with max_new_tokens > 0 (default: as many as the mnt-0 run)")
    ap.add_argument("--all_mnt", default="0,10", help="max_new_tokens values for the all-position runs")
    ap.add_argument("--save_every", type=int, default=4, help="batches per shard, last-position runs (4 x 16 = 64 rows)")
    ap.add_argument("--all_save_every", type=int, default=2,
                    help="batches per shard, all-position runs (2 x 16 = 32 rows = 1.7 GB: the first shard's "
                         "inference, which nothing overlaps, stays short next to the run)")
    ap.add_argument("--stages", default="syncs,forward,last,last1dec,disk,all,all1,reference",
                    help="comma-separated subset to run (all1: all positions with one shard writer; last1dec: "
                         "last positions, max_new_tokens 10, each micro-batch decoded on its own; both for A/B)")
    ap.add_argument("--out_dir", default=None, help="folder on the output disk (default: a temp dir)")
    ap.add_argument("--wheels", default=None, help="wheel folder for datasets & co (default: .whl/ or wheels/)")
    ap.add_argument("--json", default=None, help="results file (default: $OUT/gpu_bench.json when $OUT is set)")
    args = ap.parse_args(argv)
    if args.tiny:
        args.seq_len, args.last_questions, args.all_questions = min(args.seq_len, 32), 16, 8
        args.ref_questions = min(args.ref_questions, 8)
        args.batch_size = min(args.batch_size, 4)
    stages = set(args.stages.split(","))

    ensure_datasets([Path(args.wheels)] if args.wheels else
                    [Path.cwd() / ".whl", Path.cwd() / "wheels", ROOT / ".whl", ROOT / "wheels"])
    import logging
    import warnings

    import torch
    from datasets.utils import logging as ds_logging

    import hf_introspect.collection.run as collector
    from hf_introspect.collection import estimate
    from hf_introspect.questions.sources import load_questions
    from hf_introspect.testing import tiny_tokenizer

    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    ds_logging.disable_progress_bar()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    info = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__, "python": platform.python_version(), "cpus": os.cpu_count(),
            "args": vars(args), "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    import datasets
    import pyarrow
    import transformers

    info.update(transformers=transformers.__version__, datasets=datasets.__version__, pyarrow=pyarrow.__version__)
    print(f"{info['device']}; torch {info['torch']}, transformers {info['transformers']}, datasets "
          f"{info['datasets']}, pyarrow {info['pyarrow']}; {info['cpus']} CPUs; load {load()}", flush=True)

    json_path = args.json or (os.path.join(os.environ["OUT"], "gpu_bench.json") if os.environ.get("OUT") else None)
    res: dict = {"info": info, "errors": {}}

    def save():
        if device.type == "cuda":
            res["info"]["max_gpu_memory_gb"] = torch.cuda.max_memory_allocated() / 1e9
        if json_path:
            Path(json_path).write_text(json.dumps(res, indent=1, default=str))

    t = time.perf_counter()
    net, dtype = build_model(args.tiny, device)
    vocab = net.config.vocab_size
    tok = tiny_tokenizer()
    tok.padding_side = "left"
    lm = loaded_model(net, tok)
    collector.build_prompt_dataset = random_prompts(args.seq_len, vocab)
    n_q = max(args.last_questions, args.all_questions, args.ref_questions)
    qs_all = load_questions(None, num_questions=n_q, seed=0)
    print(f"model {lm.source.model_name} ({dtype}, {sum(p.numel() for p in net.parameters()) / 1e9:.2f} B params) "
          f"built in {time.perf_counter() - t:.1f} s", flush=True)
    out_root = Path(args.out_dir) if args.out_dir else Path(tempfile.mkdtemp(prefix="gpu_bench_"))
    out_root.mkdir(parents=True, exist_ok=True)
    info["filesystem"] = filesystem(out_root)
    print(f"output folder {out_root}: {info['filesystem']}", flush=True)
    B = args.batch_size
    per_q = args.seq_len * (net.config.num_hidden_layers + 1) * net.config.hidden_size * 2  # fp16 bytes

    def show(name, r, extra=""):
        print(f"{name:<26}{r['questions']:>6} q {r['wall_s']:>8.2f} s {r['qps']:>9.2f} q/s {extra}  load {load()}",
              flush=True)
        if r.get("pipeline"):
            print(f"{'':<26}{r['pipeline']}", flush=True)

    @contextlib.contextmanager
    def stage(name):
        try:
            yield
        except Exception as exc:  # keep the other stages' figures
            import traceback

            res["errors"][name] = traceback.format_exc()[-3000:]
            print(f"{name} FAILED: {exc!r}", flush=True)
        finally:
            save()

    try:
        if "syncs" in stages and device.type == "cuda":
            with stage("syncs"):
                res["host_syncs_in_launch_batch"] = sync_check(net, B, args.seq_len, vocab)
                print(f"{'host syncs (launch_batch)':<26}{res['host_syncs_in_launch_batch']}", flush=True)
        if "forward" in stages or "last" in stages:
            with stage("forward"):
                res["forward_ceiling_qps"] = forward_ceiling(net, args.last_questions, B, args.seq_len, vocab, device)
                print(f"{'forward ceiling':<26}{args.last_questions:>6} q {'':>10} "
                      f"{res['forward_ceiling_qps']:>9.2f} q/s", flush=True)
        if "last" in stages:
            for mnt in [int(x) for x in args.last_mnt.split(",")]:
                n = args.last_questions if mnt == 0 or not args.mnt10_questions else args.mnt10_questions
                qs = qs_all.select(range(n))
                with stage(f"hf_last_mnt{mnt}"):
                    r = run_collect(lm, qs, out_root / "run", positions="last", max_new_tokens=mnt, batch=B,
                                    save_every=args.save_every)
                    r["ratio_vs_forward"] = r["qps"] / res["forward_ceiling_qps"]
                    res[f"hf_last_mnt{mnt}"] = r
                    show(f"hf last, mnt {mnt}", r, f"{r['ratio_vs_forward']:.2f}x forward ceiling")
        if "last1dec" in stages:  # A/B of merged decoding: each micro-batch decodes on its own
            n = args.mnt10_questions or args.last_questions
            with stage("hf_last_mnt10_unmerged"):
                real = dict(collector.DECODE_MAX_ROWS)
                collector.DECODE_MAX_ROWS.clear()  # .get(device, 1): no deferral
                try:
                    r = run_collect(lm, qs_all.select(range(n)), out_root / "run", positions="last", max_new_tokens=10,
                                    batch=B, save_every=args.save_every)
                finally:
                    collector.DECODE_MAX_ROWS.update(real)
                r["ratio_vs_forward"] = r["qps"] / res["forward_ceiling_qps"]
                res["hf_last_mnt10_unmerged"] = r
                merged = res.get("hf_last_mnt10", {}).get("qps")
                show("hf last, mnt 10, unmerged", r, f"{r['ratio_vs_forward']:.2f}x forward ceiling"
                     + (f"; merged decoding is {merged / r['qps']:.2f}x this" if merged else ""))
        if "disk" in stages or "all" in stages:
            with stage("disk"):
                nbytes = args.all_questions * per_q
                rate, rate_fsync = disk_ceiling(out_root / "disk", nbytes)
                res["disk"] = {"bytes": nbytes, "bytes_per_s": rate, "bytes_per_s_fsync": rate_fsync,
                               "bytes_per_question": per_q, "qps_bound": rate / per_q,
                               "qps_bound_fsync": rate_fsync / per_q}
                print(f"{'disk ceiling (np.save)':<26}{nbytes / 1e9:>6.1f} GB {rate / 1e9:.2f} GB/s "
                      f"({rate_fsync / 1e9:.2f} GB/s with fsync) -> {rate / per_q:.2f} q/s "
                      f"({rate_fsync / per_q:.2f} with fsync) at {per_q / 1e6:.1f} MB/question", flush=True)
        if "all" in stages:
            qs = qs_all.select(range(args.all_questions))
            for mnt in [int(x) for x in args.all_mnt.split(",")]:
                with stage(f"hf_all_mnt{mnt}"):
                    r = run_collect(lm, qs, out_root / "run", positions="all", max_new_tokens=mnt, batch=B,
                                    save_every=args.all_save_every)
                    r["ratio_vs_disk"] = r["qps"] / res["disk"]["qps_bound"]
                    r["ratio_vs_disk_fsync"] = r["qps"] / res["disk"]["qps_bound_fsync"]
                    res[f"hf_all_mnt{mnt}"] = r
                    show(f"hf all, mnt {mnt}", r, f"{r['ratio_vs_disk']:.2f}x disk bound "
                         f"({r['ratio_vs_disk_fsync']:.2f}x the fsync bound), {r['bytes_per_s'] / 1e9:.2f} GB/s")
        if "all1" in stages and "disk" in res:
            with stage("hf_all_mnt0_1writer"):
                real = collector.writer_count  # the writers (run.py) and the plan's figure (estimate.py)
                collector.writer_count = estimate.writer_count = lambda device, cfg: 1
                try:
                    r = run_collect(lm, qs_all.select(range(args.all_questions)), out_root / "run", positions="all",
                                    max_new_tokens=0, batch=B, save_every=args.all_save_every)
                finally:
                    collector.writer_count = estimate.writer_count = real
                r["ratio_vs_disk"] = r["qps"] / res["disk"]["qps_bound"]
                r["ratio_vs_disk_fsync"] = r["qps"] / res["disk"]["qps_bound_fsync"]
                res["hf_all_mnt0_1writer"] = r
                show("hf all, mnt 0, 1 writer", r, f"{r['ratio_vs_disk']:.2f}x disk bound "
                     f"({r['ratio_vs_disk_fsync']:.2f}x the fsync bound), {r['bytes_per_s'] / 1e9:.2f} GB/s")
        if "reference" in stages and args.ref_questions:
            with stage("reference"):
                r = run_reference(lm, qs_all.select(range(args.ref_questions)), out_root / "ref", batch=B,
                                  seq_len=args.seq_len, vocab=vocab)
                res["reference_all_mnt10"] = r
                show("reference generate loop", r)
                if "hf_all_mnt10" in res:
                    res["ratio_hf_all_mnt10_vs_reference"] = res["hf_all_mnt10"]["qps"] / r["qps"]
                    print(f"{'':<26}hf all/mnt 10 is {res['ratio_hf_all_mnt10_vs_reference']:.2f}x this", flush=True)
    finally:
        shutil.rmtree(out_root, ignore_errors=True)
        save()

    def fmt(key, ratio):
        return f"{res[key][ratio]:.2f}x" if key in res else "not measured"

    print(f"\ntargets: hf last/mnt 0 >= 0.9x forward ceiling: {fmt('hf_last_mnt0', 'ratio_vs_forward')}; "
          f"hf all/mnt 0 >= 0.85x disk bound: {fmt('hf_all_mnt0', 'ratio_vs_disk')} "
          f"({fmt('hf_all_mnt0', 'ratio_vs_disk_fsync')} of the fsync bound)")
    if json_path:
        print(f"results saved to {json_path}")
    return 1 if res["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
