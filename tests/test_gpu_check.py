"""subtune_edge.bench.gpu_check runs end to end with --cpu-fallback (tiny sizes): it works the first time on a GPU."""

import json

import pytest
import torch

from subtune_edge.bench import gpu_check

pytestmark = pytest.mark.slow


def test_cpu_fallback_runs_end_to_end(tmp_path):
    assert gpu_check.main(["--out", str(tmp_path), "--cpu-fallback"]) == 0
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["cpu_fallback"] is True and report["sizes"] == gpu_check.TINY
    assert set(report["training"]) == {"full", "subtune", "subtune+cache"}
    assert report["training"]["full"]["ratio_vs_full"] == 1.0
    assert all(r["step_ms_median"] > 0 for r in report["training"].values())
    rows = report["latency"]
    points = {(r["setting"], r["side"], r["batch"], r["cuda_graphs"]) for r in rows}
    assert len(points) == len(rows) == 2 * len(gpu_check.SIDES) * 2  # settings x sides x batches, no graphs on CPU
    assert {r["side"] for r in rows} == set(gpu_check.SIDES)
    assert all(r["median_ms"] > 0 for r in rows)
    assert all(r["ratio_vs_separate"] == 1.0 for r in rows if r["side"] == "separate")
    assert (tmp_path / "gpu_check.md").read_text().startswith("# GPU check on cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present: the GPU run is allowed")
def test_without_a_gpu_it_asks_for_the_fallback(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        gpu_check.main(["--out", str(tmp_path)])
    assert exc.value.code == 2
    assert "--cpu-fallback" in capsys.readouterr().err
    assert not (tmp_path / "gpu_check.json").exists()

