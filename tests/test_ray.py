"""The Ray executor on a local Ray instance: same runs as the local executor, retried worker deaths, resume."""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from subtune_edge.backbone import BackboneSpec
from subtune_edge.data import DataSpec
from subtune_edge.errors import RuntimeMissingError, SubtuneError
from subtune_edge.search import (
    Evaluator,
    LocalExecutor,
    RayExecutor,
    RunLog,
    SearchSetup,
    finetuning_profile,
    make_executor,
    parse_address,
)
from subtune_edge.train import TrainConfig, execute_run

pytestmark = pytest.mark.slow

try:
    import ray
except ImportError:  # the `dist` extra is not installed: only the install-hint test runs
    ray = None

needs_ray = pytest.mark.skipif(ray is None, reason="Ray is not installed (pip install 'subtune-edge[dist]')")

UNITS = ["layer3.1", "layer4.0", "layer4.1"]


def _setup(seeds=(0, 1)) -> SearchSetup:
    return SearchSetup(BackboneSpec("resnet18", "random"),
                       DataSpec("digits:parity", (32, 32), train_samples=32, val_samples=32),
                       TrainConfig(epochs=1, batch_size=16), seeds=tuple(seeds))


@pytest.fixture(scope="module")
def ray_instance():
    root = str(Path(__file__).resolve().parents[1])
    # workers import this test module (the killing run fn below) and subtune_edge from the checkout
    env = {"env_vars": {"PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
                        "OMP_NUM_THREADS": "1"}}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env=env)
    yield ray
    ray.shutdown()


def killing_run(spec, device, *, marker_dir: str, victim: str):
    """execute_run, except that the first attempt at ``victim`` kills its own worker process."""
    marker = Path(marker_dir)
    safe = spec.key.replace("|", "_").replace("=", "-")
    with open(marker / f"{safe}.attempts", "a") as f:
        f.write(f"{os.getpid()}\n")
    if spec.key == victim and not (marker / "killed").exists():
        (marker / "killed").write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return execute_run(spec, device)


@needs_ray
def test_profile_on_ray_matches_the_local_executor(ray_instance, tmp_path):
    setup = _setup()
    local = finetuning_profile(setup, (1,), UNITS, executor=LocalExecutor("cpu"),
                               log=RunLog(tmp_path / "local.json", setup.context()))
    executor = RayExecutor()  # joins the running instance
    assert executor.slots == 2 and executor.gpus_per_run == 0 and "2 runs at a time" in executor.describe()
    log = RunLog(tmp_path / "ray.json", setup.context())
    arrived = []
    remote = finetuning_profile(setup, (1,), UNITS, executor=executor, log=log,
                                progress=lambda e: e.stage == "search" and arrived.append(e.data["key"]))
    executor.close()  # did not start Ray: leaves it running
    assert ray.is_initialized()
    # 3 units + linear probe + full finetuning, 2 seeds each
    assert remote.new_runs == local.new_runs == 10 and len(set(arrived)) == 10
    local_runs = json.loads((tmp_path / "local.json").read_text())["runs"]
    ray_runs = json.loads((tmp_path / "ray.json").read_text())["runs"]
    assert set(local_runs) == set(ray_runs)
    for key, run in local_runs.items():
        assert ray_runs[key]["accuracy"] == pytest.approx(run["accuracy"], abs=1e-9), key
        assert ray_runs[key]["seed"] == run["seed"]
    assert [e["mean"] for e in remote.entries] == pytest.approx([e["mean"] for e in local.entries], abs=1e-9)


