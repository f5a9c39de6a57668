"""The layers of ARCHITECTURE.md hold: import-linter's contracts pass on the tree and catch a break."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")
pytestmark = pytest.mark.skipif(not LINT.exists(), reason="import-linter is not installed (pip install -e '.[dev]')")


def _copy_tree(dest: Path) -> Path:
    shutil.copytree(ROOT / "subtune_edge", dest / "subtune_edge", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    return dest


def _lint(where: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(where)}
    return subprocess.run([str(LINT), "--no-logo", "--no-cache"], cwd=where, env=env, capture_output=True,
                          text=True, timeout=300)


def test_import_contracts_hold_on_the_tree(tmp_path):
    result = _lint(_copy_tree(tmp_path / "tree"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.mark.parametrize("module, planted", [
    ("subtune_edge/backbone/model.py", "import subtune_edge.exporters.export"),  # core reaching up to the exporters
    ("subtune_edge/exporters/verification.py", "import subtune_edge.train"),       # exporters reaching into training
    ("subtune_edge/errors.py", "import subtune_edge.cli"),                       # anything importing the CLI
])
def test_import_contracts_catch_a_planted_violation(tmp_path, module, planted):
    tree = _copy_tree(tmp_path / "tree")
    path = tree / module
    path.write_text(path.read_text() + f"\n{planted}  # planted by the test\n")
    broken = _lint(tree)
    assert broken.returncode != 0
    assert "BROKEN" in broken.stdout.upper()
