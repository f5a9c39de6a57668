"""``export --branches auto`` keeps the layout that runs faster on the target, and records both timings.

Which layout wins on this CPU depends on the machine, so the decision is tested on registered
runtimes whose runs report a cost that depends on the graph and the batch instead of the clock: one
where grouped convolutions cost more (plain must win), one where they cost less (grouped must win),
and one where they cost less at batch 1 and more above it (as measured on ONNX Runtime CPU: one file
serves the whole batch range, so plain must win). All run the real graph in ONNX Runtime, so the
outputs the export verified are the real ones. The real timings are in ``benchmarks/results/branches``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from subtune_edge.bench import branches as branches_bench
from subtune_edge.cli import main
from subtune_edge.exporters import export_tasks
from subtune_edge.runtime import OrtRunner, RuntimeSpec, load_export, register_runtime, unregister_runtime
from subtune_edge.runtime.timing import least_worst_slowdown
from subtune_edge.synthetic import synthetic_task
from subtune_edge.task import save_task

from .helpers import SIZE, backbone_for


class CostRunner(OrtRunner):
    """ONNX Runtime, reporting as its latency a cost of the graph: per grouped convolution, ``grouped_cost[0]``
    ms at batch 1 and ``grouped_cost[1]`` ms per image above it."""

    def __init__(self, path, grouped_cost: tuple[float, float]):
        super().__init__(path, threads=1)
        model = onnx.load(str(path), load_external_data=False)
        self.grouped = sum(1 for n in model.graph.node if n.op_type == "Conv"
                           and any(a.name == "group" and a.i > 1 for a in n.attribute))
        self.grouped_cost = grouped_cost

    def _run(self, staged) -> float:
        super()._run(staged)
        batch = next(iter(staged.values())).shape[0]
        at_one, per_image = self.grouped_cost
        return 10.0 * batch + self.grouped * (at_one + per_image * (batch - 1))


COSTS = {"grouped-costly": (1.0, 1.0), "grouped-cheap": (-0.5, -0.5), "grouped-cheap-at-1": (-0.5, 2.0)}


@pytest.fixture(scope="module")
def cost_runtimes():
    specs = [register_runtime(RuntimeSpec(name, "cost", "onnx", lambda src, threads=None, c=c, **o: CostRunner(src, c),
                                          precisions=("fp32",)), replace=True)
             for name, c in COSTS.items()]
    yield specs
    for s in specs:
        unregister_runtime(s.name)


@pytest.fixture(scope="module")
def tasks():
    backbone = backbone_for("resnet18")
    units = ["layer4.0", "layer4.1"]
    return [synthetic_task(backbone, f"t{i}", units, 3 + i, seed=i, input_size=(SIZE, SIZE)) for i in range(3)]


@pytest.mark.parametrize("runtime, winner", [("grouped-costly", "plain"), ("grouped-cheap", "grouped"),
                                             ("grouped-cheap-at-1", "plain")])
def test_auto_keeps_the_faster_layout_and_records_both(cost_runtimes, tasks, tmp_path, runtime, winner):
    manifest = export_tasks(tasks, tmp_path / "auto", batch=(1, 4), runtime=runtime)
    record = manifest.info["branches"]
    assert record["mode"] == "auto" and record["chosen"] == winner and record["runtime"] == runtime
    assert record["groups"] == [["t0", "t1", "t2"]]
    timed = {t["batch"]: t for t in record["timed"]}
    assert sorted(timed) == [1, 4] and all(t["rounds"] >= 10 for t in timed.values())
    at_one, per_image = COSTS[runtime]
    for batch, t in timed.items():  # the recorded medians are the runtime's costs (resnet18 has no grouped conv)
        assert t["plain_ms"] == 10 * batch
        assert (t["grouped_ms"] - t["plain_ms"]) * (at_one + per_image * (batch - 1)) > 0
    worst, loser = record["worst_slowdown"], "grouped" if winner == "plain" else "plain"
    assert 1.0 <= worst[winner] < worst[loser]
    assert (worst[winner] > 1.0) == (runtime == "grouped-cheap-at-1")  # plain gives up batch 1 to win batch 4
    assert (manifest.info["grouped_branches"] is not None) == (winner == "grouped")
    shown = CliRunner().invoke(main, ["inspect", str(tmp_path / "auto")])  # renders the record (and re-checks)
    assert shown.exit_code == 0, shown.output
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
                              str(tmp_path / "tasks"), "--backend", "grouped-cheap", "--seconds", "0",
                              "--results", str(tmp_path / "r")])  # no --batch: the export's range, 1 and 4
    assert bench.exit_code == 0, bench.output
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert results["variants"]["chosen"] == "grouped" and results["rows"] == []
    assert results["variants"]["batches"] == [1, 4] and results["variants"]["worst_slowdown"]["grouped"] == 1.0
    assert sorted((p["batch"], p["variant"]) for p in results["variants"]["points"]) == [
        (1, "grouped"), (1, "plain"), (4, "grouped"), (4, "plain")]
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


def test_least_worst_slowdown_trades_a_small_win_for_no_big_loss():
    # resnet34 64 px, k = 8 as measured: grouped 3% faster at batch 1, 1.76x slower at batch 8
    chosen, worst = least_worst_slowdown({1: {"plain": 10.60, "grouped": 10.30}, 8: {"plain": 35.18, "grouped": 61.88}})
    assert chosen == "plain"
    assert worst == {"plain": pytest.approx(10.60 / 10.30), "grouped": pytest.approx(61.88 / 35.18)}
    chosen, worst = least_worst_slowdown({1: {"plain": 4.0, "grouped": 3.0}, 8: {"plain": 30.0, "grouped": 29.0}})
    assert chosen == "grouped" and worst["grouped"] == 1.0
    assert least_worst_slowdown({1: {"plain": 2.0, "grouped": 2.0}})[0] == "plain"  # a tie: the first named
    with pytest.raises(ValueError, match="same, non-empty variants"):
        least_worst_slowdown({1: {"plain": 2.0}, 8: {"grouped": 3.0}})


@pytest.mark.slow
def test_the_branches_benchmark_runs_and_reports_auto_against_the_batch_1_rule(tmp_path):
    assert branches_bench.main(["--quick", "--seconds", "0", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    rows = results["rows"]
    assert [(r["model"], r["k"], r["batch"]) for r in rows] == [("resnet18", 2, 1), ("resnet18", 2, 8)]
    record = rows[0]["auto_record"]
    assert [t["batch"] for t in record["timed"]] == [1, 8]
    assert rows[0]["auto"] == min(record["worst_slowdown"], key=record["worst_slowdown"].get)
    for r in rows:
        ms = {"plain": r["plain_ms"], "grouped": r["grouped_ms"]}
        assert r["auto_slowdown"] == pytest.approx(ms[r["auto"]] / min(ms.values()))
        assert r["batch1_rule"] == min(("plain", "grouped"), key=lambda v: {"plain": rows[0]["plain_ms"],
                                                                            "grouped": rows[0]["grouped_ms"]}[v])
    assert "| k | batch | run | plain ms | grouped ms |" in (tmp_path / "README.md").read_text()
