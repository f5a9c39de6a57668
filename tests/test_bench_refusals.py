"""Issue 12 for `bench` / `profile-device`: results folders that are not ours are refused (their
files kept), tampered exports are refused before anything runs, bad numbers are refused at parse
time, and library text printed through rich keeps its brackets."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import jsonschema
import pytest
from click.testing import CliRunner
from rich.console import Console

from subtune_edge.bench import BenchConfig, Budget, is_results_dir, load_suite, run_bench, run_suite, write_report
from subtune_edge.bench.report import results_schema
from subtune_edge.cli import main
from subtune_edge.commands.bench import render_results
from subtune_edge.errors import SubtuneError
from subtune_edge.progress import Event
from subtune_edge.synthetic import synthetic_task

from .helpers import SIZE, backbone_for

TINY = Budget(warmup=0, min_runs=2, max_runs=2, seconds=0.0)
FAST = ["--batch", "1", "--seconds", "0", "--max-tasks", "1", "--threads", "1"]


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    from subtune_edge.exporters import export_tasks

    backbone = backbone_for("resnet18")
    names = backbone.unit_names
    tasks = [synthetic_task(backbone, "a", [names[-1]], 3, seed=0, input_size=(SIZE, SIZE)),
             synthetic_task(backbone, "b", [names[-2]], 4, seed=1, input_size=(SIZE, SIZE))]
    out = tmp_path_factory.mktemp("hardening") / "export"
    export_tasks(tasks, out, weights="random", input_size=(SIZE, SIZE), batch=(1, 2), separate=True)
    return out


@pytest.fixture(scope="module")
def results(export) -> dict:
    return run_bench(export, BenchConfig(batch_sizes=[1], threads=1, budget=TINY, max_tasks=1))


def _bench(export: Path, results_dir: Path, *extra: str):
    return CliRunner().invoke(main, ["bench", str(export), "--results", str(results_dir), *FAST, *extra])


def _one_line_error(result, *needles: str) -> str:
    """The CLI failed with exit 2 and one `error:` line (no traceback) that names ``needles``."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1, result.output
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def _no_partials(parent: Path) -> None:
    assert not [p for p in parent.iterdir() if p.name.endswith(".partial")]


# -- (1) a results folder is replaced only when it holds an earlier bench's results -----------------
def test_results_folder_with_foreign_files_is_refused_and_kept(export, tmp_path):
    foreign = tmp_path / "site"
    foreign.mkdir()
    (foreign / "background.js").write_text("js")
    _one_line_error(_bench(export, foreign), "--results", "not benchmark results")
    assert [p.name for p in foreign.iterdir()] == ["background.js"]
    _no_partials(tmp_path)

    a_file = tmp_path / "file"
    a_file.write_text("x")
    refused = _bench(export, a_file)  # click's own check of the path type
    assert refused.exit_code == 2 and "Invalid value for '--results'" in refused.output
    assert a_file.read_text() == "x"
    with pytest.raises(SubtuneError, match="out_dir .* is a file"):
        write_report({"export": {}}, a_file)


def test_earlier_results_are_replaced_but_not_with_extra_files(export, tmp_path):
    out = tmp_path / "bench"
    first = _bench(export, out)
    assert first.exit_code == 0, first.output
    assert is_results_dir(out)
    first_created = json.loads((out / "results.json").read_text())["environment"]["created"]
    again = _bench(export, out)
    assert again.exit_code == 0, again.output
    jsonschema.validate(json.loads((out / "results.json").read_text()), results_schema())
    assert json.loads((out / "results.json").read_text())["environment"]["created"] >= first_created
    _no_partials(tmp_path)

    (out / "notes.txt").write_text("mine")
    assert not is_results_dir(out)
    _one_line_error(_bench(export, out), "--results")
    assert (out / "notes.txt").read_text() == "mine" and (out / "results.json").is_file()


def test_a_results_json_that_is_not_valid_makes_the_folder_foreign(results, tmp_path):
    out = tmp_path / "r"
    write_report(results, out)
    assert is_results_dir(out)
    broken = dict(results, schema="something-else/1")
    (out / "results.json").write_text(json.dumps(broken))
    assert not is_results_dir(out)
    with pytest.raises(SubtuneError, match="out_dir .* not benchmark results made by subtune-edge") as err:
        write_report(results, out)
    assert err.value.param == "out_dir"
    assert json.loads((out / "results.json").read_text())["schema"] == "something-else/1"


def test_results_nested_with_the_export_are_refused(export, tmp_path):
    copy = tmp_path / "export"
    shutil.copytree(export, copy)
    _one_line_error(_bench(copy, tmp_path), "--results", "nested")
    _one_line_error(_bench(copy, copy / "bench"), "--results", "nested")
    assert not (copy / "bench").exists()
    assert sorted(p.name for p in copy.iterdir()) == sorted(p.name for p in export.iterdir())


def test_the_committed_suite_results_are_ours_so_the_readme_command_replaces_them():
    # `subtune-edge bench --suite cpu-quick --results benchmarks/results/cpu-quick` (README) must keep working
    committed = Path(__file__).parents[1] / "benchmarks" / "results" / "cpu-quick"
    assert is_results_dir(committed)
    assert not is_results_dir(committed.parent)  # the index of all results is not one bench's output


