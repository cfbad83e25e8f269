"""`hf-introspect collect` / `scripts/collect_activations.py`: the seed's flags and more."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

logger = logging.getLogger("hf_introspect")


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default=None, help="Hub id, local folder or .gguf file (default: embedded SmolLM2-135M-Instruct)")
    g.add_argument("--model_type", default="base", choices=["base", "finetuned"],
                   help="finetuned: apply the --lora_checkpoint adapter on top of --model")
    g.add_argument("--lora_checkpoint", default=None, help="PEFT LoRA adapter folder (with --model_type finetuned)")
    g.add_argument("--dtype", default="auto", help="auto (float32 on CPU, bfloat16 on GPU) | float32 | float16 | bfloat16")
    g.add_argument("--device_map", default=None, help="e.g. auto: spread one model over all visible GPUs")
    g.add_argument("--allow_missing_weights", action="store_true",
                   help="go on when the checkpoint lacks weights (initialised at random) or has unused ones "
                        "(default: refuse; the weights not loaded are recorded in run_config.json)")
    g = p.add_argument_group("questions")
    g.add_argument("--questions", default=None,
                   help="PATH.jsonl|.json|.csv|.parquet or hub:REPO[:CONFIG][:SPLIT] (default: built-in bank)")
    g.add_argument("--num_questions", type=int, default=None, help="seeded sample of N questions (default: all)")
    g.add_argument("--seed", type=int, default=0, help="seed of the question sample, option shuffling and sampling")
    g.add_argument("--shuffle_options", dest="shuffle_options", action="store_true", default=None,
                   help="shuffle options with the seed (default: only sources with the answer in a fixed slot)")
    g.add_argument("--no_shuffle_options", dest="shuffle_options", action="store_false", help="keep the source order")
    g.add_argument("--question_ids", default=None, help="file of exact question ids to use (one per line)")
    g.add_argument("--question_format", default=None, help="schema of a local file, e.g. cais/mmlu")
    g.add_argument("--question_columns", default=None,
                   help="question=COL,answer=COL,options=COL1,COL2,COL3,COL4[,id=COL] for files in another layout")
    g = p.add_argument_group("passes")
    g.add_argument("--passes", default="mcq,self_conf,other_conf", help="comma-separated prompt passes to run")
    g.add_argument("--prompt_templates", default=None, help="JSON file overriding the templates per pass")
    g.add_argument("--max_new_tokens", type=int, default=10, help="continuation length for output_text (0 allowed)")
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    g.add_argument("--top_p", type=float, default=1.0, help="nucleus sampling p of the continuation (1 = off)")
    g = p.add_argument_group("output and storage")
    g.add_argument("--output_dir", required=True, help="run folder to write (a rerun resumes it; required, no default)")
    g.add_argument("--batch_size", default="4", help="prompts per forward pass, or auto")
    g.add_argument("--save_every", type=int, default=10, help="batches per shard (the unit of saving and resume)")
    g.add_argument("--layers", default="all", help="all | 0,8,16-20 | ::4 (0 = embeddings)")
    g.add_argument("--positions", default="all", help="all | last | last:N | answer | question | question+last | marks (question end, options end, readout)")
    g.add_argument("--act_dtype", default="float16", choices=["float16", "float32"],
                   help="dtype of the stored activations")
    g.add_argument("--overwrite", action="store_true", help="replace an existing run in --output_dir")
    g.add_argument("--dry_run", action="store_true", help="print the plan (sizes, free disk, time) and write nothing")
    g.add_argument("--force", action="store_true", help="start even if the plan says the disk is too small")
    g.add_argument("--skip_long", action="store_true",
                   help="leave out questions whose prompt exceeds the model's context (default: refuse the run)")
    g.add_argument("--no_share_prefix", dest="share_prefix", action="store_false",
                   help="run every prompt whole instead of computing the prompts' common opening tokens once per pass")


def config_from_args(args: argparse.Namespace):
    from ..config import CollectConfig

    kwargs = {name: getattr(args, name) for name in CollectConfig.field_names() if hasattr(args, name)}
    return CollectConfig(**kwargs)


def _folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)  # validates every flag before anything heavy is imported
    from ..collection.run import collect

    start = time.perf_counter()
    ds = collect(cfg)
    from accelerate import PartialState

    if not PartialState().is_main_process:
        return 0
    if cfg.dry_run:
        print("dry run: nothing was written")
        return 0
    elapsed = time.perf_counter() - start
    out = Path(cfg.output_dir)
    rows = {name: len(split) for name, split in ds.items()}
    size = _folder_size(out)
    print(f"wrote {out} in {elapsed:.1f}s: " + ", ".join(f"{k} {v} rows" for k, v in rows.items())
          + f"; {size / 1e6:.1f} MB on disk")
    mcq = ds["mcq"] if "mcq" in ds else None
    if mcq is not None and len(mcq):
        acc = sum(mcq["is_correct"]) / len(mcq)
        print(f"mcq accuracy {acc:.1%} on {len(mcq)} questions")
    print(f"load it with: datasets.load_from_disk({str(out)!r})")
    return 0


def main(argv: list[str] | None = None) -> int:
    from ..cli import standalone_main

    return standalone_main("collect", "collect_activations.py",
                           "Collect activations and behaviour for the three passes.", argv)


if __name__ == "__main__":
    sys.exit(main())
