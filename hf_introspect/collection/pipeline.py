"""Where a shard's inference runs: inside the shard's own ``Dataset.map`` (its function computes
the shard, then builds its Arrow table), up to ``slots`` maps at once on worker threads, so the
next shard's map computes while this one's is written.

Without the overlap a run alternates: the accelerator idles while a shard is written, the disk
idles while the next one is computed. With all layers at all positions of an 8B model a shard is
gigabytes and its write takes about as long as its inference, so the overlap is what lets a run
go at disk speed; with ``--positions last`` the writes are small and the overlap keeps the
accelerator fed between shards.

:class:`MapScheduler` keeps today's three guarantees while maps run concurrently:

- **order**: the device computes the shards strictly in job order (mcq 0, self_conf 0,
  other_conf 0, mcq 1, ...), because a pass that runs on another's per-question prefixes needs
  them exported by the shard just before. Map k's compute waits for its turn (ticket k), given
  when map k - 1's compute has finished; writes may overlap computes and finish in any order.
- **memory**: a map holds one of ``slots`` host buffer sets (:class:`HostBuffers`) from a free
  pool, taken before it starts and returned once its shard is committed (a pool, not
  ``k % slots``: a later map may finish before an earlier one is written). At most
  ``writers`` maps write at once (a gate), the same as the separate writers before.
- **faults**: an error or KeyboardInterrupt in any map stops the others after their current
  micro-batch (``check_stop``), maps already writing finish whole, and the first error is raised
  in the calling thread.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

SLOTS = 2  # shard buffer sets (= concurrent maps): one being written, one being computed


class HostBuffers:
    """Host memory reused across shards and micro-batches: per slot, one flat ``(tokens, hidden)``
    array per stored layer (the shard's activation columns are built on them zero-copy), and one
    staging tensor that device-to-host copies land in (pinned when CUDA is used, so copies run at
    full bus speed). Fresh memory costs page faults on every use, so buffers only grow. A slot
    belongs to one map at a time (:class:`MapScheduler`); the staging tensors to the map whose
    compute runs (computes never overlap).

    Example:
        >>> hb = HostBuffers(n_layers=2, hidden=4, dtype="float16", pin=False)
        >>> [b.shape for b in hb.shard(0, tokens=3)]
        [(3, 4), (3, 4)]
    """

    def __init__(self, n_layers: int, hidden: int, dtype: str, pin: bool):
        self.n_layers, self.hidden, self.dtype, self.pin = n_layers, hidden, np.dtype(dtype), pin
        self._slots: dict[int, list[np.ndarray]] = {}
        self._staging: dict[int, torch.Tensor] = {}

    def shard(self, slot: int, tokens: int) -> list[np.ndarray]:
        bufs = self._slots.get(slot)
        if bufs is None or bufs[0].shape[0] < tokens:
            self._slots.pop(slot, None)  # free the old set before allocating the larger one
            bufs = self._slots[slot] = [np.empty((tokens, self.hidden), self.dtype) for _ in range(self.n_layers)]
        return [b[:tokens] for b in bufs]

    def staging(self, shape: tuple, dtype: torch.dtype, which: int = 0) -> torch.Tensor:
        """Host memory for one micro-batch's stored activations; ``which`` (0 or 1) alternates so
        one micro-batch's copy can land while the previous one is still being read."""
        numel = int(np.prod(shape))
        buf = self._staging.get(which)
        if buf is None or buf.dtype != dtype or buf.numel() < numel:
            self._staging.pop(which, None)
            buf = self._staging[which] = torch.empty(numel, dtype=dtype, pin_memory=self.pin)
        return buf[:numel].view(shape)

    def release(self) -> None:
        self._slots.clear()
        self._staging.clear()


def return_freed_memory() -> None:
    """Give the C allocator's freed memory back to the OS (glibc ``malloc_trim``; a no-op elsewhere).

    Why: shards are computed in turn by the map worker threads, and glibc keeps each thread's
    freed blocks (the forward's float32 temporaries) in that thread's own arena. Without a trim
    after each compute (:meth:`ShardTurn.compute` calls this), a 40-question all-positions CPU run peaked ~300 MB (10%) higher than when
    one thread did every compute; with it, the same as before (measured, docs/architecture.md).

    Example:
        >>> return_freed_memory()
    """
    global _TRIM
    if _TRIM is None:
        try:
            import ctypes

            _TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
            _TRIM = False
    if _TRIM:
        _TRIM(0)


_TRIM = None  # glibc's malloc_trim once looked up; False where there is none


@dataclass
class ShardJob:
    """One shard to compute: rows ``lo:hi`` of pass ``pass_name``'s prompt dataset."""

    pass_name: str
    index: int
    lo: int
    hi: int


class Stopped(Exception):
    """Raised inside a map by ``check_stop`` (or while it waits) once another map has failed."""


class ShardTurn:
    """Map k's handle on its :class:`MapScheduler`, used from inside the map's function (on the
    map's worker thread): its job, its buffer ``slot``, :meth:`compute` (waits for the device's
    turn) and :meth:`start_writing` (waits for the writer gate)."""

    def __init__(self, sched: MapScheduler, k: int, job: ShardJob, slot: int):
        self.sched, self.k, self.job, self.slot = sched, k, job, slot
        self.computed = self.writing = False

    def check_stop(self) -> None:
        """Called between micro-batches: leave (``Stopped``) if another map failed."""
        if self.sched._stop.is_set():
            raise Stopped

    def compute(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn()`` (the shard's inference) once map k - 1's compute has finished, then give
        the turn to map k + 1. A failed compute keeps the turn: the maps after it stop instead."""
        s = self.sched
        if self.computed:  # map calls its function once (batch_size = the shard's rows)
            raise RuntimeError(f"{self.job.pass_name} shard {self.job.index}: map called its function twice")
        self.computed = True
        t0 = time.perf_counter()
        with s._turn:
            while True:
                self.check_stop()  # first: after a failure nobody starts a compute
                if s._next == self.k:
                    break
                s._turn.wait(0.1)
        s._account(waited=time.perf_counter() - t0)
        if s.device is not None and s.device.type == "cuda" and s.device.index is not None:
            torch.cuda.set_device(s.device)  # the current device is per thread
        t1 = time.perf_counter()
        s._account(computing=+1)
        try:
            value = fn()
        except BaseException:
            s._stop.set()
            raise
        finally:
            s._account(computing=-1, compute_s=time.perf_counter() - t1)
        with s._turn:
            s._next += 1
            s._turn.notify_all()
        return_freed_memory()  # after the hand-over: the next compute need not wait for the trim
        return value

    def start_writing(self) -> None:
        """Wait until fewer than ``writers`` maps write (the table build counts as writing);
        :meth:`MapScheduler._one` lets the next one in once this shard is committed or failed."""
        s, t0 = self.sched, time.perf_counter()
        while not s._gate.acquire(timeout=0.1):
            self.check_stop()
        self.writing = True
        s._account(writing=+1, waited=time.perf_counter() - t0)


class MapScheduler:
    """Runs ``map_shard(turn)`` for each job, one map per job, on up to ``slots`` worker threads:
    each map takes a free buffer slot, computes in job order (:meth:`ShardTurn.compute`) and
    writes with at most ``writers`` others (:meth:`ShardTurn.start_writing`). :meth:`run` returns
    once every shard is written, or raises the first map's error once all maps have stopped.

    ``stats`` says where the time went (seconds): ``compute_s`` the computes' sum;
    ``device_waited_s`` no compute running while shards were left to compute, once the first
    began (the device waited for a free buffer slot, i.e. for the writers); ``writers_waited_s``
    a compute running while fewer than ``writers`` maps wrote (a writer waited for the device);
    ``maps_waited_s`` the maps' waits for their turn and for the gate, summed over maps.

    Example:
        >>> order = []
        >>> def map_shard(turn):
        ...     turn.compute(lambda: order.append(turn.job.index))
        ...     turn.start_writing()
        >>> jobs = [ShardJob("mcq", i, 4 * i, 4 * i + 4) for i in range(5)]
        >>> sched = MapScheduler(jobs, slots=3, writers=2)
        >>> sched.run(map_shard); order, sched.stats["shards"]
        ([0, 1, 2, 3, 4], 5)
    """

    def __init__(self, jobs: list[ShardJob], *, device: torch.device | None = None, slots: int = SLOTS,
                 writers: int = SLOTS - 1):
        self.jobs, self.device, self.slots, self.writers = jobs, device, slots, writers
        self._free: queue.Queue[int] = queue.Queue()
        for slot in range(slots):
            self._free.put(slot)
        self._stop = threading.Event()
        self._turn = threading.Condition()
        self._next = 0  # the job index whose compute may run now
        self._gate = threading.Semaphore(writers)
        self._errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._state = {"computing": 0, "writing": 0, "computed": 0, "since": None}
        self.stats = {"compute_s": 0.0, "device_waited_s": 0.0, "writers_waited_s": 0.0, "maps_waited_s": 0.0,
                      "shards": 0}

    def run(self, map_shard: Callable[[ShardTurn], None]) -> None:
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(self.slots, thread_name_prefix="hf_introspect-map")
        try:
            for k, job in enumerate(self.jobs):
                slot = self._take_slot()
                if slot is None:  # a map failed: start no more
                    break
                pool.submit(self._one, map_shard, ShardTurn(self, k, job, slot))
            pool.shutdown(wait=True)
        except BaseException:  # Ctrl+C in this thread: the maps stop after their micro-batch
            self._stop.set()
            pool.shutdown(wait=True)  # a shard being written finishes (or fails) whole
            raise
        if self._errors:
            raise self._errors[0]

    def _take_slot(self) -> int | None:
        while not self._stop.is_set():
            try:
                return self._free.get(timeout=0.1)
            except queue.Empty:
                pass
        return None

    def _one(self, map_shard: Callable[[ShardTurn], None], turn: ShardTurn) -> None:
        try:
            map_shard(turn)
            if not turn.computed:  # it would hold the turn forever
                raise RuntimeError(f"{turn.job.pass_name} shard {turn.job.index}: map did not call its function")
            with self._lock:
                self.stats["shards"] += 1
        except Stopped:
            pass
        except BaseException as exc:  # KeyboardInterrupt included: raised by run() in the calling thread
            with self._lock:
                self._errors.append(exc)
            self._stop.set()
        finally:
            if turn.writing:
                self._account(writing=-1)
                self._gate.release()
            self._free.put(turn.slot)  # the shard is committed (or abandoned): its buffers may be refilled

    def _account(self, computing: int = 0, writing: int = 0, compute_s: float = 0.0, waited: float = 0.0) -> None:
        """Book the time since the last change to the state it was spent in, then change it."""
        with self._lock:
            st, now = self._state, time.perf_counter()
            if st["since"] is not None:
                dt = now - st["since"]
                if st["computing"] == 0 and st["computed"] < len(self.jobs):
                    self.stats["device_waited_s"] += dt
                if st["computing"] and st["writing"] < self.writers:
                    self.stats["writers_waited_s"] += dt
            if st["since"] is not None or computing > 0:
                st["since"] = now  # the clock starts with the first compute
            st["computing"] += computing
            st["writing"] += writing
            st["computed"] += 1 if computing < 0 else 0
            self.stats["compute_s"] += compute_s
            self.stats["maps_waited_s"] += waited

    def summary(self) -> str:
        s = self.stats
        return (f"inference in map: {s['shards']} shard(s), {s['compute_s']:.1f} s computing; the device waited "
                f"{s['device_waited_s']:.1f} s for the writers (no free buffer set), the writers "
                f"{s['writers_waited_s']:.1f} s for the device")
