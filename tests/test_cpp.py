"""The C++ runner (examples/cpp) against Python, on a real 3-task export.

``examples/cpp/scripts/build_ci.sh`` builds it with ``-Wall -Wextra -Werror`` twice (release, and
AddressSanitizer + UBSan) against ONNX Runtime obtained offline: the wheel's C library plus the
headers and CMake files of Debian trixie's ``libonnxruntime-dev`` (private apt configuration,
``dpkg-deb -x``, cached in ``~/.cache/subtune-edge``). The tests then run ``subtune_edge_run`` on a
``.npy`` batch and on images, and compare with Python: the preprocessed tensor with timm's transform
on PIL, the logits with ONNX Runtime from Python (max abs error <= 1e-4), the printed top-k with the
``subtune-edge predict`` CLI. Broken exports and inputs must give one ``error:`` line and a non-zero
exit, never a crash, under the sanitizers too.

Skipped only where the build cannot be attempted (no apt/dpkg: not Debian) or the Debian archive
is unreachable on a machine that has no cached copy yet; the reason is printed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from .cpp import run_cpp, run_ok
from .helpers import SIZE, backbone_for, tampered, three_depth_tasks

ROOT = Path(__file__).resolve().parents[1]
ATOL = 1e-4
BATCH_MAX = 8

pytestmark = pytest.mark.slow


# -- the export and the Python reference ----------------------------------------------------------
@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    """Three tasks leaving the trunk at three depths; one task name is not an identifier, so its
    output name differs (``early-exit`` -> ``early_exit``)."""
    from subtune_edge.exporters import export_tasks

    backbone = backbone_for("tf_efficientnet_lite0")
    late, middle, early = three_depth_tasks(backbone)
    tasks = [late, middle, dataclasses.replace(early, name="early-exit")]
    out = tmp_path_factory.mktemp("cpp") / "export"
    manifest = export_tasks(tasks, out, batch=(1, BATCH_MAX)).to_json()
    assert [t["output"] for t in manifest["tasks"]] == ["late", "middle", "early_exit"]
    return out


class Reference:
    """What Python does with the export: ``subtune_edge.load_export`` and the ``subtune-edge predict`` CLI."""

    def __init__(self, export: Path):
        from subtune_edge.runtime import load_export

        self.export = export
        self.model = load_export(export, device="cpu", threads=2)
        self.manifest = self.model.manifest
        self.tasks = [t.to_json() for t in self.manifest.tasks]

    def logits(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        return self.model.run(batch)

    def preprocess(self, image: Path) -> np.ndarray:
        return self.model.preprocess([image])

    def topk(self, batch: np.ndarray, k: int) -> list[dict[str, list[tuple[str, float]]]]:
        return self.model.predict(batch, topk=k)

    def cli_predict(self, image: Path, k: int) -> dict[str, list[tuple[str, float]]]:
        """``subtune-edge predict DIR IMAGE --topk K --json``"""
        proc = subprocess.run([sys.executable, "-m", "subtune_edge.cli", "predict", str(self.export), str(image),
                               "--topk", str(k), "--device", "cpu", "--json"], capture_output=True, text=True,
                              timeout=300, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr
        (result,) = json.loads(proc.stdout)
        return {task: [(p["label"], p["score"]) for p in preds] for task, preds in result["tasks"].items()}


@pytest.fixture(scope="module")
def reference(export_dir):
    ref = Reference(export_dir)
    yield ref
    ref.model.close()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """A seeded .npy batch and scikit-image's chelsea / coffee photos (PNG, lossless; and one JPEG)."""
    from PIL import Image
    from skimage import data

    d = tmp_path_factory.mktemp("inputs")
    batch = np.random.default_rng(0).standard_normal((3, 3, SIZE, SIZE)).astype(np.float32)
    np.save(d / "batch.npy", batch)
    Image.fromarray(data.chelsea()).save(d / "chelsea.png")
    Image.fromarray(data.coffee()).save(d / "coffee.png")
    Image.fromarray(data.chelsea()).save(d / "chelsea.jpg", quality=92)
    return {"npy": d / "batch.npy", "chelsea": d / "chelsea.png", "coffee": d / "coffee.png",
            "chelsea_jpg": d / "chelsea.jpg"}


