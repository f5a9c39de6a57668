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


def test_tune_auto_reuses_the_search_run_and_reports_its_cost(tmp_path):
    args = ["tune", "resnet18", "--data", "digits:parity", "--name", "p", "--blocks", "auto", "--candidates",
            "layer4.1", "--epsilon", "0", "--task-dir", str(tmp_path), *COMMON]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    log = json.loads((tmp_path / "p.runs.json").read_text())
    front = json.loads((tmp_path / "p.front.json").read_text())
    g = front["greedy"]
    assert g["selected_on"] == "validation split" and g["runs"] == len(log["runs"]) and g["runs_per_set"] == 1
    assert g["run_seconds"] == sum(r["seconds"] for r in log["runs"].values())
    task = load_task(tmp_path / "p.safetensors")
    key = f"{task.training['mode']}|{'+'.join(task.tuned_units) or '-'}|seed=0|fold=None"
    # the search trained this very run: the task is its stored copy, not a second training
    assert task.training["seconds"] == log["runs"][key]["seconds"]
    assert task.training["val_accuracy"] == log["runs"][key]["final_accuracy"]


def test_tune_auto_with_folds_selects_inside_the_training_split(tmp_path):
    args = ["tune", "resnet18", "--data", "digits:parity", "--name", "p", "--blocks", "auto", "--candidates",
            "layer4.1", "--folds", "2", "--task-dir", str(tmp_path), *COMMON]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    search = json.loads((tmp_path / "p.runs.json").read_text())["runs"]
    assert search and all(r["fold"] in (0, 1) for r in search.values())  # the validation split unseen
    final = json.loads((tmp_path / "p.runs.final.json").read_text())["runs"]
    assert [r["fold"] for r in final.values()] == [None]
    front = json.loads((tmp_path / "p.front.json").read_text())
    assert front["greedy"]["selected_on"] == "2-fold" and front["greedy"]["runs_per_set"] == 2
    task = load_task(tmp_path / "p.safetensors")
    assert task.training["samples"] == 40 and task.training["val_samples"] == 40  # trained on all of it
    assert task.training["val_accuracy"] == next(iter(final.values()))["final_accuracy"]
