import json

import pytest

from subtune_edge.backbone import BackboneSpec
from subtune_edge.data import DataSpec
from subtune_edge.errors import SubtuneError
from subtune_edge.search import (
    GreedyConfig,
    LocalExecutor,
    ProcessExecutor,
    RunLog,
    SearchSetup,
    finetuning_profile,
    greedy_select,
    plot_profile,
    profile_sets,
)
from subtune_edge.train import RunSpec, TrainConfig, execute_run

SIZE = 32
LAST = ("layer4.0", "layer4.1")


def _setup(**kw) -> SearchSetup:
    base = dict(backbone=BackboneSpec("resnet18", "random"),
                data=DataSpec("digits:parity", (SIZE, SIZE), train_samples=48, val_samples=40),
                config=TrainConfig(epochs=1, batch_size=16))
    return SearchSetup(**(base | kw))


def test_greedy_forward_picks_a_set_and_logs_every_run(tmp_path):
    log = RunLog(tmp_path / "runs.json", _setup().context())
    rounds = []
    result = greedy_select(_setup(), GreedyConfig(candidates=LAST, max_units=1, epsilon=0.0), log=log,
                           progress=lambda e: e.data.get("event") == "round" and rounds.append(e.data))
    assert result.direction == "forward" and len(result.units) <= 1
    assert result.new_runs == 3 and result.reused_runs == 0  # {} then {layer4.0}, {layer4.1}
    saved = json.loads((tmp_path / "runs.json").read_text())
    assert set(saved["runs"]) == {"linear-probe|-|seed=0|fold=None", "subtune|layer4.0|seed=0|fold=None",
                                  "subtune|layer4.1|seed=0|fold=None"}
    for run in saved["runs"].values():
        assert 0 <= run["accuracy"] <= 1 and run["seconds"] > 0 and run["units"] in ([], ["layer4.0"], ["layer4.1"])
    assert saved["extra"]["greedy"]["chosen"] == "forward"
    first = rounds[0]
    assert [c["units"] for c in first["candidates"]] == [["layer4.0"], ["layer4.1"]]
    best = max(first["candidates"], key=lambda c: c["accuracy"])
    if first["accepted"]:  # the best; of equal scores the cheaper branch (layer4.1 starts later)
        tied = [c["units"] for c in first["candidates"] if c["accuracy"] == best["accuracy"]]
        assert result.accuracy == best["accuracy"] and result.units == tied[-1]
    # only one round: the unit budget leaves no second candidate
    assert len(rounds) == 1


def test_resumed_search_does_not_redo_finished_runs(tmp_path):
    path = tmp_path / "runs.json"
    setup, greedy = _setup(), GreedyConfig(candidates=LAST, max_units=1, epsilon=0.0)
    first = greedy_select(setup, greedy, log=RunLog(path, setup.context()))
    done = json.loads(path.read_text())
    # an interrupted search: the last run never got written
    lost = "subtune|layer4.1|seed=0|fold=None"
    partial = dict(done, runs={k: v for k, v in done["runs"].items() if k != lost})
    path.write_text(json.dumps(partial))
    ran = []
    resumed = greedy_select(setup, greedy, log=RunLog(path, setup.context()),
                            progress=lambda e: e.data.get("event") == "run" and ran.append((e.data["key"],
                                                                                           e.data["reused"])))
    assert resumed.new_runs == 1 and resumed.reused_runs == 2
    assert [k for k, reused in ran if not reused] == [lost]
    assert resumed.units == first.units
    again = greedy_select(setup, greedy, log=RunLog(path, setup.context()))
    assert again.new_runs == 0 and again.reused_runs == 3
    other = _setup(config=TrainConfig(epochs=2, batch_size=16))
    with pytest.raises(SubtuneError, match=r"written for other settings \(config.epochs: 1 in the log, 2 now\)"):
        RunLog(path, other.context())


