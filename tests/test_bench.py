import json

import jsonschema
import pytest
from click.testing import CliRunner

from subtune_edge.bench import BenchConfig, Budget, added_per_task, load_suite, run_bench, summarize, write_report
from subtune_edge.bench.memory import parse_tegrastats
from subtune_edge.bench.report import results_schema
from subtune_edge.bench.suites import available
from subtune_edge.cli import main
from subtune_edge.cost import build_fused, ideal_ratio, plan_from_json
from subtune_edge.errors import SubtuneError

from .helpers import SIZE, backbone_for, three_depth_tasks

SCHEMA = results_schema()

# Real tegrastats lines: Orin Nano (JetPack 6), AGX Orin 64GB (JetPack 6), Xavier NX (JetPack 5).
TEGRA_LINES = {
    "orin-nano": ("10-08-2026 04:38:21 RAM 1343/7620MB (lfb 157x4MB) SWAP 165/3810MB (cached 3MB) "
                  "CPU [0%@1497,0%@729,0%@729,0%@729,0%@729,0%@729] EMC_FREQ 15%@204 GR3D_FREQ 0%@[305] NVDEC off "
                  "NVJPG off VIC off OFA off APE 200 cpu@48.562C soc2@46.593C soc0@48.625C gpu@49.625C tj@49.312C "
                  "soc1@47.937C VDD_IN 5251mW/8535mW VDD_CPU_GPU_CV 512mW/1944mW VDD_SOC 2720mW/3659mW",
                  (1343, 7620, 0, 5251)),
    "agx-orin": ("05-09-2026 18:42:06 RAM 18207/62841MB (lfb 466x4MB) SWAP 86/31420MB (cached 0MB) CPU [14%@2188,"
                 "5%@2112,8%@2035,14%@2201,46%@1267,47%@1267,2%@1267,10%@1267,4%@1036,5%@1036,6%@1036,10%@1036] "
                 "EMC_FREQ 3%@2133 GR3D_FREQ 0%@[0,0] NVENC 79%@166 NVDEC off NVJPG off NVJPG1 off VIC 36%@115 OFA off "
                 "NVDLA0 off NVDLA1 off PVA0_FREQ off APE 174 cpu@52.562C soc2@48.437C soc0@49.093C tj@52.562C "
                 "soc1@49.656C VDD_GPU_SOC 2412mW/2412mW VDD_CPU_CV 1607mW/1607mW VIN_SYS_5V0 4707mW/4707mW",
                 (18207, 62841, 0, 4707)),
    "xavier-nx": ("07-09-2024 13:31:31 RAM 3168/6851MB (lfb 2x4MB) SWAP 161/3426MB (cached 0MB) CPU [23%@1397,"
                  "17%@1192,16%@1190,13%@1190,23%@1190,10%@1190] EMC_FREQ 2%@204 GR3D_FREQ 0%@[114] VIC_FREQ 115 "
                  "APE 150 AUX@45C CPU@46.5C thermal@45.6C AO@45C GPU@45.5C PMIC@50C VDD_IN 2763mW/2846mW "
                  "VDD_CPU_GPU_CV 650mW/670mW VDD_SOC 650mW/711mW", (3168, 6851, 0, 2763)),
}


def test_statistics_on_known_samples():
    s = summarize(list(range(1, 101)), batch=4)
    assert (s.n, s.median_ms, s.mean_ms, s.min_ms, s.max_ms) == (100, 50.5, 50.5, 1, 100)
    assert s.p90_ms == pytest.approx(90.1) and s.p99_ms == pytest.approx(99.01)
    assert s.throughput_ips == pytest.approx(4000 / 50.5)
    assert added_per_task([2.0, 3.0, 5.5]) == [2.0, 1.0, 2.5]
    with pytest.raises(ValueError):
        summarize([])


@pytest.mark.parametrize("device", sorted(TEGRA_LINES))
def test_tegrastats_lines_parse(device):
    line, (used, total, gpu, power) = TEGRA_LINES[device]
    s = parse_tegrastats(line)
    assert (s.ram_used_mb, s.ram_total_mb, s.gpu_util_pct, s.power_mw) == (used, total, gpu, power)
    assert parse_tegrastats("tegrastats: no RAM field here") is None


def test_bundled_suites_load_and_bad_ones_are_refused(tmp_path):
    assert {"cpu-quick", "desktop-gpu", "jetson-orin"} <= set(available())
    quick = load_suite("cpu-quick")
    assert (quick.backbone, quick.input_size, quick.config.batch_sizes) == ("resnet50", (224, 224), [1, 8])
    assert [t.units for t in quick.tasks] == ["layer4"] * 3
    with pytest.raises(SubtuneError, match="unknown suite 'nope'; suites: cpu-quick"):
        load_suite("nope")
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\nbackends = ["ort-cpu"]\n')
    with pytest.raises(SubtuneError, match="malformed"):
        load_suite(str(bad))


