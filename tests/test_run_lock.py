"""One collect per run folder: a live holder refuses the second (exit 2 naming it), a dead one's
lock is taken over, a finished run leaves no lock and resumes."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from hf_introspect.cli import main
from hf_introspect.collection.run_lock import LOCK_NAME, acquire
from hf_introspect.errors import UserError

from .test_faults import write_questions


def args(model, qfile, out):
    return ["collect", "--model", str(model), "--questions", str(qfile), "--output_dir", str(out), "--num_questions",
            "4", "--batch_size", "2", "--save_every", "1", "--max_new_tokens", "1", "--passes", "mcq"]


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_second_collect_into_a_locked_folder_exits_2_naming_the_holder(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    with acquire(out, "hf-introspect collect (first)"):  # a live holder: this very process
        assert main(args(tiny_model_dir, write_questions(tmp_path / "q.jsonl"), out)) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        host = socket.gethostname()
        assert err.startswith(f"error: {out} is in use by another collect (pid {__import__('os').getpid()} on {host}")
        assert "(first)" in err and "Traceback" not in err
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # nothing written besides the holder's lock
    assert not (out / LOCK_NAME).exists()  # released by its holder


def test_lock_of_another_host_is_not_taken(tmp_path):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "node-07", "started": "2026-12-02T10:00:00"}))
    with pytest.raises(UserError, match=r"in use by another collect \(pid 1 on node-07 since 2026-12-02T10:00:00\)"):
        acquire(tmp_path)


def test_stale_lock_is_taken_over_then_a_finished_run_resumes(tiny_model_dir, tmp_path, caplog):
    out = tmp_path / "run"
    out.mkdir()
    pid = dead_pid()
    (out / LOCK_NAME).write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "started": "earlier"}))
    qfile = write_questions(tmp_path / "q.jsonl")
    assert main(args(tiny_model_dir, qfile, out)) == 0
    assert f"taking over the lock of a collect that is gone (pid {pid} on {socket.gethostname()}" in caplog.text
    assert not (out / LOCK_NAME).exists() and (out / "dataset_dict.json").is_file()
    # A rerun of the finished run (resume: nothing left to do) takes and releases the lock again.
    before = sorted(p.name for p in (out / "mcq").iterdir())
    assert main(args(tiny_model_dir, qfile, out)) == 0
    assert not (out / LOCK_NAME).exists() and sorted(p.name for p in (out / "mcq").iterdir()) == before


def test_overwrite_keeps_the_lock_while_it_clears_the_folder(tmp_path):
    from hf_introspect.collection.storage import prepare_output_dir

    out = tmp_path / "run"
    with acquire(out) as lock:
        (out / "mcq").mkdir()
        (out / "run_config.json").write_text(json.dumps({"identity": {"config": {}}}))
        prepare_output_dir(out, {"identity": {"config": {}}}, overwrite=True, passes=["mcq"])
        assert lock.path.is_file() and sorted(p.name for p in out.iterdir()) == [LOCK_NAME, "run_config.json"]
