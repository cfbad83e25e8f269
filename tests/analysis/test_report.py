"""`analyze` end to end on a tiny-model run: report.md with its sections, plots and JSON files; --compare_with."""

from __future__ import annotations

import json

from hf_introspect.cli import main

FAST = ["--splits", "5", "--permutations", "5", "--layers", "1,2"]


def test_analyze_writes_report_plots_and_json(tiny_run, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["analyze", str(tiny_run), "--out", str(out), "--json"] + FAST) == 0
    listing = json.loads(capsys.readouterr().out)
    text = (out / "report.md").read_text()
    for heading in ("## 1. Layerwise probes", "## 2. Surface vs internal", "## 3. Directions"):
        assert heading in text
    for name in ("probe.json", "surface.json", "probes_mcq.png", "probes_confidence.png"):
        assert name in listing["files"] and (out / name).stat().st_size > 0
    probes = json.loads((out / "probe.json").read_text())
    assert {(p["pass"], p["target"]) for p in probes} >= {("mcq", "entropy"), ("mcq", "logit_margin"),
                                                         ("self_conf", "self_confidence")}
    assert all(len(p["layers"]) == 2 for p in probes)
    for name in listing["files"]:
        if name.endswith(".png"):
            assert f"]({name})" in text            # every plot is shown in the report


def test_analyze_compare_with(tiny_run, tmp_path):
    out = tmp_path / "cmp"
    assert main(["analyze", str(tiny_run), "--out", str(out), "--compare_with", str(tiny_run)] + FAST) == 0
    probes = json.loads((out / "probe.json").read_text())
    assert probes[0]["run"]["layers"] == probes[0]["compare_with"]["layers"]
    assert "compared with" in (out / "report.md").read_text()
    text = (out / "report.md").read_text()
    # a run compared with itself: each pass's directions meet their twins (cosine 1), and the compare
    # run's own transfer line is written beside the run's
    assert "Cosine between the two runs' directions" in text
    cross = [line for line in text.splitlines() if line.startswith("- mcq: probe")]
    assert cross and "probe 1.000" in cross[0] and "meandiff 1.000" in cross[0]
    assert "Best direct R^2 (compare)" in text