def test_ideal_ratio_from_the_manifest_form_of_the_plan_matches_the_plan():
    backbone = backbone_for("resnet18")
    tasks = three_depth_tasks(backbone)
    plan = plan_from_json(json.loads(json.dumps(build_fused(backbone, tasks, (SIZE, SIZE)).plan.to_json())))
    assert ideal_ratio(plan, 3) == pytest.approx(plan.cost.ideal_ratio_flops)
    assert ideal_ratio(plan, 1) == pytest.approx(1.0)
    assert ideal_ratio(plan, 2) < 1 and ideal_ratio(plan, 3) < 1


@pytest.fixture(scope="module")
def small_export(tmp_path_factory):
    from subtune_edge.exporters import export_tasks

    backbone = backbone_for("resnet18")
    tasks = three_depth_tasks(backbone)
    out = tmp_path_factory.mktemp("bench") / "export"
    export_tasks(tasks, out, weights="random", input_size=(SIZE, SIZE), batch=(1, 4), separate=True)
    return out, tasks, backbone


@pytest.mark.slow
def test_harness_on_ort_and_torch_cpu_writes_a_complete_report(small_export, tmp_path):
    out, tasks, backbone = small_export
    config = BenchConfig(backends=["ort-cpu", "torch-cpu", "torch-cuda", "ort-cuda", "trt"], batch_sizes=[1, 2],
                         threads=1, budget=Budget(warmup=1, min_runs=3, max_runs=5, seconds=0.0))
    results = run_bench(out, config, tasks=tasks, backbone=backbone)
    jsonschema.validate(results, SCHEMA)
    ran = {r["backend"] for r in results["rows"]}
    assert ran == {"ort-cpu", "torch-cpu"}
    assert len(results["rows"]) == 2 * 2 * 3
    skipped = {s["backend"]: s["reason"] for s in results["skipped"]}
    import torch

    if not torch.cuda.is_available():
        assert "CUDA GPU" in skipped["torch-cuda"] and "trt" in skipped
    for r in results["rows"]:
        assert r["fused"]["n"] == r["separate"]["n"] >= 3
        # k = 1: the same model either way (names and graph metadata may differ by a few bytes)
        assert r["memory"]["fused_weight_bytes"] <= r["memory"]["separate_weight_bytes"] * 1.001
        if r["k"] == 3:
            assert r["memory"]["fused_weight_bytes"] < r["memory"]["separate_weight_bytes"]
            assert r["ideal_ratio_flops"] < 1
        assert r["fused_graph"] == ("module" if r["backend"] == "torch-cpu" else "pruned" if r["k"] < 3 else "full")
    rows = [r for r in results["rows"] if r["backend"] == "ort-cpu" and r["batch"] == 1]
    assert [r["added_ms_fused"] for r in rows] == pytest.approx(
        added_per_task([r["fused"]["median_ms"] for r in rows]))
    k3 = [r for r in results["rows"] if r["k"] == 3]
    assert all(r["ideal_ratio_flops"] == pytest.approx(results["export"]["plan_ideal_ratio_flops"]) for r in k3)
    paths = write_report(results, tmp_path / "report")
    assert "## ort-cpu, batch 2" in paths["markdown"].read_text()
    for name in ("latency_vs_tasks", "added_latency_per_task"):
        assert paths[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pruned_fused_graph_keeps_only_the_first_k_outputs(small_export):
    import onnx

    from subtune_edge.bench import prune_outputs

    out, tasks, _ = small_export
    pruned = prune_outputs(out / "model.onnx", [tasks[0].name], out.parent / "one.onnx")
    model = onnx.load(str(pruned))
    assert [o.name for o in model.graph.output] == [tasks[0].name]
    assert pruned.stat().st_size < (out / "model.onnx").stat().st_size


def test_bench_cli_needs_an_export_or_a_suite(tmp_path):
    result = CliRunner().invoke(main, ["bench", "--results", str(tmp_path)])
    assert result.exit_code == 2 and "give either EXPORT_DIR or --suite" in result.output
    result = CliRunner().invoke(main, ["bench", str(tmp_path / "missing"), "--results", str(tmp_path / "out")])
    assert result.exit_code == 2 and "no manifest.json in" in result.output and not (tmp_path / "out").exists()
    result = CliRunner().invoke(main, ["bench", "--suite", "cpu-quick", "--batch", "x", "--results",
                                       str(tmp_path / "out")])
    assert result.exit_code == 2 and "comma-separated list of integers" in result.output
