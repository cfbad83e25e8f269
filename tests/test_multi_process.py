"""Multi-process edges (CPU-testable parts): --device_map with several processes refused, idle
ranks named with the --save_every that feeds them, a resumed run's missing shards dealt evenly,
the barrier timeout set. The two-process runs themselves are in test_multiprocess.py."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from hf_introspect.cli import main
from hf_introspect.collection.multi_process import BARRIER_TIMEOUT, deal_shards, idle_ranks_hint
from hf_introspect.collection.storage import shard_path

from .test_faults import write_questions


def test_device_map_with_two_processes_is_one_line_exit_2(tiny_model_dir, tmp_path, monkeypatch, capsys):
    from hf_introspect.collection import run as collector

    real = collector._process_state
    monkeypatch.setattr(collector, "_process_state",
                        lambda: SimpleNamespace(**{k: getattr(real(), k) for k in ("is_main_process", "device")},
                                                num_processes=2, process_index=0))
    out = tmp_path / "run"
    code = main(["collect", "--model", str(tiny_model_dir), "--questions", str(write_questions(tmp_path / "q.jsonl")),
                 "--output_dir", str(out), "--device_map", "auto"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: --device_map auto with 2 processes: each would spread its own copy")
    assert "launch one process per GPU" in err[-1] and not out.exists()


@pytest.mark.parametrize("questions,batch,save_every,procs,expected", [
    (1000, 16, 10, 8, "7 shards for 8 processes: 1 process(es) will idle; --save_every 7 makes 9 shards"),
    (1000, 16, 10, 7, None),
    (24, 2, 10, 2, None),  # 24 rows / 20 per shard = 2 shards: one each
    (24, 2, 10, 3, "2 shards for 3 processes: 1 process(es) will idle; --save_every 4 makes 3 shards"),
    (10, 4, 1, 8, "3 shards for 8 processes: 5 process(es) will idle; --batch_size 1 --save_every 1 makes 10 shards"),
])
def test_idle_ranks_hint(questions, batch, save_every, procs, expected):
    assert idle_ranks_hint(questions, batch, save_every, procs) == expected
    if expected is not None:  # the suggested settings really give every rank a shard
        words = expected.split("; ")[1].split()
        b = int(words[words.index("--batch_size") + 1]) if "--batch_size" in words else batch
        s = int(words[words.index("--save_every") + 1])
        assert idle_ranks_hint(questions, b, s, procs) is None


def test_missing_shards_of_a_resumed_run_are_dealt_evenly(tmp_path):
    # A first attempt with 2 processes: rank 0 wrote shards 0, 2, 4 of both passes, rank 1 died.
    # Dealing shard i to rank i % 2 again would give every missing shard to rank 1.
    for p in ("mcq", "self_conf"):
        for i in (0, 2, 4):
            path = shard_path(tmp_path, p, i, 6)
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(b"")
    shard_path(tmp_path, "self_conf", 2, 6).unlink()  # a shard with one pass left counts too
    ranks = [SimpleNamespace(process_index=r, num_processes=2, wait_for_everyone=lambda: None) for r in (0, 1)]
    dealt = [deal_shards(tmp_path, ["mcq", "self_conf"], 6, s) for s in ranks]
    assert dealt == [[1, 3], [2, 5]]


def test_barrier_timeout_fits_a_long_run():
    assert BARRIER_TIMEOUT.total_seconds() >= 24 * 3600  # torch's default is 600 s
