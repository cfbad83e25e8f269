"""Collection: questions -> three prompt passes -> sharded, resumable shards, each one ``Dataset.map``.

:func:`collect` reads top to bottom as the data flow:

1. questions (``questions/``) -> one prompt dataset per pass (``prompt_dataset.py``), over-long
   prompts refused or dropped (``context_check.py``);
2. per pass a :class:`~.pass_context.PassContext` (labels, layers, shared prefix, micro-batch);
3. the plan: sizes, memory, a timed warm-up batch, the hand-off pairs (``estimate.py``,
   ``handoff.py``), and the output folder prepared (``storage.py``);
4. the shards (:func:`_write_shards`): one ``Dataset.map`` per shard (``writers.py``) whose
   function computes the shard (``shards.py`` -> ``backoff.py`` -> ``inference.py`` /
   ``decode.py``) and builds its Arrow table (``shard_table.py``); the maps run on worker
   threads, the next one computing while this one writes (``pipeline.py``);
5. every split finalised once all its shards exist, then the run (``storage.py``).

Where inference runs, and what ``Dataset.map`` does: inside map. Each shard is ONE
``Dataset.map(batched=True, batch_size=rows of the shard)`` whose function runs that shard's
inference (micro-batches, merged decoding, hand-off exports) and returns the shard's table. map
gives each shard its atomic write (its ``cache_file_name`` is a temp name that
``integrity.commit_shard`` renames to the shard's final file, so a shard exists whole or not at
all), the features' encoding and the fingerprint; a rerun skips the shards that exist. map
calls its function and writes the result on the same thread, so ``writer_count + 1`` maps run
at once on worker threads (``pipeline.MapScheduler``): the device computes the shards one after
the other in job order (a turn per map) while the previous shards are written, and each map
holds one of that many host buffer sets, so memory stays bounded.

Per pass, the prompt dataset is cut into shards of ``save_every * batch_size`` rows. Under
``accelerate launch`` the shards are dealt round-robin to processes (shard i -> rank i % N), so a
resumed run may use a different number of processes than the first attempt.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from datasets import Dataset, DatasetDict, load_from_disk
from datasets.utils import logging as ds_logging

from ..config import CollectConfig, parse_layers
from ..errors import UserError
from .run_lock import holding_run_lock
from .multi_process import check_device_map, deal_shards, idle_ranks_hint, process_state
from ..models.load import LoadedModel, load_model
from ..passes import PROMPT_TYPES, labels_for_pass
from ..schema import pass_features
from .context_check import check_long, find_long, max_positions
from .estimate import plan_and_prepare
from .handoff import export_again, plan_export, shared_prefix_ids
from .pass_context import DECODE_MAX_ROWS, PassContext, decode_kv_budget, eos_ids_of
from .pipeline import HostBuffers, MapScheduler, ShardJob, ShardTurn
from .planning import Plan
from .prefix import ShardHandoff
from .prompt_dataset import build_prompt_dataset
from .prompts import load_templates
from .readout import resolve_label_token_ids
from .run_config import RESIDUAL_DOC, build_run_config
from .shards import ShardData, column_values, compute_shard
from .storage import check_output_dir, finalize_run, finalize_split, shard_path, split_is_final
from .writers import map_shard, writer_count

logger = logging.getLogger("hf_introspect")


@holding_run_lock
def collect(cfg: CollectConfig, *, lm: LoadedModel | None = None, questions: Dataset | None = None) -> DatasetDict | Plan:
    """Run every pass for every question and write the dataset to ``cfg.output_dir``.

    Prints a plan (rows, tokens, bytes, free disk, estimated time) first; with ``cfg.dry_run`` it
    returns that :class:`Plan` and writes nothing. ``lm`` and ``questions`` may be passed in
    (tests, notebooks) to skip loading them again.

    Example:
        >>> ds = collect(CollectConfig(output_dir="test_run_base", num_questions=10, batch_size=4))  # doctest: +SKIP
        >>> ds["mcq"].features["activations_layer_30"]                                              # doctest: +SKIP
        Array2D(shape=(None, 576), dtype='float16')
    """
    state = _process_state()
    check_device_map(cfg.device_map, state.num_processes)
    out = Path(cfg.output_dir)
    # Cheap checks first: a conflicting folder is refused before minutes of model loading.
    check_output_dir(out, cfg.identity(), overwrite=cfg.overwrite, passes=cfg.passes)
    questions = _load_question_set(cfg, questions)
    templates = load_templates(cfg.prompt_templates)
    if lm is None:
        lm = load_model(cfg.model, lora_checkpoint=cfg.lora_checkpoint, dtype=cfg.dtype,
                        device=None if cfg.device_map else state.device, device_map=cfg.device_map,
                        allow_missing_weights=cfg.allow_missing_weights)
    layers = parse_layers(cfg.layers, lm.num_layers + 1)
    label_ids = {p: resolve_label_token_ids(lm.tokenizer, labels_for_pass(p)) for p in cfg.passes}
    n_shards = -(-len(questions) // cfg.shard_rows)
    hint = idle_ranks_hint(len(questions), cfg.nominal_batch_size, cfg.save_every, state.num_processes)
    if hint and state.is_main_process:
        logger.warning(hint)
    shard_plan = {"rows_per_shard": cfg.shard_rows, "num_shards": n_shards}
    device = next(lm.model.parameters()).device
    run = RunSetup(cfg=cfg, state=state, out=out, questions=questions, lm=lm, layers=layers, label_ids=label_ids,
                   n_shards=n_shards, device=device,
                   run_config=build_run_config(cfg, lm, templates, layers, label_ids, questions, shard_plan),
                   micro_batch=(cfg.shard_rows if device.type == "cuda" else 8) if cfg.batch_size == "auto"
                   else cfg.nominal_batch_size)

    progress_was_on = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()  # our own bars, one per pass, instead of one per map call
    t_start = time.perf_counter()
    try:
        prompts = {p: build_prompt_dataset(questions, p, templates[p], lm.tokenizer, lm.use_chat_template,
                                           fingerprint=f"{run.run_id}-{p}-prompts") for p in cfg.passes}
        prompts, run = _fit_context(run, prompts, templates)  # over-long prompts: refused, or dropped
        questions = run.questions
        buffers = HostBuffers(len(layers), lm.hidden_size, cfg.act_dtype, pin=device.type == "cuda")
        contexts = {p: PassContext(cfg, lm, p, labels_for_pass(p), label_ids[p], layers, eos_ids_of(lm),
                                   run.micro_batch, buffers, decode_max_rows=DECODE_MAX_ROWS.get(device.type, 1),
                                   decode_kv_budget=decode_kv_budget(device),
                                   prefix_ids=shared_prefix_ids(cfg, prompts[p])) for p in cfg.passes}
        plan = plan_and_prepare(run, prompts, contexts)
        if cfg.dry_run:
            return plan
        try:
            _write_shards(run, prompts, contexts, t_start)
        finally:
            buffers.release()
    finally:
        if progress_was_on:
            ds_logging.enable_progress_bar()
    if state.is_main_process:
        finalize_run(out, cfg.passes)
    state.wait_for_everyone()
    return load_from_disk(str(out))


def _fit_context(run: "RunSetup", prompts: dict[str, Dataset], templates: dict) -> tuple[dict[str, Dataset], "RunSetup"]:
    """Refuse prompts longer than the model's context, or with ``--skip_long`` drop their questions
    from every pass (a question is collected in all passes or none) and record them."""
    from dataclasses import replace

    first = next(iter(prompts.values()))
    found = find_long({p: column_values(ds, "seq_len") for p, ds in prompts.items()}, column_values(first, "question_id"),
                      max_positions(run.lm.model.config), run.cfg.max_new_tokens)
    keep = check_long(found, run.cfg.skip_long)
    if keep is None:
        return prompts, run
    questions = run.questions.select(keep).flatten_indices(keep_in_memory=True)
    prompts = {p: ds.select(keep).flatten_indices(keep_in_memory=True) for p, ds in prompts.items()}
    n_shards = -(-len(questions) // run.cfg.shard_rows)
    run_config = build_run_config(run.cfg, run.lm, templates, run.layers, run.label_ids, questions,
                                  {"rows_per_shard": run.cfg.shard_rows, "num_shards": n_shards})
    run_config["skipped_long"] = found.record()
    return prompts, replace(run, questions=questions, n_shards=n_shards, run_config=run_config)


@dataclass
class RunSetup:
    """What one collection run works with, resolved once by :func:`collect`."""

    cfg: CollectConfig
    state: object  # accelerate.PartialState
    out: Path
    questions: Dataset
    lm: LoadedModel
    layers: list[int]
    label_ids: dict[str, dict[str, list[int]]]  # pass -> label -> token ids
    n_shards: int
    device: torch.device
    run_config: dict
    micro_batch: int

    @property
    def run_id(self) -> str:
        return self.run_config["run_id"]

    def shard_rows(self, index: int) -> tuple[int, int]:
        return index * self.cfg.shard_rows, min((index + 1) * self.cfg.shard_rows, len(self.questions))

    def my_shards(self) -> list[int]:
        """This process's shards: shard i -> rank i % N (so a resume may use another N)."""
        return deal_shards(self.out, self.cfg.passes, self.n_shards, self.state)


