"""Damaged shards: recorded when written, found on resume and by `verify`, collected again.

A finished run's shard is truncated, has bytes flipped, or is deleted; each rerun of the same
collect command names it, collects it again, and the run equals the undamaged one bit for bit.
Readers (load_run, export, merge) name the damaged shard and the command that repairs it.
"""

from __future__ import annotations

import json
import shutil

import pytest

from hf_introspect.cli import main
from hf_introspect.collection.integrity import arrow_rows, checksum, record_path
from hf_introspect.errors import UserError

from .test_faults import assert_same_run, write_questions

SHARD = "data-00001-of-00006.arrow"  # 4 of the 24 rows


def args(model, qfile, out):
    return ["collect", "--model", str(model), "--questions", str(qfile), "--output_dir", str(out), "--batch_size", "2",
            "--save_every", "2", "--max_new_tokens", "1"]


@pytest.fixture(scope="module")
def reference(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("integrity")
    qfile = write_questions(root / "q.jsonl")
    out = root / "reference"
    assert main(args(tiny_model_dir, qfile, out)) == 0
    return qfile, out


def test_every_shard_has_its_record(reference):
    _, out = reference
    for split in ("mcq", "self_conf", "other_conf"):
        shards = sorted((out / split).glob("data-*.arrow"))
        assert len(shards) == 6
        for shard in shards:
            record = json.loads(record_path(shard).read_text())
            assert record == {"rows": arrow_rows(shard), "bytes": shard.stat().st_size, "checksum": checksum(shard)}
            assert record["rows"] == 4
    assert not [p for p in out.rglob("tmp*")]  # nothing left under a temporary name


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def flip(path):
    data = bytearray(path.read_bytes())
    for i in (len(data) // 2, len(data) // 2 + 1, len(data) - 100):  # inside the activation buffers
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage,problem", [(truncate, "193460 bytes, 386920 recorded"), (flip, "checksum differs"),
                                            (lambda p: p.unlink(), "missing")])
def test_rerun_repairs_a_damaged_shard_bit_for_bit(reference, tiny_model_dir, tmp_path, damage, problem, capsys,
                                                   caplog):
    qfile, ref = reference
    run = tmp_path / "run"
    shutil.copytree(ref, run)
    damage(run / "self_conf" / SHARD)
    assert main(["verify", str(run)]) == 1
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith(f"damaged: self_conf/{SHARD} ("))
    assert problem in line and "1 of 18 shards damaged" in out
    assert main(args(tiny_model_dir, qfile, run)) == 0
    warning = next(x for x in caplog.text.splitlines() if f"damaged shard self_conf/{SHARD} (" in x)
    assert problem in warning and warning.endswith("collected again")
    assert_same_run(ref, run)
    assert main(["verify", str(run)]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("ok: 18 shards, ")


def test_readers_name_the_damaged_shard_and_the_repair(reference, tmp_path, capsys):
    from hf_introspect import load_run

    _, ref = reference
    run = tmp_path / "run"
    shutil.copytree(ref, run)
    truncate(run / "mcq" / SHARD)
    with pytest.raises(UserError, match=rf"mcq: damaged shard\(s\) {SHARD} \(\d+ bytes, \d+ recorded\); rerun the "
                                        r"same collect command"):
        load_run(run, split="mcq")
    for command in (["inspect", "--data_dir", str(run)], ["inspect", "--data_dir", str(run / "mcq")],
                    ["export", str(run), "--to", str(tmp_path / "exported")],
                    ["merge", str(run), str(ref), "--to", str(tmp_path / "merged")]):
        assert main(command) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("error: ") and SHARD in err and "rerun the same collect command" in err, err


def test_verify_a_merged_run_by_the_files_its_splits_list(reference, tmp_path, capsys):
    # merge links the Arrow files only (no records) and writes no shard layout in run_config.json
    _, ref = reference
    run = tmp_path / "merged"
    shutil.copytree(ref, run)
    for record in run.rglob("*.integrity.json"):
        record.unlink()
    config = json.loads((run / "run_config.json").read_text())
    config["shards"] = {"merged": True, "num_shards": 6}
    (run / "run_config.json").write_text(json.dumps(config))
    assert main(["verify", str(run)]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("ok: 18 shards, ")
    truncate(run / "mcq" / SHARD)
    assert main(["verify", str(run)]) == 1
    assert capsys.readouterr().out.startswith(f"damaged: mcq/{SHARD} (unreadable")
