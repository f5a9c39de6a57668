import json

from click.testing import CliRunner

from subtune_edge.cli import main
from subtune_edge.task import save_task

from .helpers import backbone_for, three_depth_tasks


def test_blocks_lists_units_with_flops_share():
    result = CliRunner().invoke(main, ["blocks", "resnet18", "--weights", "random", "--input-size", "64", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert [u["name"] for u in data["units"]][1:3] == ["layer1.0", "layer1.1"]
    assert all(u["flops"] > 0 for u in data["units"][:-1])


def test_plan_prints_trunk_branches_and_ratio(tmp_path):
    for t in three_depth_tasks(backbone_for("resnet18")):
        save_task(t, tmp_path / t.name)
    result = CliRunner().invoke(main, ["plan", "--tasks", "late,middle,early", "--task-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "ideal ratio fused/separate" in result.output and "task early" in result.output


def test_errors_are_one_line_with_non_zero_exit(tmp_path):
    result = CliRunner().invoke(main, ["plan", "--tasks", "nope", "--task-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [f"error: unknown task 'nope': no {tmp_path}/nope.safetensors; "
                                                  "pass --task-dir or a path to a .safetensors file"]
    result = CliRunner().invoke(main, ["blocks", "vgg11"])
    assert result.exit_code == 2 and "supported families" in result.output
    result = CliRunner().invoke(main, ["blocks", "resnet18", "--input-size", "abc"])
    assert result.exit_code == 2 and "Usage:" in result.output and "H,W" in result.output


def test_library_warnings_are_one_plain_line_on_stderr(capsys):
    import logging

    from subtune_edge.cli import configure_logging

    configure_logging(0)
    configure_logging(0)  # a second invocation in one process: still one line per warning
    logging.getLogger("subtune_edge.search.chosen").warning("stored run %s is unusable", "x.safetensors")
    logging.getLogger("subtune_edge.search.chosen").info("not shown without -v")
    assert capsys.readouterr().err == "warning: stored run x.safetensors is unusable\n"
    configure_logging(1)
    logging.getLogger("subtune_edge.exporters.export").info("shown with -v")
    assert capsys.readouterr().err == "info: shown with -v\n"
    configure_logging(0)
