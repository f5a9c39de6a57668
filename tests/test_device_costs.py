import json

import pytest
from click.testing import CliRunner

from subtune_edge.bench.device_costs import measure_device_costs, read_costs
from subtune_edge.bench.harness import Budget
from subtune_edge.cli import main
from subtune_edge.errors import SubtuneError

pytestmark = pytest.mark.slow

TINY = Budget(warmup=1, min_runs=3, max_runs=5, seconds=0.0)


@pytest.fixture(scope="module")
def costs():
    return measure_device_costs("resnet18", backend="ort-cpu", input_size=(32, 32), threads=1, budget=TINY)


def test_cost_table_is_complete_and_flops_are_monotone(costs):
    from subtune_edge.backbone import create_backbone

    names = create_backbone("resnet18", "random").unit_names
    assert [r["unit"] for r in costs["units"]] == names
    flops = [r["branch_flops"] for r in costs["units"]]
    assert all(a >= b for a, b in zip(flops, flops[1:])), "a branch from an earlier unit is never cheaper"
    tail = [r["bytes_if_tail_tuned"] for r in costs["units"]]
    assert all(a >= b for a, b in zip(tail, tail[1:]))
    assert all(r["with_branch_ms"] > 0 and r["trunk_only_ms"] > 0 for r in costs["units"])
    assert costs["environment"]["cpu"] and costs["backend"] == "ort-cpu"


def test_latency_of_a_set_is_the_branch_at_its_first_unit(costs):
    from subtune_edge.search.latency import LatencyTable

    table = LatencyTable.from_json(costs)
    tail = [max(r["added_ms"], 0) for r in costs["units"] if r["index"] >= 2]
    assert table.latency([]) == 0
    assert table.latency(["layer4.1", "layer2.0"]) == pytest.approx(max(tail))
    lat = [table.latency([u]) for u, _ in table.added_ms]
    assert all(a >= b for a, b in zip(lat, lat[1:])), "an earlier branch point is never cheaper"
    with pytest.raises(SubtuneError, match="no unit 'blocks.0'"):
        table.latency(["blocks.0"])
    with pytest.raises(SubtuneError, match="measured for 'resnet18', not 'resnet50'"):
        table.check_model("resnet50")


def test_branch_flops_follow_the_core_branch_rule(costs):
    from subtune_edge.backbone import create_backbone
    from subtune_edge.cost import branch_flops, unit_costs

    backbone = create_backbone("resnet18", "random")
    flops = {c.name: c.flops for c in unit_costs(backbone, (32, 32))}
    head = 2 * backbone.num_features * costs["head_classes"]
    for r in costs["units"]:
        assert r["branch_flops"] == branch_flops(flops, backbone.unit_names, [r["unit"]]) + head
        assert backbone.unit_names[r["index"]] == r["unit"]


def test_torch_backend_and_cli(tmp_path):
    events = []
    c = measure_device_costs("resnet18", backend="torch-cpu", input_size=(32, 32), threads=1, budget=TINY,
                             units=["layer4.0", "layer4.1"], progress=events.append)
    assert [r["unit"] for r in c["units"]] == ["layer4.0", "layer4.1"]
    assert [(e.stage, e.done, e.total) for e in events] == [("profile-device", i, 2) for i in range(3)]
    assert [e.data.get("unit") for e in events[:2]] == ["layer4.0", "layer4.1"]
    out = tmp_path / "costs.json"
    result = CliRunner().invoke(main, ["profile-device", "resnet18", "--input-size", "32", "--seconds", "0",
                                       "--threads", "1", "--units", "layer4.1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert [r["unit"] for r in read_costs(out)["units"]] == ["layer4.1"]
    again = CliRunner().invoke(main, ["profile-device", "resnet18", "--input-size", "32", "--seconds", "0",
                                      "--threads", "1", "--units", "layer4.1", "--out", str(out)])
    assert again.exit_code == 0, again.output  # an earlier cost table is replaced
    out.write_text(json.dumps({"format": "other"}))
    with pytest.raises(SubtuneError, match="not a device cost table"):
        read_costs(out)
    refused = CliRunner().invoke(main, ["profile-device", "resnet18", "--input-size", "32", "--seconds", "0",
                                        "--units", "layer4.1", "--out", str(out)])
    assert refused.exit_code == 2
    assert refused.output.strip().splitlines()[-1].startswith("error: --out ")
    assert "not a device cost table" in refused.output
    assert json.loads(out.read_text()) == {"format": "other"}  # the user's file is kept
