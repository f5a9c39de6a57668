"""`subtune-edge demo --quick` end to end, as CI runs the main job."""

import json

from click.testing import CliRunner

from exporters import check_files
from subtune_edge.cli import main


def test_demo_quick_runs_end_to_end_and_leaves_a_verified_export(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(main, ["demo", "--quick", "--out", str(out), "--device", "cpu", "--threads", "2"])
    assert result.exit_code == 0, result.output
    assert "one fused graph vs 3 separate full models" in result.output
    manifest = json.loads((out / "export" / "manifest.json").read_text())
    assert [t["output"] for t in manifest["tasks"]] == ["digit", "parity", "ge5"]
    assert manifest["verification"]["passed"] is True
    assert all(status == "ok" for status in check_files(out / "export", manifest).values())
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["tasks"]) == 3 and summary["verification_passed"]
    for task in summary["tasks"]:
        assert 0.5 < task["accuracy"] <= 1.0  # real digits, real ImageNet weights: far above chance
        assert task["linear_probe"] is not None
    assert summary["tasks"][0]["full_finetune"] is not None
    assert summary["fused_bytes"] < summary["separate_bytes"]
    for name in ("profile/profile.png", "bench/report.md", "bench/results.json", "tasks/parity.safetensors"):
        assert (out / name).is_file(), name
