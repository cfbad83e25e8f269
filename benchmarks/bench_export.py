"""Parquet export speed: `hf-introspect export` (hf_introspect.runs.hub) vs `Dataset.to_parquet` defaults.

`Dataset.to_parquet` with datasets' defaults is what `push_to_hub` writes. Both encode the same run
(every split); speed = Arrow bytes of the run / wall time. Prints MB/s of each and the ratio.

    python benchmarks/bench_export.py                 # builds a run (tiny random Llama, hidden 576)
    python benchmarks/bench_export.py --run RUN_DIR   # or measures an existing run

The built run: 8 blocks x hidden 576 (SmolLM2-135M's width), all positions, TriviaMC questions
(../shared/data) or synthetic ones, ~0.7 GB of float16 activations at --questions 96.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TRIVIAMC = HERE.parents[1] / "shared" / "data" / "TriviaMC.jsonl"


def build_run(folder: Path, n_questions: int) -> Path:
    from datasets.utils import logging as ds_logging

    from hf_introspect.collection.run import collect
    from hf_introspect.config import CollectConfig
    from hf_introspect.testing import save_tiny_model

    ds_logging.disable_progress_bar()
    model = save_tiny_model(folder / "model", num_layers=8, hidden=576)
    if TRIVIAMC.is_file():
        from hf_introspect.questions.sources import load_questions

        questions = load_questions(str(TRIVIAMC), num_questions=n_questions, seed=0)
    else:
        from datasets import Dataset, Features

        from hf_introspect.schema import question_features

        rows = [{"question_id": f"q{i}", "question_text": f"Which of these is item number {i} in the list?",
                 "options": {k: f"option {k} {i}" for k in "ABCD"}, "correct_answer_letter": "ABCD"[i % 4],
                 "question_source": "synthetic", "option_source_index": [0, 1, 2, 3]} for i in range(n_questions)]
        questions = Dataset.from_list(rows, features=Features(question_features()))
    run = folder / "run"
    t = time.perf_counter()
    collect(CollectConfig(output_dir=str(run), model=str(model), batch_size=8, save_every=4, max_new_tokens=0),
            questions=questions)
    print(f"built {run} in {time.perf_counter() - t:.0f}s", file=sys.stderr)
    return run


def arrow_bytes(run: Path) -> int:
    return sum(f.stat().st_size for f in run.glob("*/data-*.arrow"))


def bench_defaults(run: Path, out: Path) -> float:
    from datasets import load_from_disk
    from datasets.utils import logging as ds_logging

    ds_logging.disable_progress_bar()
    dd = load_from_disk(str(run))
    t = time.perf_counter()
    for name, split in dd.items():
        split.to_parquet(str(out / f"{name}.parquet"))
    return time.perf_counter() - t


def bench_ours(run: Path, out: Path, **kw) -> float:
    from hf_introspect.runs.hub import export_hub_layout

    t = time.perf_counter()
    export_hub_layout(run, out, **kw)
    return time.perf_counter() - t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default=None, help="existing run folder (default: build one)")
    ap.add_argument("--questions", type=int, default=96, help="questions in the built run")
    ap.add_argument("--repeats", type=int, default=2, help="best of N for each method")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench_export_"))
    try:
        run = Path(args.run) if args.run else build_run(tmp, args.questions)
        size = arrow_bytes(run)
        results = {}
        cases = [("datasets to_parquet defaults", bench_defaults, {}),
                 ("hf_introspect export, 1 thread", bench_ours, {"workers": 1}),
                 ("hf_introspect export (zstd, threads)", bench_ours, {}),
                 ("hf_introspect export (no compression, threads)", bench_ours, {"compression": "none"})]
        for label, fn, kw in cases:
            best = float("inf")
            for r in range(args.repeats):
                out = tmp / f"out-{len(results)}-{r}"
                out.mkdir()
                best = min(best, fn(run, out, **kw))
                written = sum(f.stat().st_size for f in out.rglob("*.parquet"))
                shutil.rmtree(out)
            results[label] = (size / best / 1e6, written)
        base = results["datasets to_parquet defaults"][0]
        print(f"run: {run} ({size / 1e6:.0f} MB of Arrow, {os.cpu_count()} CPUs)")
        for label, (rate, written) in results.items():
            print(f"{label:48s} {rate:7.0f} MB/s  {rate / base:4.1f}x  parquet {written / 1e6:6.0f} MB")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
