"""What a result was measured on: device, drivers, versions. Recorded with every result."""

from __future__ import annotations

import os
import platform
import socket
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import onnxruntime as ort
import torch

from subtune_edge.runtime import runtimes


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def jetson_model() -> str | None:
    for p in ("/proc/device-tree/model", "/sys/firmware/devicetree/base/model"):
        try:
            text = Path(p).read_text().strip("\x00\n ")
        except OSError:
            continue
        if "jetson" in text.lower() or "orin" in text.lower():
            return text
    return None


def gpus() -> list[dict]:
    """The CUDA GPUs PyTorch sees: name, memory, compute capability."""
    if not torch.cuda.is_available():
        return []
    out = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        out.append({"name": p.name, "memory_bytes": int(p.total_memory), "capability": f"{p.major}.{p.minor}"})
    return out


def driver_version() -> str | None:
    try:
        import pynvml  # optional: nvidia-ml-py, the [gpu] extra

        pynvml.nvmlInit()
        v = pynvml.nvmlSystemGetDriverVersion()
        return v.decode() if isinstance(v, bytes) else v
    except Exception:  # no NVML (CPU machines, Jetson)
        return None


def describe() -> dict:
    """Everything a result depends on besides the model: host, CPU, GPUs, driver, library versions.

    Returns:
        results.json's ``environment`` (JSON types).
    """
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "jetson": jetson_model(),
        "gpus": gpus(),
        "driver": driver_version(),
        "cuda": torch.version.cuda,
        "onnxruntime_providers": ort.get_available_providers(),
        "versions": {d: _version(d) for d in ("subtune-edge", "torch", "timm", "onnx", "onnxruntime",
                                               "onnxruntime-gpu", "tensorrt", "openvino", "numpy")},
        "runtimes": {s.name: s.version() for s in runtimes()},
    }


def device_label(env: dict) -> str:
    """A short human name for the measuring device, for tables and plot titles."""
    if env.get("jetson"):
        return env["jetson"]
    if env.get("gpus"):
        return f"{env['gpus'][0]['name']} + {env['cpu']}"
    return f"{env['cpu']} ({env['cpu_count']} cores)"
