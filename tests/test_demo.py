"""`subtune-edge demo --quick` end to end, as CI runs the main job."""

import json

import pytest
from click.testing import CliRunner

from subtune_edge.cli import main
from subtune_edge.runtime import read_manifest


@pytest.mark.slow
def test_demo_quick_runs_end_to_end_and_leaves_a_verified_export(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(main, ["demo", "--quick", "--out", str(out), "--device", "cpu", "--threads", "2"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "export" / "manifest.json").read_text())
    assert [t["output"] for t in manifest["tasks"]] == ["digit", "parity", "ge5"]
    assert manifest["verification"]["passed"] is True
    read_manifest(out / "export")  # every field and every file's sha256 checked
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["tasks"]) == 3 and summary["verification_passed"]
    for task in summary["tasks"]:
        assert 0.5 < task["accuracy"] <= 1.0  # real digits, real ImageNet weights: far above chance
        assert 0.5 < task["linear_probe"] <= 1.0
    assert 0.1 < summary["tasks"][0]["full_finetune"] <= 1.0  # 10 digits: above chance (--quick trains 2 epochs)
    for task in summary["tasks"]:
        # greedy selected on folds of the training split; the reported accuracy is a validation-split run
        search = json.loads((out / "tasks" / f"{task['name']}.search.json").read_text())["runs"]
        assert search and all(r["fold"] in (0, 1) for r in search.values())
        val_runs = json.loads((out / "tasks" / f"{task['name']}.runs.json").read_text())["runs"]
        mode = "linear-probe" if not task["units"] else "subtune"
        final = val_runs[f"{mode}|{'+'.join(task['units']) or '-'}|seed=0|fold=None"]
        assert task["accuracy"] == final["accuracy"] and final["val_samples"] == 300
        assert task["selection_score"] == task["greedy"]["selection_score"]
        assert task["greedy"]["runs"] >= 2 * 3 and task["greedy"]["run_seconds"] > 0  # {} + 2 candidates x 2 folds
    # the first task's profile trained the linear probe and every candidate alone on the same split, and
    # --quick chooses at most one unit: its final model is the profile's run, not a second training
    assert summary["tasks"][0]["reused_run"] is True
    assert summary["fused_bytes"] < summary["separate_bytes"]
    assert summary["int8_bytes"] < 0.35 * summary["fused_bytes"]  # model.int8.onnx, gated per task
    for task in summary["tasks"]:
        assert task["int8_precision"] in ("int8", "fp32") and 0.5 < task["accuracy_int8"] <= 1.0
        assert task["accuracy_fp32"] > 0.5 and task["int8_agreement"] > 0.5
    assert all(r["int8_fused_ms"] > 0 for r in summary["latency"])
    for name in ("profile/profile.png", "bench/report.md", "bench/results.json", "tasks/parity.safetensors"):
        assert (out / name).is_file(), name
    assert summary["files"]["export"] == str(out.absolute() / "export")  # the published folder, not the staging one
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith((".partial", ".old"))]


def test_demo_refuses_a_foreign_out_folder_before_any_work(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    result = CliRunner().invoke(main, ["demo", "--quick", "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 2
    assert "--out" in result.output and "not a demo's output" in result.output
    assert "Traceback" not in result.output
    assert (out / "notes.txt").read_text() == "keep me" and sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]
