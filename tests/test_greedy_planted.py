"""Greedy selection on a real model with a planted answer, the tie rule, and the final training's reuse.

The planted model is a random resnet18 whose ``layer4.0`` is cut: the batch norms closing its
residual branch and its shortcut have zero scale (and a small positive shift, so the ReLU after
them still passes gradients), so it outputs a constant and every frozen feature after it is the
same for every image. Only a set that tunes ``layer4.0`` can beat chance; greedy must find it.
"""

import json

import pytest
import timm
import torch

from subtune_edge.backbone import BackboneSpec
from subtune_edge.data import DataSpec
from subtune_edge.search import (
    GreedyConfig,
    RunLog,
    SearchSetup,
    SetCost,
    SetScore,
    final_setup,
    greedy_select,
    store_path,
    train_chosen,
)
from subtune_edge.search.greedy import _pick
from subtune_edge.train import TrainConfig, get_backbone

pytestmark = pytest.mark.slow

CANDIDATES = ("layer4.0", "layer4.1")


@pytest.fixture(scope="module")
def planted_weights(tmp_path_factory):
    model = timm.create_model("resnet18", pretrained=False)
    torch.manual_seed(0)
    state = model.state_dict()
    for key in ("layer4.0.bn2.weight", "layer4.0.downsample.1.weight", "layer4.0.downsample.1.bias"):
        state[key] = torch.zeros_like(state[key])
    state["layer4.0.bn2.bias"] = torch.full_like(state["layer4.0.bn2.bias"], 0.1)
    path = tmp_path_factory.mktemp("planted") / "resnet18-cut-layer4.0.safetensors"
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return str(path)


def _setup(weights: str, **kw) -> SearchSetup:
    base = dict(backbone=BackboneSpec("resnet18", weights),
                data=DataSpec("digits:digit", (32, 32), train_samples=150, val_samples=100),
                config=TrainConfig(epochs=8, batch_size=25, lr=1e-2, device="cpu"), folds=2)
    return SearchSetup(**(base | kw))


def test_greedy_finds_the_planted_unit_and_never_reports_a_score_it_selected_on(planted_weights, tmp_path):
    setup = _setup(planted_weights)
    log = RunLog(tmp_path / "search.json", setup.context())
    result = greedy_select(setup, GreedyConfig(candidates=CANDIDATES), log=log)
    rounds = result.searches["forward"]["rounds"]
    assert rounds[0]["best"] == ["layer4.0"] and rounds[0]["accepted"], rounds
    assert "layer4.0" in result.units
    first = {tuple(c["units"]): c["accuracy"] for c in rounds[0]["candidates"]}
    # without layer4.0 tuned, every feature is constant: chance (10 classes)
    assert rounds[0]["from_accuracy"] < 0.2 and first[("layer4.1",)] < 0.2
    assert first[("layer4.0",)] > 0.4
    # the search only ever saw folds of the training split ...
    runs = json.loads((tmp_path / "search.json").read_text())["runs"]
    assert runs and all(r["fold"] in (0, 1) for r in runs.values())
    assert result.runs == len(runs) and result.runs_per_set == 2
    assert result.run_seconds == pytest.approx(sum(r["seconds"] for r in runs.values()))
    chosen_runs = [r["accuracy"] for k, r in runs.items() if k.startswith(f"subtune|{'+'.join(result.units)}|")]
    assert result.accuracy == pytest.approx(sum(chosen_runs) / len(chosen_runs))
    # ... and the final model is trained on all of it and scored on the validation split, a new run
    val_log = RunLog(tmp_path / "final.json", final_setup(setup).context())
    chosen = train_chosen(setup, result.units, val_log, tmp_path / "store", name="digit")
    assert not chosen.reused and chosen.result["fold"] is None
    assert chosen.result["train_samples"] == 150 and chosen.result["val_samples"] == 100
    assert chosen.task.name == "digit" and chosen.task.tuned_units == result.units
    assert chosen.task.training["val_accuracy"] == chosen.result["final_accuracy"] > 0.4


def test_final_training_reuses_the_search_run_with_the_same_settings(tmp_path):
    setup = _setup("random", folds=0, config=TrainConfig(epochs=1, batch_size=16, device="cpu"),
                   data=DataSpec("digits:parity", (32, 32), train_samples=48, val_samples=40))
    log = RunLog(tmp_path / "search.json", setup.context())
    store = tmp_path / "store"
    result = greedy_select(setup, GreedyConfig(candidates=("layer4.1",), epsilon=0.0), log=log, store=store)
    spec = setup.specs(tuple(result.units), store)[0]
    assert store_path(store, spec).is_file()  # validation-split runs keep their task
    other = _setup("random", folds=0, config=setup.config, data=DataSpec("digits:ge5", (32, 32), train_samples=48,
                                                                          val_samples=40)).specs(tuple(result.units))[0]
    assert other.key == spec.key and store_path(store, other) != store_path(store, spec)  # one store, many tasks
    logged = dict(log.get(spec.key))
    chosen = train_chosen(setup, result.units, log, store, name="parity")
    assert chosen.reused and chosen.result == logged  # not trained again: the same recorded run
    assert chosen.task.name == "parity" and chosen.task.tuned_units == result.units
    store_path(store, spec).unlink()  # its task is gone: trained again, and recorded again
    again = train_chosen(setup, result.units, log, store, name="parity")
    assert not again.reused and store_path(store, spec).is_file()
    assert again.result["accuracy"] == pytest.approx(logged["accuracy"], abs=1e-6)  # seeded: the same run


def test_ties_within_one_standard_error_go_to_the_cheaper_set():
    backbone = get_backbone(BackboneSpec("resnet18", "random"))
    cost = SetCost(backbone, (32, 32))
    early, late = ["layer3.1"], ["layer4.1"]
    assert cost.flops(late) < cost.flops(early)

    def score(units, mean, std, runs=4):
        return SetScore(units, "subtune", mean, std, mean, mean, runs, 0.0)

    close = [score(early, 0.80, 0.04), score(late, 0.79, 0.04)]  # 0.01 apart, standard error 0.02
    assert _pick(close, float("-inf"), cost, prefer_cheaper=True).units == late
    assert _pick(close, float("-inf"), cost, prefer_cheaper=False).units == early
    apart = [score(early, 0.85, 0.04), score(late, 0.79, 0.04)]  # beyond one standard error: the better wins
    assert _pick(apart, float("-inf"), cost, prefer_cheaper=True).units == early
    single = [score(early, 0.80, 0.0, runs=1), score(late, 0.79, 0.0, runs=1)]  # one run each: no error bar
    assert _pick(single, float("-inf"), cost, prefer_cheaper=True).units == early
    # a cheaper set within the error that does not gain epsilon over the current set is not taken
    assert _pick(close, 0.795, cost, prefer_cheaper=True).units == early
    assert _pick(close, 0.9, cost, prefer_cheaper=True) is None
