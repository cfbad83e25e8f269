"""Inference ahead of the writer: a background thread runs the model over the next shard while
``Dataset.map`` encodes and writes the current one.

Without it a run alternates: the accelerator idles while a shard is written, the disk idles while
the next one is computed. With all layers at all positions of an 8B model a shard is gigabytes and
its write takes longer than its inference, so the overlap is what lets a run go at disk speed; with
``--positions last`` the writes are small and the thread keeps the accelerator fed between shards.

Memory stays bounded: the thread fills one of ``slots`` host buffer sets (two by default: one
being written, one being filled) and waits for a writer to hand a set back, so at most one shard
is computed ahead of those being written.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

SLOTS = 2  # shard buffer sets: one being written, one being filled


class HostBuffers:
    """Host memory reused across shards and micro-batches: per slot, one flat ``(tokens, hidden)``
    array per stored layer (the shard's activation columns are built on them zero-copy), and one
    staging tensor that device-to-host copies land in (pinned when CUDA is used, so copies run at
    full bus speed). Fresh memory costs page faults on every use, so buffers only grow.

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


@dataclass
class ShardJob:
    """One shard to compute: rows ``lo:hi`` of pass ``pass_name``'s prompt dataset."""

    pass_name: str
    index: int
    lo: int
    hi: int


@dataclass
class ShardResult:
    job: ShardJob
    slot: int
    value: Any = None  # what ``compute`` returned
    error: BaseException | None = None


class _Stopped(Exception):
    pass


@dataclass
class ShardPrefetcher:
    """Runs ``compute(job, slot, check_stop)`` for each job, in order, on a background thread, at most
    ``slots - 1`` shards ahead of the consumer. ``take()`` returns the next result (re-raising the
    thread's exception in the caller, KeyboardInterrupt included); ``release(result)`` hands its
    buffer slot back once the shard is written. Use as a context manager: leaving it stops the
    thread (after its current micro-batch) and waits for it.

    Example:
        >>> jobs = [ShardJob("mcq", i, 4 * i, 4 * i + 4) for i in range(3)]
        >>> with ShardPrefetcher(jobs, lambda job, slot, stop: job.lo) as pf:
        ...     los = []
        ...     for _ in jobs:
        ...         r = pf.take(); los.append(r.value); pf.release(r)
        >>> los
        [0, 4, 8]
    """

    jobs: list[ShardJob]
    compute: Callable[[ShardJob, int, Callable[[], None]], Any]
    device: torch.device | None = None
    slots: int = SLOTS  # buffer sets: shards being written + the one being computed
    _free: queue.Queue = field(default_factory=queue.Queue, init=False)
    _done: queue.Queue = field(default_factory=queue.Queue, init=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)
    # Where the time went, in seconds: the thread computing, the thread waiting for a free slot
    # (writer-bound), the consumer waiting in take() (inference-bound).
    stats: dict[str, float] = field(default_factory=lambda: {"compute_s": 0.0, "thread_waited_s": 0.0,
                                                             "writer_waited_s": 0.0, "shards": 0}, init=False)

    def __enter__(self) -> ShardPrefetcher:
        for slot in range(self.slots):
            self._free.put(slot)
        self._thread = threading.Thread(target=self._run, name="hf_introspect-inference", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check_stop(self) -> None:
        if self._stop.is_set():
            raise _Stopped

    def _run(self) -> None:
        try:
            if self.device is not None and self.device.type == "cuda" and self.device.index is not None:
                torch.cuda.set_device(self.device)  # the current device is per thread
            for job in self.jobs:
                slot = None
                t0 = time.perf_counter()
                while slot is None:
                    if self._stop.is_set():
                        return
                    try:
                        slot = self._free.get(timeout=0.1)
                    except queue.Empty:
                        pass
                t1 = time.perf_counter()
                result = ShardResult(job, slot)
                result.value = self.compute(job, slot, self._check_stop)
                self.stats["thread_waited_s"] += t1 - t0
                self.stats["compute_s"] += time.perf_counter() - t1
                self.stats["shards"] += 1
                self._done.put(result)
        except _Stopped:
            return
        except BaseException as exc:  # handed to the consumer, which raises it in the main thread
            self._done.put(ShardResult(None, -1, error=exc))

    def take(self) -> ShardResult:
        t0 = time.perf_counter()
        while True:
            try:
                result = self._done.get(timeout=0.5)
                break
            except queue.Empty:
                # A thread that ended without a result (it cannot, by construction) must not hang us.
                if self._thread is None or not self._thread.is_alive():
                    if self._done.empty():
                        raise RuntimeError("the inference thread stopped without computing the next shard") from None
        self.stats["writer_waited_s"] += time.perf_counter() - t0
        if result.error is not None:
            raise result.error
        return result

    def release(self, result: ShardResult) -> None:
        self._free.put(result.slot)

    def summary(self) -> str:
        s = self.stats
        return (f"inference thread: {s['shards']} shard(s) in {s['compute_s']:.1f} s, waited {s['thread_waited_s']:.1f} s "
                f"for the writer; the writer waited {s['writer_waited_s']:.1f} s for it")

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