def dumped(folder: Path, reference: Reference) -> dict[str, np.ndarray]:
    return {t["name"]: np.load(folder / f"{t['output']}.npy") for t in reference.tasks}


TEXT_LINE = re.compile(r"^\[(\d+)\] (\S+): (.*)$")
TEXT_PRED = re.compile(r"(.+?) \((\d+\.\d{4})\)")


def parse_text(stdout: str) -> list[dict[str, list[tuple[str, float]]]]:
    """The runner's stable text format: ``[row] task: label (0.1234), label (0.0567), ...``."""
    rows: dict[int, dict] = {}
    for line in stdout.splitlines():
        m = TEXT_LINE.match(line)
        assert m, f"unexpected output line: {line!r}"
        preds = [(lab, float(score)) for lab, score in TEXT_PRED.findall(m.group(3).replace("), ", ")\n"))]
        rows.setdefault(int(m.group(1)), {})[m.group(2)] = preds
    return [rows[i] for i in sorted(rows)]


def assert_same_topk(cpp, ref, score_tol: float) -> None:
    assert list(cpp) == list(ref), "tasks differ or are out of order"
    for task in ref:
        assert [lab for lab, _ in cpp[task]] == [lab for lab, _ in ref[task]], task
        np.testing.assert_allclose([s for _, s in cpp[task]], [s for _, s in ref[task]], atol=score_tol, rtol=0)


def cpp_json_topk(stdout: str) -> list[dict[str, list[tuple[str, float]]]]:
    doc = json.loads(stdout)
    n = doc["input_shape"][0]
    return [{task: [(p["label"], p["score"]) for p in rows[i]] for task, rows in doc["tasks"].items()}
            for i in range(n)]


# -- the same input, C++ vs Python ----------------------------------------------------------------
def test_npy_batch_matches_python_onnxruntime(binaries, export_dir, reference, inputs, tmp_path):
    out = tmp_path / "out"
    proc = run_ok(binaries["release"], export_dir, inputs["npy"], "--topk", 3, "--json", "--dump-outputs", out)
    ref = reference.logits(np.load(inputs["npy"]))
    got = dumped(out, reference)
    for task, logits in ref.items():
        assert got[task].shape == logits.shape == (3, len(logits[0]))
        err = float(np.abs(got[task] - logits).max())
        print(f"npy batch: task {task}: C++ vs Python ONNX Runtime logits max abs error {err:.3g}")
        assert err <= ATOL
    expected = reference.topk(np.load(inputs["npy"]), 3)
    for row_cpp, row_ref in zip(cpp_json_topk(proc.stdout), expected, strict=True):
        assert_same_topk(row_cpp, row_ref, 1e-6)
    text = parse_text(run_ok(binaries["release"], export_dir, inputs["npy"], "--topk", 3).stdout)
    for row_cpp, row_ref in zip(text, expected, strict=True):
        assert_same_topk(row_cpp, row_ref, 5.1e-5)  # printed with 4 decimals


@pytest.mark.parametrize("image", ["chelsea", "coffee"])
def test_image_matches_python_preprocessing_and_cli(binaries, export_dir, reference, inputs, image, tmp_path):
    path = inputs[image]
    out = tmp_path / "out"
    proc = run_ok(binaries["release"], export_dir, path, "--topk", 3, "--json", "--dump-input", tmp_path / "x.npy",
                  "--dump-outputs", out)
    x_cpp = np.load(tmp_path / "x.npy")
    x_py = reference.preprocess(path)
    assert x_cpp.shape == x_py.shape == (1, 3, SIZE, SIZE)
    diff = float(np.abs(x_cpp - x_py).max())
    print(f"{image}.png: preprocessed tensor C++ vs Python (timm on PIL) max abs diff {diff:.3g}, "
          f"{int((x_cpp != x_py).sum())} of {x_py.size} values differ")
    # PIL-exact resampling: equal, or (another Pillow release, another pass order) one 8-bit level apart.
    one_level = 1.0 / 255.0 / min(reference.manifest.preprocessing.std)
    assert diff <= one_level + 1e-6

    # The graph: C++ logits on its own tensor vs Python ONNX Runtime on the same tensor.
    got = dumped(out, reference)
    on_cpp_input = reference.logits(x_cpp)
    for task, logits in on_cpp_input.items():
        assert float(np.abs(got[task] - logits).max()) <= ATOL
    # End to end: the same top-1 per task as Python on its own preprocessing.
    on_py_input = reference.logits(x_py)
    for task in on_py_input:
        assert int(got[task].argmax()) == int(on_py_input[task].argmax()), task

    # Printed top-k (text and JSON) vs the Python CLI.
    cli = reference.cli_predict(path, 3)
    tol = 1e-4 if diff == 0 else 1e-2
    assert_same_topk(cpp_json_topk(proc.stdout)[0], cli, tol)
    text = parse_text(run_ok(binaries["release"], export_dir, path, "--topk", 3).stdout)
    assert_same_topk(text[0], cli, tol + 5e-5)


