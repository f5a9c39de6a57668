"""Building the C++ runner (examples/cpp) for the tests, and running it.

``examples/cpp/scripts/build_ci.sh`` builds it with ``-Wall -Wextra -Werror`` twice (release, and
AddressSanitizer + UBSan) against ONNX Runtime obtained offline: the wheel's C library plus the
headers and CMake files of Debian trixie's ``libonnxruntime-dev`` (private apt configuration,
``dpkg-deb -x``, cached in ``~/.cache/subtune-edge``). The build is one session fixture
(``cpp_binaries`` in conftest.py) shared by every module that runs the binary.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = ROOT / "examples" / "cpp" / "scripts" / "build_ci.sh"
BUILD_DIR = ROOT / "examples" / "cpp" / "build-ci"
EX_UNAVAILABLE = 75  # build_ci.sh: the Debian archive could not be reached
SANITIZER_ENV = {"ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0:exitcode=99",
                 "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1:exitcode=98"}
SANITIZER_REPORT = re.compile(r"ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:|SUMMARY: \w+Sanitizer")

# -- building -------------------------------------------------------------------------------------
def build() -> dict[str, Path]:
    """Build (or reuse) the release and sanitizer runners; one build at a time across test workers."""
    missing = [tool for tool in ("apt-get", "dpkg-deb", "dpkg-query") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"the C++ runner's CI build needs a Debian/Ubuntu system ({', '.join(missing)} not found)")
    env = {**os.environ, "PYTHON": sys.executable, "BUILD_JOBS": "2"}
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    with open(BUILD_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # pytest-xdist workers: the second waits, then finds the build done
        proc = subprocess.run(["bash", str(BUILD_SCRIPT), "all"], env=env, capture_output=True, text=True,
                              timeout=1800)
    if proc.returncode == EX_UNAVAILABLE:
        pytest.skip("the Debian archive is unreachable and nothing is cached: "
                    + (proc.stderr.strip().splitlines() or ["(no message)"])[-1])
    assert proc.returncode == 0, f"build_ci.sh failed ({proc.returncode}):\n{proc.stderr[-6000:]}"
    built = {"release": BUILD_DIR / "release" / "subtune_edge_run", "asan": BUILD_DIR / "asan" / "subtune_edge_run"}
    for path in built.values():
        assert path.is_file() and os.access(path, os.X_OK), f"{path} was not built"
    # The warnings gate is part of the build, not a convention.
    for variant in built:
        cache = (BUILD_DIR / variant / "CMakeCache.txt").read_text()
        assert "SUBTUNE_EDGE_WERROR:BOOL=ON" in cache
    assert "SUBTUNE_EDGE_SANITIZE:BOOL=ON" in (BUILD_DIR / "asan" / "CMakeCache.txt").read_text()
    return built


def run_cpp(binary: Path, *args, sanitized: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, **(SANITIZER_ENV if sanitized else {})}
    return subprocess.run([str(binary), *map(str, args)], capture_output=True, text=True, env=env, timeout=300)


def run_ok(binary: Path, *args, sanitized: bool = False) -> subprocess.CompletedProcess:
    proc = run_cpp(binary, *args, sanitized=sanitized)
    assert proc.returncode == 0, f"subtune_edge_run {' '.join(map(str, args))} -> {proc.returncode}:\n{proc.stderr}"
    assert not SANITIZER_REPORT.search(proc.stderr), proc.stderr
    return proc


