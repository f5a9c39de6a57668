"""``export --branches auto`` keeps the layout that runs faster on the target, and records both timings.

Which layout wins on this CPU depends on the machine, so the decision is tested on two registered
runtimes whose runs report a cost that depends on the graph instead of the clock: one where grouped
convolutions cost more (plain must win), one where they cost less (grouped must win). Both run
the real graph in ONNX Runtime, so the outputs the export verified are the real ones. The real
timings on this machine are in ``benchmarks/results/branches``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from subtune_edge.cli import main
from subtune_edge.exporters import export_tasks
from subtune_edge.runtime import OrtRunner, RuntimeSpec, load_export, register_runtime, unregister_runtime
from subtune_edge.synthetic import synthetic_task
from subtune_edge.task import save_task

from .helpers import SIZE, backbone_for


class CostRunner(OrtRunner):
    """ONNX Runtime, reporting as its latency a cost of the graph: ``grouped`` ms per grouped convolution."""

    def __init__(self, path, grouped_cost: float):
        super().__init__(path, threads=1)
        model = onnx.load(str(path), load_external_data=False)
        grouped = sum(1 for n in model.graph.node if n.op_type == "Conv"
                      and any(a.name == "group" and a.i > 1 for a in n.attribute))
        self.cost = 10.0 + grouped_cost * grouped

    def _run(self, staged) -> float:
        super()._run(staged)
        return self.cost


@pytest.fixture(scope="module")
def cost_runtimes():
    specs = [register_runtime(RuntimeSpec(name, "cost", "onnx", lambda src, threads=None, c=c, **o: CostRunner(src, c),
                                          precisions=("fp32",)), replace=True)
             for name, c in (("grouped-costly", 1.0), ("grouped-cheap", -0.5))]
    yield specs
    for s in specs:
        unregister_runtime(s.name)


@pytest.fixture(scope="module")
def tasks():
    backbone = backbone_for("resnet18")
    units = ["layer4.0", "layer4.1"]
    return [synthetic_task(backbone, f"t{i}", units, 3 + i, seed=i, input_size=(SIZE, SIZE)) for i in range(3)]


@pytest.mark.parametrize("runtime, winner", [("grouped-costly", "plain"), ("grouped-cheap", "grouped")])
def test_auto_keeps_the_faster_layout_and_records_both(cost_runtimes, tasks, tmp_path, runtime, winner):
    manifest = export_tasks(tasks, tmp_path / "auto", batch=(1, 4), runtime=runtime)
    record = manifest.info["branches"]
    assert record["mode"] == "auto" and record["chosen"] == winner and record["runtime"] == runtime
    assert record["groups"] == [["t0", "t1", "t2"]] and record["rounds"] >= 10
    assert (record["grouped_ms"] < record["plain_ms"]) == (winner == "grouped")
    assert (manifest.info["grouped_branches"] is not None) == (winner == "grouped")
    assert manifest.info["verification"]["passed"] is True  # the kept graph, against the PyTorch task models
    plain = export_tasks(tasks, tmp_path / "plain", batch=(1, 4), branches="plain", verify=False)
    assert plain.info["branches"]["chosen"] == "plain"
    x = np.random.default_rng(0).standard_normal((3, 3, SIZE, SIZE)).astype(np.float32)
    got, ref = load_export(tmp_path / "auto", device="cpu")(x), load_export(tmp_path / "plain", device="cpu")(x)
    for name in ref:
        assert np.abs(got[name] - ref[name]).max() <= 1e-4 * np.abs(ref[name]).max()


def test_tasks_that_cannot_share_a_branch_stay_plain_without_timing(tasks, tmp_path):
    backbone = backbone_for("resnet18")
    other = synthetic_task(backbone, "other", ["layer3.1"], 2, seed=9, input_size=(SIZE, SIZE))
    manifest = export_tasks([tasks[0], other], tmp_path / "x", batch=(1, 2), verify=False)
    assert manifest.info["branches"] == {"mode": "auto", "chosen": "plain",
                                         "reason": "no two tasks tune the same units"}


def test_bench_variants_on_the_target_then_export_takes_its_choice(cost_runtimes, tasks, tmp_path):
    for t in tasks:
        save_task(t, tmp_path / "tasks" / t.name)
    cli = CliRunner()
    first = cli.invoke(main, ["export", "--tasks", "t0,t1,t2", "--task-dir", str(tmp_path / "tasks"), "--out",
                              str(tmp_path / "e1"), "--batch", "1:4", "--branches", "plain", "--no-verify"])
    assert first.exit_code == 0, first.output
    bench = cli.invoke(main, ["bench", str(tmp_path / "e1"), "--variants", "plain,grouped", "--task-dir",
                              str(tmp_path / "tasks"), "--backend", "grouped-cheap", "--batch", "1,2", "--seconds", "0",
                              "--results", str(tmp_path / "r")])
    assert bench.exit_code == 0, bench.output
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert results["variants"]["chosen"] == "grouped" and results["rows"] == []
    assert sorted((p["batch"], p["variant"]) for p in results["variants"]["points"]) == [
        (1, "grouped"), (1, "plain"), (2, "grouped"), (2, "plain")]
    second = cli.invoke(main, ["export", "--tasks", "t0,t1,t2", "--task-dir", str(tmp_path / "tasks"), "--out",
                               str(tmp_path / "e2"), "--batch", "1:4", "--branches", str(tmp_path / "r"), "--json"])
    assert second.exit_code == 0, second.output
    manifest = json.loads(second.stdout)
    assert manifest["branches"]["mode"] == "results" and manifest["branches"]["chosen"] == "grouped"
    assert manifest["branches"]["from"] == str(Path(tmp_path / "r" / "results.json"))
    assert manifest["grouped_branches"]["groups"] == [["t0", "t1", "t2"]]
    bad = cli.invoke(main, ["export", "--tasks", "t0", "--task-dir", str(tmp_path / "tasks"), "--out",
                            str(tmp_path / "e3"), "--branches", "sideways"])
    assert bad.exit_code == 2 and "--branches" in bad.output and "neither auto, plain, grouped, stacked" in bad.output
