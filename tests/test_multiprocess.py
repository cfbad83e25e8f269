"""`accelerate launch` with two CPU processes: same rows, same order, bit for bit; and a run
resumed with a different number of processes than its first attempt."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hf_introspect.commands.collect import main as collect_main

from .test_faults import assert_same_run, write_questions

REPO = Path(__file__).resolve().parents[1]
N = 24


def args(model_dir, qfile, out):
    return ["--model", str(model_dir), "--questions", str(qfile), "--output_dir", str(out), "--batch_size", "2",
            "--save_every", "2", "--max_new_tokens", "2"]


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("mp")
    qfile = write_questions(root / "q.jsonl")
    single = root / "single"
    assert collect_main(args(tiny_model_dir, qfile, single)) == 0
    multi = root / "multi"
    # On a CPU-only machine `--cpu --num_processes 2` starts ONE process; `--multi_gpu` starts two
    # and the collector builds PartialState(cpu=True) so they see ranks 0 and 1 (design.md).
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           str(REPO / "scripts" / "collect_activations.py"), *args(tiny_model_dir, qfile, multi)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MASTER_PORT": "29517"}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    return qfile, single, multi, done.stdout.decode()


def test_two_processes_equal_one(runs):
    _, single, multi, stdout = runs
    assert stdout.count("wrote ") == 1  # only rank 0 reports
    assert_same_run(single, multi)
    config = json.loads((multi / "run_config.json").read_text())
    assert config["shards"] == {"rows_per_shard": 4, "num_shards": 6}


def test_resume_with_another_process_count(runs, tiny_model_dir, tmp_path):
    qfile, single, multi, _ = runs
    # An interrupted two-process run: half of self_conf's shards and everything after are missing.
    partial = tmp_path / "partial"
    shutil.copytree(multi, partial)
    (partial / "dataset_dict.json").unlink()
    for name in ("self_conf", "other_conf"):
        for f in ("state.json", "dataset_info.json"):
            (partial / name / f).unlink()
    for shard in sorted((partial / "self_conf").glob("data-*.arrow"))[3:]:
        shard.unlink()
    shutil.rmtree(partial / "other_conf")
    # ... finished by ONE process.
    assert collect_main(args(tiny_model_dir, qfile, partial)) == 0
    assert_same_run(single, partial)