@needs_ray
def test_killed_worker_is_retried_and_logged_once(ray_instance, tmp_path):
    setup = _setup(seeds=(0,))
    marker = tmp_path / "attempts"
    marker.mkdir()
    victim = "subtune|layer4.0|seed=0|fold=None"
    fn = functools.partial(killing_run, marker_dir=str(marker), victim=victim)
    path = tmp_path / "runs.json"
    executor = RayExecutor(max_retries=2)
    ev = Evaluator(setup, executor, RunLog(path, setup.context()))
    ev.fn = fn
    sets = [(u,) for u in UNITS] + [()]
    scores = ev.score_many(sets)
    assert (marker / "killed").exists()  # the kill really happened
    attempts = {p.stem: len(p.read_text().split()) for p in marker.glob("*.attempts")}
    victim_file = victim.replace("|", "_").replace("=", "-")
    assert attempts.pop(victim_file) == 2  # killed once, retried once
    assert set(attempts.values()) == {1}  # every other run ran exactly once
    saved = json.loads(path.read_text())["runs"]
    assert len(saved) == 4 and victim in saved and all(0 <= s.mean <= 1 for s in scores)
    assert ev.new_runs == 4

    # the search is interrupted and started again: nothing finished is repeated
    saved.pop(victim)
    data = json.loads(path.read_text())
    path.write_text(json.dumps(dict(data, runs=saved)))
    ev2 = Evaluator(setup, RayExecutor(), RunLog(path, setup.context()))
    ev2.fn = fn
    ev2.score_many(sets)
    assert ev2.new_runs == 1 and ev2.reused_runs == 3
    attempts = {p.stem: len(p.read_text().split()) for p in marker.glob("*.attempts")}
    assert attempts.pop(victim_file) == 3 and set(attempts.values()) == {1}
    assert len(json.loads(path.read_text())["runs"]) == 4


@needs_ray
def test_make_executor_and_address_parsing(ray_instance):
    assert parse_address("ray") is None
    assert parse_address("ray:auto") == "auto"
    assert parse_address("ray:ray://head:10001") == "ray://head:10001"
    assert parse_address("ray:10.0.0.1:6379") == "10.0.0.1:6379"
    with pytest.raises(SubtuneError, match="not a Ray executor"):
        parse_address("ray:")
    ex = make_executor(1, "cpu", kind="ray")
    assert isinstance(ex, RayExecutor) and ex.slots == 1
    assert isinstance(make_executor(1, "cpu", kind="local"), LocalExecutor)
    with pytest.raises(SubtuneError, match="unknown executor"):
        make_executor(1, "cpu", kind="dask")
    with pytest.raises(SubtuneError, match="no GPU"):
        RayExecutor(gpus_per_run=1)


def test_missing_ray_fails_at_once_with_the_install_hint(monkeypatch):
    from click.testing import CliRunner

    from subtune_edge.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(RuntimeMissingError, match=r"pip install 'subtune-edge\[dist\]'"):
        make_executor(1, "cpu", kind="ray")
    res = CliRunner().invoke(main, ["profile", "no-such-model", "--data", "digits:parity", "--out", "x",
                                    "--executor", "ray"])
    assert res.exit_code == 2 and "pip install 'subtune-edge[dist]'" in res.output
    assert "no-such-model" not in res.output  # refused before the model was looked up


@needs_ray
def test_profile_command_on_ray_resumes_from_its_log(ray_instance, tmp_path):
    from click.testing import CliRunner

    from subtune_edge.cli import main

    args = ["profile", "resnet18", "--weights", "random", "--data", "digits:parity", "--input-size", "32",
            "--epochs", "1", "--batch-size", "16", "--train-samples", "32", "--val-samples", "32",
            "--units", "layer4.1", "--out", str(tmp_path), "--no-progress", "--executor", "ray"]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    written = json.loads((tmp_path / "profile.json").read_text())  # JSON, not text rich wraps at the width
    assert (written["new_runs"], written["reused_runs"]) == (3, 0)
    assert len(json.loads((tmp_path / "runs.json").read_text())["runs"]) == 3
    again = CliRunner().invoke(main, args + ["--workers", "1"])
    assert again.exit_code == 0, again.output
    written = json.loads((tmp_path / "profile.json").read_text())
    assert (written["new_runs"], written["reused_runs"]) == (0, 3)
    assert ray.is_initialized()  # the command joined the test's Ray instance and left it running
