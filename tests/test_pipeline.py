"""The scheduler of the shards' maps (inference inside map, in job order, bounded buffers), and its host buffers."""

import threading
import time

import numpy as np
import pytest
import torch

from hf_introspect.collection.pipeline import HostBuffers, MapScheduler, ShardJob, Stopped

from .test_collector import make_questions, run_cfg


def jobs(n):
    return [ShardJob("mcq", i, 10 * i, 10 * i + 10) for i in range(n)]


def wait_for(cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.005)
    return cond()


def test_computes_run_in_job_order_while_writes_finish_in_any_order():
    """Later maps may finish (and free their slot) first; the computes still go 0, 1, 2, ...,
    never two at once, and no two live maps share a buffer slot."""
    order, live, lock = [], {}, threading.Lock()
    computing = [0]

    def map_shard(turn):
        with lock:
            assert turn.slot not in live.values(), "two maps hold one slot"
            live[turn.k] = turn.slot

        def compute():
            computing[0] += 1
            assert computing[0] == 1, "two computes at once"
            order.append(turn.job.index)
            time.sleep(0.002)
            computing[0] -= 1
            return turn.job.lo

        assert turn.compute(compute) == turn.job.lo
        turn.start_writing()
        time.sleep(0.03 if turn.job.index % 3 == 0 else 0.0)  # some writes slow: others overtake them
        with lock:
            del live[turn.k]

    sched = MapScheduler(jobs(12), slots=3, writers=2)
    sched.run(map_shard)
    assert order == list(range(12))
    assert sched.stats["shards"] == 12 and sched.stats["compute_s"] > 0


def test_a_map_computes_at_most_one_shard_ahead_of_the_writer():
    started, release = [], threading.Event()

    def map_shard(turn):
        turn.compute(lambda: started.append(turn.job.index))
        turn.start_writing()
        if turn.job.index == 0:
            assert release.wait(5)  # shard 0 is being "written"

    sched = MapScheduler(jobs(6), slots=2, writers=1)
    t = threading.Thread(target=sched.run, args=(map_shard,))
    t.start()
    assert wait_for(lambda: len(started) == 2)
    time.sleep(0.2)  # time enough to run ahead, if it could
    assert started == [0, 1]  # shard 1 computed into the other slot, then it waits for the writer
    release.set()
    t.join(5)
    assert started == list(range(6)) and not t.is_alive()


def test_at_most_writers_maps_write_at_once():
    writing, most, lock = [0], [0], threading.Lock()

    def map_shard(turn):
        turn.compute(lambda: None)
        turn.start_writing()
        with lock:
            writing[0] += 1
            most[0] = max(most[0], writing[0])
        time.sleep(0.02)
        with lock:
            writing[0] -= 1

    MapScheduler(jobs(8), slots=3, writers=2).run(map_shard)
    assert most[0] == 2


@pytest.mark.parametrize("exc", [ValueError("bad shard"), KeyboardInterrupt()])
def test_an_error_in_a_map_stops_the_others_and_is_raised(exc):
    """Shard 1's compute fails: the maps after it never compute (they stop in their wait for the
    turn), and run() raises the error in the calling thread."""
    computed = []

    def map_shard(turn):
        def compute():
            if turn.job.index == 1:
                raise exc
            computed.append(turn.job.index)

        turn.compute(compute)
        turn.start_writing()

    sched = MapScheduler(jobs(5), slots=3, writers=2)
    with pytest.raises(type(exc)):
        sched.run(map_shard)
    assert computed == [0]
    assert sched.stats["shards"] == 1


def test_a_failed_write_stops_a_compute_between_micro_batches():
    in_compute = threading.Event()

    def map_shard(turn):
        def compute():
            while True:  # a long shard: many micro-batches, each checking for a stop
                in_compute.set()
                turn.check_stop()
                time.sleep(0.01)

        if turn.job.index == 0:
            turn.compute(lambda: None)
            turn.start_writing()
            assert in_compute.wait(5)
            raise OSError("write failed")
        turn.compute(compute)

    t = time.monotonic()
    with pytest.raises(OSError, match="write failed"):
        MapScheduler(jobs(3), slots=2, writers=1).run(map_shard)
    assert time.monotonic() - t < 3


def test_ctrl_c_in_the_calling_thread_stops_the_maps():
    in_compute, stopped = threading.Event(), []

    def map_shard(turn):
        def compute():
            try:
                while True:
                    in_compute.set()
                    turn.check_stop()
                    time.sleep(0.01)
            except Stopped:
                stopped.append(turn.job.index)
                raise

        turn.compute(compute)

    sched = MapScheduler(jobs(4), slots=2, writers=1)
    real_take = sched._take_slot
    calls = [0]

    def take():
        calls[0] += 1
        if calls[0] == 3:  # maps 0 and 1 started; Ctrl+C while waiting for a slot
            assert in_compute.wait(5)
            raise KeyboardInterrupt
        return real_take()

    sched._take_slot = take
    with pytest.raises(KeyboardInterrupt):
        sched.run(map_shard)
    assert stopped == [0]


def test_a_map_that_never_calls_its_function_is_an_error_not_a_hang():
    def map_shard(turn):
        if turn.job.index == 0:
            return  # map skipped its function: its turn would never pass
        turn.compute(lambda: None)

    t = time.monotonic()
    with pytest.raises(RuntimeError, match="did not call its function"):
        MapScheduler(jobs(3), slots=2, writers=1).run(map_shard)
    assert time.monotonic() - t < 3


def test_a_function_called_twice_is_an_error():
    def map_shard(turn):
        turn.compute(lambda: None)
        turn.compute(lambda: None)

    with pytest.raises(RuntimeError, match="twice"):
        MapScheduler(jobs(2), slots=2, writers=1).run(map_shard)


def test_stats_say_which_side_waited():
    """A slow writer: the device waits for a free slot; a slow compute: the writer waits."""
    def slow(write_s, compute_s):
        def map_shard(turn):
            turn.compute(lambda: time.sleep(compute_s))
            turn.start_writing()
            time.sleep(write_s)
        sched = MapScheduler(jobs(4), slots=2, writers=1)
        sched.run(map_shard)
        return sched.stats

    disk_bound, device_bound = slow(0.1, 0.01), slow(0.01, 0.1)
    assert disk_bound["device_waited_s"] > 0.1 and disk_bound["writers_waited_s"] < 0.1
    assert device_bound["writers_waited_s"] > 0.25 and device_bound["device_waited_s"] < 0.1
    assert device_bound["compute_s"] >= 0.4


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
    """While map 0 writes shard 0, map 1 is already computing shard 1 (in its own map's function)."""
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
    assert any("inference in map: 3 shard(s)" in r.getMessage() for r in caplog.records)


def _assert_same(a, b):
    for name in a:
        x, y = a[name].with_format("numpy", dtype=None), b[name].with_format("numpy", dtype=None)
        assert x.column_names == y.column_names and len(x) == len(y)
        for col in x.column_names:
            for u, v in zip(x[col], y[col]):
                np.testing.assert_array_equal(u, v)


def test_two_concurrent_writers_write_the_same_dataset(tiny_model_dir, tmp_path, monkeypatch):
    """The GPU all-positions setting (two maps writing at once, three maps and buffer sets) gives
    the same files' content as one writer; shards may finish out of order."""
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
