"""The prefetch thread that runs inference one shard ahead of the writer, and its host buffers."""

import threading
import time

import numpy as np
import pytest
import torch

from hf_introspect.collection.pipeline import SLOTS, HostBuffers, ShardJob, ShardPrefetcher

from .test_collector import make_questions, run_cfg


def jobs(n):
    return [ShardJob("mcq", i, 10 * i, 10 * i + 10) for i in range(n)]


def test_results_come_in_job_order_with_their_slots():
    with ShardPrefetcher(jobs(5), lambda job, slot, stop: (job.index, job.lo)) as pf:
        got = []
        for _ in range(5):
            r = pf.take()
            got.append(r.value)
            assert 0 <= r.slot < SLOTS
            pf.release(r)
    assert got == [(i, 10 * i) for i in range(5)]
    assert pf.stats["shards"] == 5


def test_thread_stays_at_most_one_shard_ahead_of_the_writer():
    started = []

    def compute(job, slot, stop):
        started.append(job.index)
        return job.index

    with ShardPrefetcher(jobs(6), compute) as pf:
        first = pf.take()  # shard 0 is being "written": not released yet
        deadline = time.monotonic() + 5
        while len(started) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)  # time enough to run ahead, if it could
        assert started == [0, 1]  # shard 1 computed into the other slot, nothing beyond
        pf.release(first)
        second = pf.take()
        assert second.value == 1 and second.slot != first.slot
        pf.release(second)
        assert [pf.take().value for _ in range(1)] == [2]


@pytest.mark.parametrize("exc", [ValueError("bad shard"), KeyboardInterrupt()])
def test_an_error_in_the_thread_is_raised_by_take(exc):
    def compute(job, slot, stop):
        if job.index == 1:
            raise exc
        return job.index

    with ShardPrefetcher(jobs(3), compute) as pf:
        r = pf.take()
        assert r.value == 0
        pf.release(r)
        with pytest.raises(type(exc)):
            pf.take()


def test_close_stops_the_thread_between_micro_batches():
    in_compute = threading.Event()

    def compute(job, slot, stop):
        while True:  # a long shard: many micro-batches, each checking for a stop
            in_compute.set()
            stop()
            time.sleep(0.01)

    pf = ShardPrefetcher(jobs(2), compute).__enter__()
    assert in_compute.wait(5)
    t = time.monotonic()
    pf.close()
    assert time.monotonic() - t < 2
    assert pf._thread is None


def test_host_buffers_are_reused_and_grow():
    hb = HostBuffers(n_layers=3, hidden=8, dtype="float16", pin=False)
    a = hb.shard(0, 20)
    assert [x.shape for x in a] == [(20, 8)] * 3 and a[0].dtype == np.float16
    b = hb.shard(0, 5)  # smaller: a view of the same memory
    assert np.shares_memory(a[0], b[0])
    c = hb.shard(1, 5)  # the other slot: its own memory
    assert not np.shares_memory(b[0], c[0])
    d = hb.shard(0, 50)  # larger: a new set
    assert d[0].shape == (50, 8)
    s1 = hb.staging((2, 4, 8), torch.float16)
    s2 = hb.staging((1, 3, 8), torch.float16)
    assert s1.shape == (2, 4, 8) and s2.shape == (1, 3, 8) and s1.data_ptr() == s2.data_ptr()


