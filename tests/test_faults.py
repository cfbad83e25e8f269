"""Faults never cost data: kill -9 / Ctrl+C at random moments and a full disk, then resume."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from datasets import load_from_disk

from hf_introspect.errors import UserError

REPO = Path(__file__).resolve().parents[1]
N = 24


def write_questions(path: Path) -> Path:
    rows = [{"question_id": f"q{i:02d}", "question_text": f"What is the capital of place number {i}" + "?" * (i % 5),
             "options": {"A": f"City {i}", "B": f"Town {i}", "C": f"Village {i}", "D": f"Port {i}"},
             "correct_answer_letter": "ABCD"[i % 4]} for i in range(N)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def cli_args(model_dir, qfile, out):
    # one-batch shards: many commit points for the kills to fall between
    return ["--model", str(model_dir), "--questions", str(qfile), "--output_dir", str(out), "--batch_size", "2",
            "--save_every", "1", "--max_new_tokens", "2"]


def assert_same_run(a_dir: Path, b_dir: Path, n: int = N) -> None:
    a, b = load_from_disk(str(a_dir)), load_from_disk(str(b_dir))
    assert list(a) == list(b)
    for split in a:
        x, y = a[split].with_format("numpy", dtype=None), b[split].with_format("numpy", dtype=None)
        assert x.column_names == y.column_names and len(x) == len(y) == n
        for col in x.column_names:
            for u, v in zip(x[col], y[col]):
                np.testing.assert_array_equal(u, v, err_msg=f"{split}.{col}")


@pytest.fixture(scope="module")
def reference(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    qfile = write_questions(root / "q.jsonl")
    out = root / "reference"
    subprocess.run([sys.executable, "-m", "hf_introspect.cli", "collect", *cli_args(tiny_model_dir, qfile, out)],
                   check=True, capture_output=True, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return qfile, out


def test_random_kills_then_resume_equals_uninterrupted(reference, tiny_model_dir, tmp_path):
    qfile, ref = reference
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "hf_introspect.cli", "collect", *cli_args(tiny_model_dir, qfile, out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    rng = random.Random(1234)
    progress = []
    kills = 0
    while kills < 6:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # wait until the run is writing (run_config exists), then kill at a random moment
        deadline = time.time() + 60
        while not (out / "run_config.json").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.5))
        if proc.poll() is not None:
            break  # finished before we could kill it
        sig = signal.SIGINT if kills % 3 == 2 else signal.SIGKILL
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        if sig == signal.SIGINT and proc.returncode == 130:
            assert b"rerun the same command to resume" in err
        kills += 1
        progress.append(len(list(out.glob("*/data-*.arrow"))))
    assert kills >= 5, f"only {kills} kills landed; progress {progress}"
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert not list(out.glob("*/tmp*")), "temporary files left behind"
    assert_same_run(ref, out)


def test_full_disk_keeps_finished_shards_and_resumes(reference, tiny_model_dir, tmp_path, monkeypatch, capsys):
    from datasets.arrow_writer import ArrowWriter

    from hf_introspect.commands.collect import main as collect_main

    qfile, ref = reference
    out = tmp_path / "full"
    real = ArrowWriter.write_table
    calls = {"n": 0}

    def no_space(self, *a, **k):
        if str(out) in str(getattr(self, "_path", None) or ""):  # only the run's shard files
            calls["n"] += 1
        if calls["n"] >= 4:  # the 4th shard finds the disk full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *a, **k)

    monkeypatch.setattr(ArrowWriter, "write_table", no_space)
    rc = collect_main(cli_args(tiny_model_dir, qfile, out))
    err = capsys.readouterr().err
    assert rc == 2 and "disk full" in err and "Traceback" not in err
    # shards go in shard order, the passes of a shard together: shard 0 of each pass got written
    shards = sorted(f"{p.parent.name}/{p.name}" for p in out.glob("*/data-*.arrow"))
    assert shards == [f"{p}/data-00000-of-00012.arrow" for p in ("mcq", "other_conf", "self_conf")]
    assert not list(out.glob("*/tmp*"))
    monkeypatch.setattr(ArrowWriter, "write_table", real)
    assert collect_main(cli_args(tiny_model_dir, qfile, out)) == 0
    assert_same_run(ref, out)


def test_plan_refuses_a_run_bigger_than_the_disk(reference, tiny_model_dir, tmp_path, monkeypatch):
    from hf_introspect.collection import estimate
    from hf_introspect.collection.run import collect
    from hf_introspect.commands.collect import config_from_args

    qfile, _ = reference
    monkeypatch.setattr(estimate, "free_bytes", lambda path: 1000)  # the plan is made in collection/estimate.py
    import argparse

    from hf_introspect.commands.collect import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(cli_args(tiny_model_dir, qfile, tmp_path / "big"))
    with pytest.raises(UserError, match="--positions last"):
        collect(config_from_args(args))
    assert not (tmp_path / "big").exists()
    args.force = True
    args.dry_run = True
    plan = collect(config_from_args(args))
    assert plan.total_bytes > 1000 and plan.passes[0].rows == N
    # 3 residual indices x 64 hidden x 2 bytes per stored token
    assert plan.passes[0].act_bytes == plan.passes[0].stored_positions * 3 * 64 * 2
    assert not (tmp_path / "big").exists()  # a dry run writes nothing
