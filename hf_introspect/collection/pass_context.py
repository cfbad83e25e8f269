"""Per pass: what its batches run with (:class:`PassContext`: model, labels, layers, shared prefix,
micro-batch size, merged-decoding limits), gathered once per pass and kept out of map's fingerprinting.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..config import CollectConfig
from ..models.load import LoadedModel
from .inference import PassSpec, PendingBatch, launch_batch
from .decode import row_generator
from .pipeline import HostBuffers
from .prefix import HandoffStore, SharedPrefix, ShardHandoff, compute_shared_prefix


# Continuations of consecutive micro-batches are decoded as one batch of up to this many rows and
# this many bytes of KV cache. Measured on the 2-core CPU VM (SmolLM2, float32): a decode step
# takes 92 ms for 4 rows, 148 for 16, 226 for 32, 398 for 64 (memory-bound: every weight is read
# once per step), so 4 merged micro-batches cost 2.5x less than 4 separate ones. On a GPU a step
# is bound by kernel launches whatever the rows, so merging saves more; the KV budget keeps the
# deferred caches small next to the model (on a GPU also at most a tenth of its memory: a merged
# decode step briefly holds the cache twice).
DECODE_MAX_ROWS = {"cpu": 64, "cuda": 256}
DECODE_KV_BUDGET = {"cpu": 512 * 2**20, "cuda": 4 * 2**30}


def decode_kv_budget(device: torch.device) -> int:
    budget = DECODE_KV_BUDGET.get(device.type, 0)
    if device.type == "cuda":
        budget = min(budget, torch.cuda.get_device_properties(device).total_memory // 10)
    return budget


@dataclass
class PassContext:
    """What the shard computation needs, gathered once per pass (kept out of map's fingerprinting)."""

    cfg: CollectConfig
    lm: LoadedModel
    pass_name: str
    labels: tuple[str, ...]
    label_ids: dict[str, list[int]]
    layers: list[int]
    eos_ids: set[int]
    micro_batch: int
    buffers: HostBuffers
    overflow_layers: set[int] = field(default_factory=set)
    decode_max_rows: int = 1  # rows decoded together (1 = each micro-batch on its own)
    decode_kv_budget: int = 0
    prefix_ids: list[int] | None = None  # tokens every prompt of the pass starts with (None: no sharing)
    _prefix: SharedPrefix | None = field(default=None, repr=False)
    # Per-question prefixes handed between passes (see handoff_pairs): this pass exports them to
    # ``handoff_to`` / runs on those exported by ``handoff_from``.
    handoff_to: str | None = None
    handoff_from: str | None = None
    handoffs: dict[int, HandoffStore] = field(default_factory=dict)  # shard index -> exported for this pass

    def shared_prefix(self) -> SharedPrefix | None:
        """The pass's shared prefix, run through the model on first use (in whichever thread asks)."""
        if self.prefix_ids and self._prefix is None:
            self._prefix = compute_shared_prefix(self.lm.model, self.prefix_ids, self.layers)
            if self._prefix is None:
                self.prefix_ids = None  # the model's cache cannot be shared: whole prompts
        return self._prefix

    def spec(self, prompt_only: bool = False) -> PassSpec:
        """The settings every batch of the pass runs with (``prompt_only``: forwards, no continuation)."""
        cfg = self.cfg
        return PassSpec(pad_id=self.lm.tokenizer.pad_token_id, label_ids=self.label_ids, layers=self.layers,
                        act_dtype=cfg.act_dtype, max_new_tokens=0 if prompt_only else cfg.max_new_tokens,
                        temperature=cfg.temperature, top_p=cfg.top_p, eos_ids=self.eos_ids,
                        prefix=self.shared_prefix())

    def launch_rows(self, seqs, positions, qids, shard: ShardHandoff, host_alloc=None, rows=None,
                    export=False) -> PendingBatch:
        """One micro-batch of the shard's ``rows`` (indices in the shard), with the shard's hand-off state."""
        gens = [row_generator(self.cfg.seed, q, self.pass_name) for q in qids] if self.cfg.temperature > 0 else None
        row_prefix = shard.row_prefixes.for_rows(rows) if shard.row_prefixes is not None and rows is not None else None
        export = [shard.export_lengths[r] for r in rows] if export and shard.export_lengths is not None else None
        return launch_batch(self.lm.model, seqs, self.spec(shard.prompt_only), positions, generators=gens,
                            host_alloc=host_alloc, defer_continuation=self.decode_max_rows > len(seqs),
                            row_prefix=row_prefix, export=export, export_hidden=shard.export_hidden)


def eos_ids_of(lm: LoadedModel) -> set[int]:
    ids = set()
    for src in (lm.tokenizer.eos_token_id, getattr(getattr(lm.model, "generation_config", None), "eos_token_id", None)):
        if isinstance(src, int):
            ids.add(src)
        elif isinstance(src, (list, tuple)):
            ids.update(int(i) for i in src)
    return ids
