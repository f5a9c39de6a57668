"""The wheel installs one import package, ``subtune_edge``, and works from a fresh virtual environment.

The wheel is built from a copy of the sources (``pip wheel --no-build-isolation``), its top-level
names are listed, and it is installed into a new venv whose dependencies come from this test
environment's site-packages (a ``.pth`` line: nothing is downloaded, and the editable install of the
checkout is not visible there). From a folder outside the checkout, that venv runs ``subtune-edge
--help``, an export of a small task, and a benchmark script's ``--help``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from subtune_edge.task import save_task

from .helpers import backbone_for, three_depth_tasks

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "subtune_edge", src / "subtune_edge", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                           str(out), str(src)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (path,) = out.glob("subtune_edge-*.whl")
    return path


def test_the_wheel_holds_one_top_level_package_and_the_console_script(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    dist_info = next(t for t in top if t.endswith(".dist-info"))
    assert top == {"subtune_edge", dist_info}
    assert "subtune_edge/schema/manifest.schema.json" in names and "subtune_edge/bench/suites/cpu-quick.toml" in names
    entry_points = zipfile.ZipFile(wheel).read(f"{dist_info}/entry_points.txt").decode()
    assert "subtune-edge = subtune_edge.cli:main" in entry_points


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("venv") / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    site = next((root / "lib").glob("python*/site-packages"))
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(root / "bin" / "python"), "install", "-q",
                           "--no-deps", "--no-index", str(wheel)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return root


def _run(venv: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(cwd)})


def test_the_installed_package_runs_outside_the_checkout(venv, tmp_path):
    py = venv / "bin" / "python"
    where = _run(venv, tmp_path, py, "-c", "import subtune_edge, importlib.util as u; print(subtune_edge.__file__); "
                                          "print(u.find_spec('exporters'), u.find_spec('benchmarks'))")
    assert where.returncode == 0, where.stderr
    file, specs = where.stdout.strip().splitlines()
    assert Path(file).is_relative_to(venv) and specs == "None None"
    assert _run(venv, tmp_path, venv / "bin" / "subtune-edge", "--help").returncode == 0
    script = _run(venv, tmp_path, py, "-m", "subtune_edge.bench.export_time", "--help")
    assert script.returncode == 0 and "--out" in script.stdout, script.stderr
    task = three_depth_tasks(backbone_for("resnet18"))[0]
    save_task(task, tmp_path / "tasks" / task.name)
    export = _run(venv, tmp_path, venv / "bin" / "subtune-edge", "export", "--tasks", task.name, "--task-dir", "tasks",
                  "--out", "out", "--batch", "1:2", "--json")
    assert export.returncode == 0, export.stderr[-3000:]
    manifest = json.loads(export.stdout)
    assert manifest["verification"]["passed"] is True and (tmp_path / "out" / "model.onnx").is_file()