@pytest.mark.slow
def test_a_suite_results_folder_with_its_export_is_ours(tmp_path):
    toml = tmp_path / "tiny.toml"
    toml.write_text(f'''name = "tiny"
description = "resnet18, 2 tasks"
backbone = "resnet18"
input_size = [{SIZE}, {SIZE}]
batch_sizes = [1]
backends = ["ort-cpu"]
threads = 1
[budget]
warmup = 0
min_runs = 2
max_runs = 2
seconds = 0.0
[[tasks]]
name = "a"
units = "layer4.1"
[[tasks]]
name = "b"
units = "layer4"
''')
    suite = load_suite(str(toml))
    out = tmp_path / "results"
    events: list[Event] = []
    results, paths = run_suite(suite, out, progress=events.append)
    assert results["export"]["dir"] == str(out / "export")
    assert (out / "export" / "manifest.json").is_file() and paths["json"] == out / "results.json"
    assert is_results_dir(out)
    assert {e.stage for e in events} == {"bench", "export"}  # the suite's export reports its steps too
    assert events[-1].stage == "bench" and events[-1].done == events[-1].total == 2
    run_suite(suite, out)  # an earlier suite's results (with its export) are replaced
    assert is_results_dir(out)
    _no_partials(tmp_path)
    (out / "export" / "extra.bin").write_bytes(b"x")
    assert not is_results_dir(out)
    with pytest.raises(SubtuneError, match="results_dir"):
        run_suite(suite, out)
    assert (out / "export" / "extra.bin").is_file()


# -- (2) tampered exports are refused, never measured -----------------------------------------------
def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("tamper", ["flip model.onnx", "flip separate", "delete model.onnx", "swap model.onnx"])
def test_tampered_exports_are_refused_before_anything_runs(export, tmp_path, tamper):
    copy = tmp_path / "export"
    shutil.copytree(export, copy)
    model = copy / "model.onnx"
    if tamper == "flip model.onnx":
        _flip_byte(model)
    elif tamper == "flip separate":
        _flip_byte(copy / "separate" / "a.onnx")
    elif tamper == "delete model.onnx":
        model.unlink()
    else:
        shutil.copyfile(copy / "separate" / "a.onnx", model)
    out = tmp_path / "bench"
    line = _one_line_error(_bench(copy, out))
    assert "onnx" in line
    assert not out.exists()
    _no_partials(tmp_path)
    with pytest.raises(SubtuneError):
        run_bench(copy, BenchConfig(batch_sizes=[1], threads=1, budget=TINY, max_tasks=1))


# -- (9) numbers that cannot be measured with are refused at parse time ----------------------------
@pytest.mark.parametrize("flag,value", [("--batch", "0"), ("--batch", "-1"), ("--batch", "1,0"), ("--batch", "1.5"),
                                        ("--batch", "x"), ("--batch", ","), ("--threads", "0"),
                                        ("--max-tasks", "0"), ("--seconds", "-1")])
def test_bad_numbers_are_refused_at_parse_time(export, tmp_path, flag, value):
    out = tmp_path / "bench"
    result = CliRunner().invoke(main, ["bench", str(export), "--results", str(out), flag, value])
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{flag}'" in result.output and "Traceback" not in result.output
    assert not out.exists()


@pytest.mark.parametrize("flag,value", [("--batch", "0"), ("--threads", "0"), ("--seconds", "-1")])
def test_profile_device_refuses_bad_numbers(tmp_path, flag, value):
    out = tmp_path / "costs.json"
    result = CliRunner().invoke(main, ["profile-device", "resnet18", "--input-size", "32", "--out", str(out),
                                       flag, value])
    assert result.exit_code == 2 and f"Invalid value for '{flag}'" in result.output
    assert not out.exists()


@pytest.mark.parametrize("change,param", [({"batch_sizes": [0]}, "batch_sizes"), ({"batch_sizes": []}, "batch_sizes"),
                                          ({"threads": 0}, "threads"), ({"max_tasks": -1}, "max_tasks"),
                                          ({"backends": []}, "backends"),
                                          ({"budget": Budget(min_runs=5, max_runs=2)}, "budget")])
def test_the_library_refuses_bad_settings_naming_the_parameter(export, change, param):
    with pytest.raises(SubtuneError) as err:
        run_bench(export, BenchConfig(**change))
    assert err.value.param == param and "--" not in str(err.value)


# -- (10) library text printed through rich keeps its brackets -------------------------------------
def test_skip_reasons_keep_their_brackets_on_the_terminal(results):
    reason = "ort-cuda needs onnxruntime-gpu with a CUDA GPU: pip install 'subtune-edge[gpu]'"
    shown = dict(results, skipped=[{"backend": "ort-cuda[x]", "reason": reason}])
    buffer = io.StringIO()
    render_results(shown, Console(file=buffer, width=300, color_system=None))
    text = buffer.getvalue()
    assert "skipped ort-cuda[x]: " + reason in text


def test_bench_cli_prints_the_real_skip_reason_with_its_brackets(export, tmp_path):
    from subtune_edge.runtime import missing_reason

    reason = missing_reason("ort-cuda")
    if reason is None:
        pytest.skip("ort-cuda runs here")
    out = tmp_path / "bench"
    result = _bench(export, out, "--backend", "ort-cpu,ort-cuda")
    assert result.exit_code == 0, result.output
    skipped = json.loads((out / "results.json").read_text())["skipped"]
    assert skipped == [{"backend": "ort-cuda", "reason": reason}]
    assert " ".join(reason.split()) in " ".join(result.output.split())  # whatever the width, brackets kept
