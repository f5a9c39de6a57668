import json

import pytest

from subtune_edge.backbone import BackboneSpec
from subtune_edge.data import DataSpec
from subtune_edge.errors import SubtuneError
from subtune_edge.search import GreedyConfig, SearchSetup, greedy_select
from subtune_edge.search.latency import COSTS_FORMAT, LatencyTable, front_report, pareto_front, plot_front
from subtune_edge.train import TrainConfig

from .helpers import tampered

UNITS = ["layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0", "layer3.1", "layer4.0", "layer4.1"]
# a made-up device: a branch costs more the earlier it starts
TABLE = LatencyTable("resnet18", "ort-cpu", 1, "test device", tuple((u, 8.0 - i) for i, u in enumerate(UNITS)))


def _setup() -> SearchSetup:
    return SearchSetup(BackboneSpec("resnet18", "random"),
                       DataSpec("digits:parity", (32, 32), train_samples=48, val_samples=40),
                       TrainConfig(epochs=1, batch_size=16))


def test_latency_of_a_set_is_its_earliest_branch():
    assert TABLE.latency([]) == 0
    assert TABLE.latency(["layer4.1"]) == 1.0
    assert TABLE.latency(["layer4.1", "layer3.0"]) == 4.0


def test_pareto_front_keeps_only_undominated_points():
    pts = [{"units": ["a"], "accuracy": 0.8, "added_ms": 1.0}, {"units": ["b"], "accuracy": 0.7, "added_ms": 2.0},
           {"units": ["c"], "accuracy": 0.9, "added_ms": 3.0}, {"units": [], "accuracy": 0.6, "added_ms": 0.0}]
    assert [p["units"] for p in pareto_front(pts)] == [[], ["a"], ["c"]]


@pytest.mark.parametrize("budget", [0.5, 1.5, 2.5])
def test_budgeted_greedy_never_returns_a_set_over_budget(budget, tmp_path):
    greedy = GreedyConfig(candidates=("layer3.1", "layer4.0", "layer4.1"), epsilon=0.0, max_latency_ms=budget,
                          latency_table=TABLE)
    result = greedy_select(_setup(), greedy)
    assert TABLE.latency(result.units) <= budget
    evaluated = [c["units"] for s in result.searches.values() for r in s["rounds"] for c in r["candidates"]]
    assert all(TABLE.latency(u) <= budget for u in evaluated), "sets over budget are never even trained"
    report = front_report(result.searches, result.units, TABLE.latency)
    assert report["chosen"] == result.units and any(p["chosen"] for p in report["points"])
    assert plot_front(report, tmp_path / "front.png", "test", budget=budget).read_bytes()[:4] == b"\x89PNG"


def test_latency_budget_needs_a_table_for_the_same_model():
    with pytest.raises(SubtuneError, match="needs a device cost table"):
        GreedyConfig(max_latency_ms=1.0)
    other = LatencyTable("resnet50", "ort-cpu", 1, "x", TABLE.added_ms)
    with pytest.raises(SubtuneError, match="measured for 'resnet50', not 'resnet18'"):
        greedy_select(_setup(), GreedyConfig(max_latency_ms=1.0, latency_table=other))


GOOD_TABLE = {"format": "subtune-edge.device-costs", "model": "resnet18", "backend": "ort-cpu", "batch": 1,
              "units": [{"unit": "layer4.1", "index": 7, "added_ms": 1.0}]}


@pytest.mark.parametrize("edit, field", [
    (lambda t: [t], "not a device cost table"),
    (lambda t: {**t, "units": "abc"}, "'units'"),
    (lambda t: {**t, "units": []}, "'units'"),
    (lambda t: {**t, "units": [None]}, "'units[0]'"),
    (lambda t: {**t, "units": [{"unit": "layer4.1", "index": 7, "added_ms": "fast"}]}, "'units[0]'"),
    (lambda t: {**t, "batch": "one"}, "'batch'"),
    (lambda t: {**t, "model": 5}, "'model'"),
    (lambda t: {**t, "environment": "x"}, None),     # ignored: only describes the device
])
def test_malformed_cost_tables_are_refused_in_one_line(tmp_path, edit, field):
    good = {**GOOD_TABLE, "format": COSTS_FORMAT}
    path = tmp_path / "costs.json"
    tampered(path).write_text(json.dumps(edit(good)))
    if field is None:
        assert LatencyTable.read(path).added_ms == (("layer4.1", 1.0),)
        return
    with pytest.raises(SubtuneError) as err:
        LatencyTable.read(path)
    assert field in str(err.value) and "\n" not in str(err.value)