def test_jpeg_decoding_difference_is_small(binaries, export_dir, reference, inputs, tmp_path):
    """stb_image and libjpeg-turbo (PIL) decode JPEG with different IDCT/upsampling: a few levels."""
    path = inputs["chelsea_jpg"]
    run_ok(binaries["release"], export_dir, path, "--dump-input", tmp_path / "x.npy", "--dump-outputs", tmp_path)
    x_cpp = np.load(tmp_path / "x.npy")
    x_py = reference.preprocess(path)
    diff = float(np.abs(x_cpp - x_py).max())
    std = min(reference.manifest.preprocessing.std)
    print(f"chelsea.jpg: preprocessed tensor C++ (stb_image) vs Python (libjpeg) max abs diff {diff:.3g} "
          f"= {diff * std * 255:.1f} levels, mean {float(np.abs(x_cpp - x_py).mean()):.2g}")
    assert diff * std * 255 <= 6
    # Top-1 still agrees, except on a near tie (top-2 margin under 1% of the logit scale).
    got, ref = dumped(tmp_path, reference), reference.logits(x_py)
    for task, logits in ref.items():
        top2 = np.sort(logits[0])[-2:]
        if top2[1] - top2[0] > 0.01 * np.abs(logits).max():
            assert int(got[task].argmax()) == int(logits.argmax()), task


# -- sanitizers -----------------------------------------------------------------------------------
def test_asan_ubsan_build_runs_clean_on_the_test_inputs(binaries, export_dir, reference, inputs, tmp_path):
    for name in ("npy", "chelsea", "chelsea_jpg"):
        out = tmp_path / name
        run_ok(binaries["asan"], export_dir, inputs[name], "--json", "--dump-outputs", out, sanitized=True)
        release = tmp_path / f"{name}-release"
        run_ok(binaries["release"], export_dir, inputs[name], "--dump-outputs", release)
        for task in reference.tasks:
            a, b = np.load(out / f"{task['output']}.npy"), np.load(release / f"{task['output']}.npy")
            assert float(np.abs(a - b).max()) <= ATOL


# -- errors: one line, non-zero exit, never a crash -----------------------------------------------
def _copy_export(src: Path, dst: Path, **manifest_changes) -> Path:
    dst.mkdir()
    for item in src.iterdir():
        if item.name != "manifest.json":
            (dst / item.name).symlink_to(item)
    manifest = json.loads((src / "manifest.json").read_text())
    manifest.update(manifest_changes)
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


def _replace_model(export: Path, data: bytes, rehash: bool = False) -> None:
    (export / "model.onnx").unlink()
    (export / "model.onnx").write_bytes(data)
    if rehash:
        manifest = json.loads((export / "manifest.json").read_text())
        manifest["files"]["model.onnx"] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        (export / "manifest.json").write_text(json.dumps(manifest))