def test_inference_of_the_next_shard_overlaps_the_write(tiny_model_dir, tmp_path, monkeypatch, caplog):
    """While map writes shard 0, the thread is already computing shard 1."""
    import logging

    from datasets.arrow_writer import ArrowWriter

    from hf_introspect.collection import run as collector
    from hf_introspect.collection.run import collect

    computing = {}
    real_compute, real_write = collector.compute_shard, ArrowWriter.write_table
    second_started = threading.Event()

    def compute(ctx, prompts, job, slot, check_stop, shard):
        computing[(job.pass_name, job.index)] = True
        if job.index == 1:
            second_started.set()
        return real_compute(ctx, prompts, job, slot, check_stop, shard)

    overlapped = []

    def write(self, table, *a, **k):
        # map writes a shard into a temp file in the split folder; the first one is shard 0's
        if str(self._path).startswith(str(tmp_path / "run" / "mcq" / "tmp")) and not overlapped:
            overlapped.append(second_started.wait(10))
        return real_write(self, table, *a, **k)

    monkeypatch.setattr(collector, "compute_shard", compute)
    monkeypatch.setattr(ArrowWriter, "write_table", write)
    cfg = run_cfg(tmp_path, tiny_model_dir, passes=("mcq",), max_new_tokens=0, batch_size=2, save_every=2)
    with caplog.at_level(logging.INFO, logger="hf_introspect"):
        ds = collect(cfg, questions=make_questions(10))["mcq"]  # 4-row shards: 3 of them
    assert overlapped and overlapped[0] is True
    assert len(ds) == 10 and len(computing) == 3
    assert any("inference thread: 3 shard(s)" in r.getMessage() for r in caplog.records)


def _assert_same(a, b):
    for name in a:
        x, y = a[name].with_format("numpy", dtype=None), b[name].with_format("numpy", dtype=None)
        assert x.column_names == y.column_names and len(x) == len(y)
        for col in x.column_names:
            for u, v in zip(x[col], y[col]):
                np.testing.assert_array_equal(u, v)


def test_two_concurrent_writers_write_the_same_dataset(tiny_model_dir, tmp_path, monkeypatch):
    """The GPU all-positions setting (two shard writers at once, three buffer sets) gives the same
    files' content as one writer; shards may finish out of order."""
    from hf_introspect.collection import estimate, run as collector
    from hf_introspect.collection.run import collect

    one = collect(run_cfg(tmp_path, tiny_model_dir, "one", batch_size=2, save_every=1), questions=make_questions(9))
    for module in (collector, estimate):  # the writers and the plan's memory figure
        monkeypatch.setattr(module, "writer_count", lambda device, cfg: 2)
    two = collect(run_cfg(tmp_path, tiny_model_dir, "two", batch_size=2, save_every=1), questions=make_questions(9))
    _assert_same(one, two)


def test_two_writers_full_disk_keeps_whole_shards_and_resumes(tiny_model_dir, tmp_path, monkeypatch):
    import errno

    from datasets.arrow_writer import ArrowWriter

    from hf_introspect.collection import estimate, run as collector
    from hf_introspect.collection.run import collect
    from hf_introspect.errors import UserError

    ref = collect(run_cfg(tmp_path, tiny_model_dir, "ref", batch_size=2, save_every=1, passes=("mcq",)),
                  questions=make_questions(12))
    for module in (collector, estimate):  # the writers and the plan's memory figure
        monkeypatch.setattr(module, "writer_count", lambda device, cfg: 2)
    real = ArrowWriter.write_table
    calls = {"n": 0}

    def no_space(self, *a, **k):
        if str(tmp_path / "run") in str(self._path):
            calls["n"] += 1
            if calls["n"] == 3:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *a, **k)

    monkeypatch.setattr(ArrowWriter, "write_table", no_space)
    cfg = run_cfg(tmp_path, tiny_model_dir, "run", batch_size=2, save_every=1, passes=("mcq",))
    with pytest.raises(UserError, match="disk full"):
        collect(cfg, questions=make_questions(12))
    kept = sorted(p.name for p in (tmp_path / "run" / "mcq").glob("data-*.arrow"))
    assert 2 <= len(kept) < 6  # whole shards only: the failed one is missing
    assert not list((tmp_path / "run" / "mcq").glob("tmp*"))
    monkeypatch.setattr(ArrowWriter, "write_table", real)
    _assert_same(ref, collect(cfg, questions=make_questions(12)))


def test_take_beyond_the_jobs_raises_instead_of_hanging():
    with ShardPrefetcher(jobs(1), lambda job, slot, stop: job.index) as pf:
        pf.release(pf.take())
        with pytest.raises(RuntimeError, match="stopped without computing"):
            pf.take()
