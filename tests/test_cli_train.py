import json

from click.testing import CliRunner

from subtune_edge.cli import main
from subtune_edge.task import load_task

COMMON = ["--weights", "random", "--input-size", "32", "--epochs", "1", "--train-samples", "40",
          "--val-samples", "40", "--batch-size", "16", "--no-progress"]


def test_tune_with_chosen_blocks_writes_the_task(tmp_path):
    result = CliRunner().invoke(main, ["tune", "resnet18", "--data", "digits:parity", "--name", "parity",
                                       "--blocks", "layer4", "--task-dir", str(tmp_path), *COMMON])
    assert result.exit_code == 0, result.output
    task = load_task(tmp_path / "parity.safetensors")
    assert task.tuned_units == ["layer4.0", "layer4.1"] and task.labels == ["even", "odd"]
    assert task.training["mode"] == "subtune" and task.training["samples"] == 40
    assert task.preprocessing["input_size"] == [3, 32, 32]
    assert 0 <= task.training["val_accuracy"] <= 1  # asserted on the task file, not on text rich may wrap


def test_tune_auto_runs_greedy_and_logs_it(tmp_path):
    args = ["tune", "resnet18", "--data", "digits:ge5", "--name", "ge5", "--blocks", "auto", "--candidates",
            "layer4.1", "--max-units", "1", "--siamese", "--task-dir", str(tmp_path), *COMMON]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    log = json.loads((tmp_path / "ge5.runs.json").read_text())
    assert set(log["runs"]) == {"linear-probe|-|seed=0|fold=None", "siamese|layer4.1|seed=0|fold=None"}
    assert log["extra"]["greedy"]["chosen"] == "forward"
    front = json.loads((tmp_path / "ge5.front.json").read_text())
    assert front["chosen"] == log["extra"]["greedy"]["searches"]["forward"]["units"]
    task = load_task(tmp_path / "ge5.safetensors")
    assert task.siamese == bool(task.tuned_units)
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0, again.output
    # resumed from the log: the same runs, none trained again (their recorded times would differ)
    assert json.loads((tmp_path / "ge5.runs.json").read_text())["runs"] == log["runs"]


def test_profile_writes_json_and_plot(tmp_path):
    out = tmp_path / "prof"
    result = CliRunner().invoke(main, ["profile", "resnet18", "--data", "digits:digit", "--units", "layer4",
                                       "--window", "1,2", "--out", str(out), *COMMON])
    assert result.exit_code == 0, result.output
    prof = json.loads((out / "profile.json").read_text())
    assert [e["units"] for e in prof["entries"]] == [["layer4.0"], ["layer4.1"], ["layer4.0", "layer4.1"]]
    assert (out / "profile.png").read_bytes()[:4] == b"\x89PNG"
    assert prof["linear_probe"]["mode"] == "linear-probe" and prof["full_finetune"]["mode"] == "full-finetune"
    assert sorted(p.name for p in out.iterdir()) == ["profile.json", "profile.png", "runs.json"]


def test_bad_input_is_one_line_with_exit_2(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["tune", "resnet18", "--data", str(tmp_path / "nowhere"), "--name", "x",
                                  "--blocks", "none", *COMMON])
    assert result.exit_code == 2
    assert result.output.strip().startswith("error: data ") and len(result.output.strip().splitlines()) == 1
    result = runner.invoke(main, ["tune", "resnet18", "--data", "digits:parity", "--name", "x", "--blocks", "none",
                                  "--siamese", "--task-dir", str(tmp_path), *COMMON])
    assert result.exit_code == 2 and "Siamese SubTuning needs at least one tuned unit" in result.output
    result = runner.invoke(main, ["tune", "resnet18", "--data", "digits:parity", "--name", "x", "--blocks",
                                  "layer7", *COMMON])
    assert result.exit_code == 2 and "has no unit 'layer7'" in result.output
    result = runner.invoke(main, ["tune", "resnet18", "--data", "digits:parity", "--name", "x",
                                  "--max-params", "lots", *COMMON])
    assert result.exit_code == 2 and "is not a count" in result.output
    result = runner.invoke(main, ["profile", "resnet18", "--data", "digits:parity", "--window", "a",
                                  "--out", str(tmp_path / "p"), *COMMON])
    assert result.exit_code == 2 and "window sizes" in result.output