def _case(name: str, export_dir: Path, inputs: dict, tmp: Path) -> tuple[list, str]:
    """-> (arguments, what the one error line must say)"""
    tampered(tmp)  # every case breaks its export on purpose
    model = (export_dir / "model.onnx").read_bytes()
    npy = inputs["npy"]
    if name == "missing export":
        return [tmp / "nope", npy], "does not exist"
    if name == "not an export":
        (tmp / "empty").mkdir()
        return [tmp / "empty", npy], "no manifest.json"
    if name == "corrupt manifest":
        bad = _copy_export(export_dir, tmp / "e")
        (bad / "manifest.json").write_text((export_dir / "manifest.json").read_text()[:200])
        return [bad, npy], "not valid JSON"
    if name == "foreign manifest":
        return [_copy_export(export_dir, tmp / "e", format="something-else"), npy], "not a subtune-edge export"
    if name == "newer format":
        return [_copy_export(export_dir, tmp / "e", format_version=2), npy], "format_version 2"
    if name == "manifest lacks tasks":
        return [_no_tasks(export_dir, tmp), npy], "'tasks' is missing"
    if name == "hash mismatch":
        bad = _copy_export(export_dir, tmp / "e")
        flipped = bytearray(model)
        flipped[len(flipped) // 2] ^= 0xFF
        _replace_model(bad, bytes(flipped))
        return [bad, npy], "does not match its sha256"
    if name == "truncated model":
        bad = _copy_export(export_dir, tmp / "e")
        _replace_model(bad, model[: len(model) // 2])
        return [bad, npy], "bytes but manifest.json says"
    if name == "missing model":
        bad = _copy_export(export_dir, tmp / "e")
        (bad / "model.onnx").unlink()
        return [bad, npy], "missing"
    if name == "garbage model with a matching hash":
        bad = _copy_export(export_dir, tmp / "e")
        _replace_model(bad, b"\x08\x07this is not an onnx model" * 100, rehash=True)
        return [bad, npy], "ONNX Runtime cannot load"
    if name == "wrong input size":
        np.save(tmp / "small.npy", np.zeros((1, 3, 32, 32), np.float32))
        return [export_dir, tmp / "small.npy"], f"expected [N, 3, {SIZE}, {SIZE}]"
    if name == "batch over the range":
        np.save(tmp / "big.npy", np.zeros((BATCH_MAX + 1, 3, SIZE, SIZE), np.float32))
        return [export_dir, tmp / "big.npy"], "outside the export's batch range"
    if name == "float64 npy":
        np.save(tmp / "f64.npy", np.zeros((1, 3, SIZE, SIZE)))
        return [export_dir, tmp / "f64.npy"], "dtype '<f8'"
    if name == "fortran npy":
        np.save(tmp / "f.npy", np.asfortranarray(np.zeros((2, 3, SIZE, SIZE), np.float32)))
        return [export_dir, tmp / "f.npy"], "Fortran order"
    if name == "npy of rank 2":
        np.save(tmp / "r2.npy", np.zeros((SIZE, SIZE), np.float32))
        return [export_dir, tmp / "r2.npy"], "expected [N, 3, H, W] or [3, H, W]"
    if name == "truncated npy":
        data = npy.read_bytes()
        (tmp / "t.npy").write_bytes(data[: len(data) - 100])
        return [export_dir, tmp / "t.npy"], "data bytes"
    if name == "not an image":
        (tmp / "notes.png").write_text("hello")
        return [export_dir, tmp / "notes.png"], "cannot decode image"
    if name == "truncated png":
        data = inputs["chelsea"].read_bytes()
        (tmp / "cut.png").write_bytes(data[: len(data) // 3])
        return [export_dir, tmp / "cut.png"], "cannot decode image"
    if name == "missing input":
        return [export_dir, tmp / "nothing.png"], "does not exist"
    if name == "tensorrt not built":
        return [export_dir, npy, "--backend", "tensorrt"], "no tensorrt backend"
    raise AssertionError(name)


def _no_tasks(export_dir: Path, tmp: Path) -> Path:
    bad = _copy_export(export_dir, tmp / "e")
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest.pop("tasks")
    (bad / "manifest.json").write_text(json.dumps(manifest))
    return bad


ERROR_CASES = ["missing export", "not an export", "corrupt manifest", "foreign manifest", "newer format",
               "manifest lacks tasks", "hash mismatch", "truncated model", "missing model",
               "garbage model with a matching hash", "wrong input size", "batch over the range", "float64 npy",
               "fortran npy", "npy of rank 2", "truncated npy", "not an image", "truncated png", "missing input",
               "tensorrt not built"]


@pytest.mark.parametrize("variant", ["release", "asan"])
@pytest.mark.parametrize("case", ERROR_CASES)
def test_errors_are_one_clear_line(binaries, export_dir, inputs, tmp_path, case, variant):
    args, says = _case(case, export_dir, inputs, tmp_path)
    proc = run_cpp(binaries[variant], *args, sanitized=variant == "asan")
    assert 0 < proc.returncode < 64, f"exit {proc.returncode} (a signal or a sanitizer exit is a crash):\n{proc.stderr}"
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert says in lines[0], lines[0]
    assert proc.stdout == ""


def test_usage_errors_exit_2(binaries, export_dir, inputs):
    for args in ([], [export_dir], [export_dir, inputs["npy"], "--topk", "0"], [export_dir, inputs["npy"], "--bogus"],
                 [export_dir, inputs["npy"], "--backend", "cuda"]):
        proc = run_cpp(binaries["release"], *args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert proc.stderr.startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1
    assert "usage: subtune_edge_run" in run_ok(binaries["release"], "--help").stdout


def test_grouped_export_runs_in_cpp(binaries, inputs, tmp_path):
    """``export --grouped`` is plain ONNX: the runner runs it and matches Python ONNX Runtime."""
    from subtune_edge.exporters import export_tasks
    from subtune_edge.runtime import load_export
    from subtune_edge.synthetic import synthetic_task

    backbone = backbone_for("tf_efficientnet_lite0")
    n = backbone.unit_names
    tasks = [synthetic_task(backbone, f"g{i}", [n[-2], n[-1]], 3 + i, seed=20 + i, input_size=(SIZE, SIZE))
             for i in range(2)]
    tasks.insert(1, synthetic_task(backbone, "other", [n[len(n) // 2]], 4, seed=30, input_size=(SIZE, SIZE)))
    export = tmp_path / "grouped"
    manifest = export_tasks(tasks, export, batch=(1, BATCH_MAX), grouped=True).to_json()
    assert manifest["grouped_branches"]["groups"] == [["g0", "g1"]]
    out = tmp_path / "out"
    run_ok(binaries["release"], export, inputs["npy"], "--topk", 2, "--json", "--dump-outputs", out)
    with load_export(export, device="cpu", threads=2) as model:
        ref = model.run(np.load(inputs["npy"]))
    for task, logits in ref.items():
        assert float(np.abs(np.load(out / f"{task}.npy") - logits).max()) <= ATOL


def test_modular_tasks_subset_matches_python(binaries, inputs, tmp_path):
    """``--tasks`` on a modular export runs trunk.onnx and only the requested branches; equal to Python's."""
    from subtune_edge.exporters import export_tasks
    from subtune_edge.runtime import load_export

    backbone = backbone_for("tf_efficientnet_lite0")
    export = tmp_path / "modular"
    export_tasks(three_depth_tasks(backbone), export, batch=(1, BATCH_MAX), modular=True)
    out = tmp_path / "out"
    proc = run_ok(binaries["release"], export, inputs["npy"], "--json", "--tasks", "early,late", "--dump-outputs", out)
    doc = json.loads(proc.stdout)
    assert list(doc["tasks"]) == ["late", "early"]  # manifest order
    assert doc["session_runs"] == {"trunk.onnx": 1, "branches/late.onnx": 1, "branches/early.onnx": 1}
    assert sorted(p.name for p in out.iterdir()) == ["early.npy", "late.npy"]
    with load_export(export, device="cpu", threads=2, tasks=["early", "late"]) as model:
        ref = model.run(np.load(inputs["npy"]))
    assert set(ref) == {"early", "late"}
    for task, logits in ref.items():
        assert float(np.abs(np.load(out / f"{task}.npy") - logits).max()) <= ATOL
    sanitized = run_ok(binaries["asan"], export, inputs["npy"], "--tasks", "middle", sanitized=True)
    assert sanitized.stdout.count("middle:") >= 1 and "late:" not in sanitized.stdout
    bad = run_cpp(binaries["release"], export, inputs["npy"], "--tasks", "nope")
    assert bad.returncode == 1 and bad.stderr.startswith("error: ") and "no task 'nope'" in bad.stderr
