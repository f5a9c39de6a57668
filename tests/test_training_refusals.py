"""Issue 12, training and search: bad input is refused in one line, before any work, and leaves nothing behind."""

from __future__ import annotations

import json
import os
import stat

import pytest
from click.testing import CliRunner

from subtune_edge.cli import main
from subtune_edge.data import DataSpec, load_data
from subtune_edge.errors import SubtuneError
from subtune_edge.search import RunLog
from subtune_edge.search.runlog import LOG_FORMAT
from subtune_edge.train import TrainConfig, train

from .helpers import backbone_for, tampered

COMMON = ["--weights", "random", "--input-size", "32", "--epochs", "1", "--train-samples", "32",
          "--val-samples", "16", "--batch-size", "16", "--no-progress"]


def _tune(tmp_path, *extra, name="x", blocks="none"):
    return CliRunner().invoke(main, ["tune", "resnet18", "--data", "digits:parity", "--name", name, "--blocks",
                                     blocks, "--task-dir", str(tmp_path / "tasks"), *COMMON, *extra])


def _one_line_error(result) -> str:
    """The error the CLI printed: exit 2, no traceback, a single line."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = [ln for ln in result.output.strip().splitlines() if ln.startswith(("error:", "Error:"))]
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.mark.parametrize("flag,value", [("--lr", "inf"), ("--lr", "nan"), ("--lr", "-1"), ("--lr", "0"),
                                        ("--weight-decay", "-1"), ("--weight-decay", "inf")])
def test_bad_learning_rate_or_weight_decay_is_refused_at_parse_time(tmp_path, flag, value):
    line = _one_line_error(_tune(tmp_path, flag, value))
    assert f"Invalid value for '{flag}'" in line and value in line
    assert not (tmp_path / "tasks").exists()


@pytest.mark.parametrize("field,value", [("lr", float("inf")), ("lr", float("nan")), ("lr", -1.0), ("lr", 0.0),
                                         ("weight_decay", -1.0), ("weight_decay", float("nan")),
                                         ("epochs", 0), ("label_smoothing", 1.0), ("warmup", 2.0),
                                         ("select", "worst")])
def test_train_config_names_the_field_it_refuses(field, value):
    with pytest.raises(SubtuneError) as info:
        TrainConfig(**{field: value})
    assert info.value.param == field and str(info.value).startswith(f"{field} must be")


def test_a_diverging_run_stops_in_one_line_and_writes_no_task(tmp_path):
    backbone = backbone_for("resnet18")
    data = load_data(DataSpec("digits:parity", (32, 32), train_samples=32, val_samples=16), backbone.data_config)
    with pytest.raises(SubtuneError, match=r"^training diverged at epoch \d+ step \d+ \(loss (nan|inf)\); lower lr"):
        train(backbone, data, ["layer4.1"], TrainConfig(epochs=2, batch_size=16, lr=1e30))
    with pytest.raises(SubtuneError, match=r"training diverged at epoch 1 step 1 \(loss inf\)"):
        train(backbone, data, [], TrainConfig(epochs=1, batch_size=16, lr=1e38))  # AdamW's step overflows
    line = _one_line_error(_tune(tmp_path, "--lr", "1e30", "--epochs", "2", blocks="layer4.1"))
    assert line.startswith("error: training diverged at epoch") and "lower --lr" in line
    assert not list((tmp_path / "tasks").glob("*.safetensors"))


@pytest.mark.parametrize("name", ["../escaped", "", "a/b", "..", "a\\b"])
def test_task_names_that_leave_the_task_dir_are_refused(tmp_path, name):
    line = _one_line_error(_tune(tmp_path, name=name))
    assert "Invalid value for '--name'" in line
    assert not list(tmp_path.rglob("*.safetensors")) and not (tmp_path / "tasks").exists()


def _log(runs, **top):
    return {"format": LOG_FORMAT, "version": 1, "context": {}, "runs": runs, "extra": {}} | top


GOOD_RUN = {"key": "linear-probe|-|seed=0|fold=None", "units": [], "mode": "linear-probe", "seed": 0, "fold": None,
            "accuracy": 0.5, "final_accuracy": 0.5, "best_accuracy": 0.5, "seconds": 1.0, "device": "cpu",
            "epochs": 1, "train_samples": 32, "val_samples": 16, "prefix_cache": True, "history": []}
BAD_LOGS = {
    "a list": ([], "not a subtune-edge run log (a list)"),
    "runs a string": (_log("abc"), "'runs' is a string \"abc\", expected an object"),
    "a run without accuracy": (_log({"k": {k: v for k, v in GOOD_RUN.items() if k != "accuracy"}}),
                               "'runs.k.accuracy' is missing, expected a number"),
    "accuracy a string": (_log({"k": dict(GOOD_RUN, accuracy="high")}),
                          "'runs.k.accuracy' is a string \"high\", expected a number"),
    "a null run": (_log({"k": None}), "'runs.k' is null, expected an object"),
    "context a list": (_log({}, context=[1]), "'context' is a list, expected an object"),
    "extra a string": (_log({}, extra="x"), "'extra' is a string \"x\", expected an object"),
    "another format": ({"format": "x", "runs": {}}, "not a subtune-edge run log"),
    "not JSON": ("{", "unreadable"),
}


@pytest.mark.parametrize("case", list(BAD_LOGS))
def test_a_malformed_run_log_is_refused_naming_the_file_and_the_field(tmp_path, case):
    content, expected = BAD_LOGS[case]
    path = tmp_path / "runs.json"
    tampered(path).write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(SubtuneError) as info:
        RunLog(path)
    message = str(info.value)
    assert str(path) in message and expected in message and "\n" not in message
    assert path.read_text() == (content if isinstance(content, str) else json.dumps(content))  # left as it was


def test_a_good_run_log_still_reads():
    assert RunLog(None).runs == {}


def test_tune_auto_refuses_a_malformed_log_before_training(tmp_path):
    log = tmp_path / "bad.runs.json"
    tampered(log).write_text(json.dumps(_log({"k": None})))
    line = _one_line_error(_tune(tmp_path, "--log", str(log), "--candidates", "layer4.1", blocks="auto"))
    assert line.startswith(f"error: run log {log}") and "'runs.k' is null, expected an object" in line
    assert not (tmp_path / "tasks").exists()


def test_an_unwritable_task_dir_is_refused_before_any_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    line = _one_line_error(CliRunner().invoke(main, [
        "tune", "resnet18", "--data", "digits:parity", "--name", "x", "--blocks", "auto", "--candidates",
        "layer4.1", "--task-dir", str(blocker / "tasks"), *COMMON]))
    assert line.startswith("error: cannot write to --task-dir") and "is a file" in line
    assert blocker.read_text() == "not a folder"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_task_dir_is_refused_before_any_training(tmp_path):
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    tasks.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        line = _one_line_error(_tune(tmp_path, "--candidates", "layer4.1", blocks="auto"))
        assert line.startswith("error: cannot write to --task-dir")
        assert not list(tasks.iterdir())
    finally:
        tasks.chmod(stat.S_IRWXU)


PROFILE = ["profile", "resnet18", "--data", "digits:parity", "--units", "layer4.1", *COMMON]


def test_profile_refuses_a_foreign_folder_and_replaces_its_own(tmp_path):
    foreign = tmp_path / "ext"
    foreign.mkdir()
    (foreign / "background.js").write_text("js")
    (foreign / "runs.json").write_text(json.dumps(_log({})))
    line = _one_line_error(CliRunner().invoke(main, [*PROFILE, "--out", str(foreign)]))
    assert "is a non-empty folder that is not a profile" in line
    assert sorted(p.name for p in foreign.iterdir()) == ["background.js", "runs.json"]
    assert json.loads((foreign / "runs.json").read_text())["runs"] == {}  # no run was trained into it

    out = tmp_path / "prof"
    first = CliRunner().invoke(main, [*PROFILE, "--out", str(out)])
    assert first.exit_code == 0, first.output
    again = CliRunner().invoke(main, [*PROFILE, "--out", str(out)])  # its own earlier profile: replaced
    assert again.exit_code == 0, again.output
    prof = json.loads((out / "profile.json").read_text())
    assert (prof["new_runs"], prof["reused_runs"]) == (0, 3)
    assert sorted(p.name for p in out.iterdir()) == ["profile.json", "profile.png", "runs.json"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_torchrun_entry_takes_the_same_training_options():
    from subtune_edge.commands.train import tune
    from subtune_edge.distributed import command

    shared = {p.name for p in tune.params} & {p.name for p in command.params}
    for name in ("label_smoothing", "val_fraction", "lr", "weight_decay", "data_source", "input_size", "name"):
        assert name in shared
    result = CliRunner().invoke(command, ["resnet18", "--data", "digits:parity", "--blocks", "none", "--name",
                                          "x", "--val-fraction", "1.5"])
    assert result.exit_code == 2 and "Invalid value for '--val-fraction'" in result.output
    result = CliRunner().invoke(command, ["resnet18", "--data", "digits:parity", "--blocks", "none", "--name",
                                          "../x", "--lr", "1e-3"])
    assert result.exit_code == 2 and "Invalid value for '--name'" in result.output
