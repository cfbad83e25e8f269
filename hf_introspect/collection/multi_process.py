"""Several processes on one run (``accelerate launch``): who does which shard, and what is refused.

- ``--device_map auto`` spreads ONE model over every visible GPU; with N processes each would
  spread its own copy over all of them. Refused: one process with ``--device_map``, or one
  process per GPU without it.
- The shards left to do are dealt round-robin over the ranks, so a resumed run's missing shards
  are shared evenly whichever ranks wrote the others; fewer shards than ranks leaves ranks idle,
  which a warning names with the ``--save_every`` that would give every rank work.
- Ranks that finish early wait at a barrier for the slowest one. torch's default barrier timeout
  (10 minutes for NCCL/gloo) would abort a long unbalanced run, so the process group is created
  with :data:`BARRIER_TIMEOUT` (a crashed rank still stops the others: the launcher tears the
  group down).
"""

from __future__ import annotations

import datetime
import logging
from pathlib import Path

from ..errors import UserError

logger = logging.getLogger("hf_introspect")

BARRIER_TIMEOUT = datetime.timedelta(hours=24)


def process_state():
    """accelerate's view of this process, with the barrier timeout set (the first call creates the
    process group). Without CUDA, ``PartialState(cpu=True)`` is what makes ``accelerate launch
    --multi_gpu --num_processes N`` see N ranks (plain PartialState says 1 of 1)."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available(), timeout=BARRIER_TIMEOUT)


def check_device_map(device_map: str | None, num_processes: int) -> None:
    """Refuse ``--device_map`` under several processes.

    Example:
        >>> check_device_map("auto", 1); check_device_map(None, 8)
        >>> check_device_map("auto", 2)
        Traceback (most recent call last):
        ...
        hf_introspect.errors.UserError: --device_map auto with 2 processes: each would spread its own copy of the model over every GPU; use one process with --device_map auto (a model too big for one GPU), or drop --device_map and launch one process per GPU
    """
    if device_map is not None and num_processes > 1:
        raise UserError(f"--device_map {device_map} with {num_processes} processes: each would spread its own copy of "
                        "the model over every GPU; use one process with --device_map auto (a model too big for one "
                        "GPU), or drop --device_map and launch one process per GPU")


def idle_ranks_hint(n_questions: int, batch_size: int, save_every: int, num_processes: int) -> str | None:
    """A warning when a run has fewer shards than processes, naming the ``--save_every`` that
    would give every rank at least one shard (None when every rank has work).

    Example:
        >>> idle_ranks_hint(1000, 16, 10, 8)
        '7 shards for 8 processes: 1 process(es) will idle; --save_every 7 makes 9 shards'
        >>> idle_ranks_hint(1000, 16, 10, 4) is None
        True
        >>> idle_ranks_hint(20, 4, 1, 8)
        '5 shards for 8 processes: 3 process(es) will idle; --batch_size 2 --save_every 1 makes 10 shards'
    """
    n_shards = -(-n_questions // (batch_size * save_every))
    if n_shards >= num_processes:
        return None
    head = f"{n_shards} shards for {num_processes} processes: {num_processes - n_shards} process(es) will idle; "
    every = n_questions // (batch_size * num_processes)
    if every >= 1:
        return head + f"--save_every {every} makes {-(-n_questions // (batch_size * every))} shards"
    batch = max(1, n_questions // num_processes)
    return head + f"--batch_size {batch} --save_every 1 makes {-(-n_questions // batch)} shards"


def deal_shards(out: str | Path, passes, n_shards: int, state) -> list[int]:
    """This rank's shards: those with a pass still to write, dealt round-robin over the ranks
    (listed by every rank before any of them writes). A shard's passes stay on one rank (a
    later pass runs on the earlier one's per-question prefixes of the same shard).

    Example:
        >>> from types import SimpleNamespace
        >>> rank1 = SimpleNamespace(process_index=1, num_processes=2, wait_for_everyone=lambda: None)
        >>> deal_shards("/nonexistent", ["mcq"], 5, rank1)
        [1, 3]
    """
    from .storage import shard_path, split_is_final

    open_passes = [p for p in passes if not split_is_final(out, p)]
    todo = [i for i in range(n_shards) if any(not shard_path(out, p, i, n_shards).is_file() for p in open_passes)]
    state.wait_for_everyone()  # every rank lists the same files: none is written before all have looked
    return todo[state.process_index::state.num_processes]