def test_backward_search_removes_units_until_the_budget_fits():
    setup = _setup()
    result = greedy_select(setup, GreedyConfig(direction="backward", candidates=("layer3.1", *LAST), max_units=1))
    rounds = result.searches["backward"]["rounds"]
    assert rounds[0]["forced"] and rounds[0]["from"] == ["layer3.1", *LAST]
    assert rounds[1]["forced"] and len(rounds[1]["best"]) == 1
    assert len(result.units) <= 1
    # no unit fits one parameter: forced removals end at the linear probe
    probe = greedy_select(setup, GreedyConfig(direction="backward", candidates=LAST, max_params=1))
    assert probe.units == [] and probe.params == 0
    with pytest.raises(SubtuneError, match="forward, backward or both"):
        GreedyConfig(direction="sideways")


def test_both_directions_keep_the_better_and_share_runs():
    result = greedy_select(_setup(), GreedyConfig(direction="both", candidates=LAST, epsilon=0.0))
    assert set(result.searches) == {"forward", "backward"}
    best = max(result.searches.values(), key=lambda s: s["accuracy"])
    assert result.accuracy == best["accuracy"]
    # {}, {layer4.0}, {layer4.1}, {layer4.0, layer4.1}: every set trained once across both searches
    assert result.new_runs <= 4


def test_kfold_and_seeds_score_sets_by_their_mean():
    setup = _setup(folds=2, seeds=(0, 1))
    keys = [s.key for s in setup.specs(("layer4.1",))]
    assert keys == [f"subtune|layer4.1|seed={s}|fold={f}" for s in (0, 1) for f in (0, 1)]
    result = greedy_select(setup, GreedyConfig(candidates=("layer4.1",), epsilon=1.0))
    assert result.units == [] and result.new_runs == 8
    with pytest.raises(SubtuneError, match="at least 2 folds"):
        _setup(folds=1)


def test_profile_windows_references_and_plot(tmp_path):
    assert [w for _, w, _ in profile_sets(["a", "b", "c"], (1, 2, 3))] == [1, 1, 1, 2, 2, 3]
    assert [u for _, _, u in profile_sets(["a", "b", "c"], (2,), ["b", "c"])] == [("b", "c")]
    setup = _setup(seeds=(0, 1))
    runs = []
    prof = finetuning_profile(setup, (1, 2), ["layer3.1", *LAST], log=RunLog(tmp_path / "runs.json"),
                              progress=lambda e: e.stage == "search" and runs.append(e.data))
    assert [(e["window"], e["units"]) for e in prof.entries] == [
        (1, ["layer3.1"]), (1, ["layer4.0"]), (1, ["layer4.1"]), (2, ["layer3.1", "layer4.0"]), (2, list(LAST))]
    assert all(e["runs"] == 2 and e["std"] >= 0 and e["min"] <= e["mean"] <= e["max"] for e in prof.entries)
    assert prof.linear_probe["mode"] == "linear-probe" and prof.full_finetune["mode"] == "full-finetune"
    assert len(runs) == 7 * 2 == prof.new_runs
    png = plot_profile(prof, tmp_path / "profile.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    json.dumps(prof.to_json())


def test_executors_return_plain_results():
    data = DataSpec("digits:ge5", (SIZE, SIZE), train_samples=24, val_samples=24)
    specs = [RunSpec(BackboneSpec("resnet18", "random"), data, units, TrainConfig(epochs=1, batch_size=12))
             for units in ((), ("layer4.1",))]
    local = {r.key: r for r in LocalExecutor("cpu").map(execute_run, specs)}
    with ProcessExecutor(["cpu"], threads_per_worker=2) as ex:
        remote = {r.key: r for r in ex.map(execute_run, specs)}
    assert set(local) == set(remote) == {s.key for s in specs}
    for key in local:  # another process rebuilds the same backbone, data and run
        assert remote[key].accuracy == pytest.approx(local[key].accuracy, abs=1e-6)
        assert json.loads(json.dumps(remote[key].to_json()))["key"] == key