def _write_shards(run: RunSetup, prompts: dict[str, Dataset], contexts: dict[str, PassContext], t_start: float) -> None:
    """Every pass's missing shards of this process, each computed and written by its own
    ``Dataset.map`` (``writers.map_shard``), ``writer_count + 1`` maps at once; the passes
    finalised once all their shards exist.

    The device computes shards in job order, each shard's passes together (mcq 0, self_conf 0,
    other_conf 0, mcq 1, ...), so a pass that runs on another's per-question prefixes finds them
    exported by the shard just before; the prefixes of one shard are held at a time."""
    import threading

    from tqdm.auto import tqdm

    cfg, out, state, lm = run.cfg, run.out, run.state, run.lm
    t_shards = time.perf_counter()
    mine = run.my_shards()
    open_passes = [p for p in cfg.passes if not split_is_final(out, p)]
    jobs = [ShardJob(p, i, *run.shard_rows(i)) for i in mine for p in open_passes
            if not shard_path(out, p, i, run.n_shards).is_file()]
    todo = {(job.pass_name, job.index) for job in jobs}
    bar = tqdm(total=len(mine) * len(open_passes), initial=len(mine) * len(open_passes) - len(jobs),
               desc="shards", unit="shard", disable=not state.is_local_main_process)
    bar_lock = threading.Lock()  # the maps' threads share the bar

    def compute(job: ShardJob, slot: int, check_stop) -> ShardData:
        """One shard's inference, in map's function; the turns keep these calls in job order."""
        with bar_lock:
            bar.set_postfix_str(f"{job.pass_name} {job.index}")  # the shard on the device now
        ctx = contexts[job.pass_name]
        shard = ShardHandoff()  # this shard's hand-off state, passed explicitly (a pass is a source or a target)
        if ctx.handoff_from is not None:  # run on the source pass's exports (made again if it is stored already)
            src = contexts[ctx.handoff_from]
            shard.row_prefixes = ctx.handoffs.pop(job.index, None)
            if shard.row_prefixes is None:
                shard.row_prefixes = export_again(src, ctx, prompts[src.pass_name], prompts[job.pass_name], job,
                                                  check_stop)
        if ctx.handoff_to is not None and (ctx.handoff_to, job.index) in todo:
            shard = plan_export(ctx, contexts[ctx.handoff_to], prompts[job.pass_name], prompts[ctx.handoff_to], job)
        data = compute_shard(ctx, prompts[job.pass_name], job, slot, check_stop, shard)
        if shard.exported is not None:
            contexts[ctx.handoff_to].handoffs[job.index] = shard.exported
        return data

    features = {p: pass_features(p, len(labels_for_pass(p)), run.layers, lm.hidden_size, cfg.act_dtype)
                for p in open_passes}

    def one_map(turn: ShardTurn) -> None:
        job = turn.job
        map_shard(turn, compute, contexts[job.pass_name], features[job.pass_name], prompts[job.pass_name],
                  shard_path(out, job.pass_name, job.index, run.n_shards), f"{run.run_id}-{job.pass_name}-{job.index:05d}")
        with bar_lock:
            bar.update(1)

    writers = writer_count(run.device, cfg)
    maps = MapScheduler(jobs, device=run.device, slots=writers + 1, writers=writers)
    try:
        maps.run(one_map)  # raises the first map's error once every map has stopped
    finally:
        bar.close()
    state.wait_for_everyone()
    if state.is_main_process:
        for pass_name in open_passes:
            description = (f"hf_introspect {PROMPT_TYPES[pass_name]} pass of {lm.source.model_name} "
                           f"({lm.checkpoint_id}); {RESIDUAL_DOC}; label token ids {run.label_ids[pass_name]}")
            finalize_split(out, pass_name, run.n_shards, len(run.questions), f"{run.run_id}-{pass_name}",
                           description)
    state.wait_for_everyone()
    if jobs:
        # Which side bounds the run: writers that wait mean inference is the bottleneck.
        logger.info("%s; setup (prompts, plan, warm-up batch) took %.1f s, the shards %.1f s",
                    maps.summary(), t_shards - t_start, time.perf_counter() - t_shards)


def _process_state():
    """accelerate's view of this process. Without CUDA, PartialState(cpu=True) is what makes
    `accelerate launch --multi_gpu --num_processes N` see N ranks (plain PartialState says 1 of 1)."""
    state = process_state()  # with a barrier timeout that fits a long run (multi_process.py)
    if not state.is_main_process:
        logger.setLevel(logging.WARNING)  # one copy of the plan and progress, from rank 0
    return state


def _load_question_set(cfg: CollectConfig, questions: Dataset | None) -> Dataset:
    if questions is None:
        from ..questions.sources import load_questions, parse_question_columns

        columns = parse_question_columns(cfg.question_columns) if cfg.question_columns else None
        return load_questions(cfg.questions, num_questions=cfg.num_questions, seed=cfg.seed,
                              shuffle_options=cfg.shuffle_options, question_ids=cfg.question_ids,
                              source_format=cfg.question_format, columns=columns)
    if cfg.num_questions is not None:
        if cfg.num_questions > len(questions):
            raise UserError(f"--num_questions {cfg.num_questions} is more than the {len(questions)} questions available")
        return questions.select(range(cfg.num_questions))
    return questions
