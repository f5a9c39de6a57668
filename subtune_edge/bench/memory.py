"""Memory as each platform reports it: process RSS (Linux), NVML or torch (desktop GPUs), and
tegrastats on Jetson, where NVML reports nothing for the integrated GPU."""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path


def rss_bytes() -> int:
    """Current resident set size of this process (Linux /proc; 0 where unavailable)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def nvml_used_bytes(index: int = 0) -> int | None:
    """Device memory in use on GPU ``index`` by NVML (nvidia-ml-py), or None where NVML is absent."""
    try:
        import pynvml  # optional: nvidia-ml-py, the [gpu] extra
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        return int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)
    except Exception:  # NVML raises its own error types; Jetson has no NVML device
        return None


# RAM 2448/7620MB (lfb 1x4MB) SWAP 0/3810MB ... GR3D_FREQ 0% ... VDD_IN 4480mW/4480mW
_RAM = re.compile(r"\bRAM (\d+)/(\d+)MB")
_GR3D = re.compile(r"\bGR3D_FREQ (\d+)%(?:@\[?(\d+)\]?)?")
_POWER = re.compile(r"\b(VDD_IN|VIN_SYS_5V0|POM_5V_IN) (\d+)mW")


@dataclass
class TegraSample:
    ram_used_mb: int
    ram_total_mb: int
    gpu_util_pct: int | None = None
    power_mw: int | None = None


def parse_tegrastats(line: str) -> TegraSample | None:
    """One tegrastats line -> sample; None for lines without a RAM field."""
    m = _RAM.search(line)
    if not m:
        return None
    g = _GR3D.search(line)
    p = _POWER.search(line)
    return TegraSample(int(m.group(1)), int(m.group(2)), int(g.group(1)) if g else None,
                       int(p.group(2)) if p else None)


@dataclass
class TegrastatsSampler:
    """Runs ``tegrastats`` in the background during a measurement and keeps the samples."""

    interval_ms: int = 100
    samples: list[TegraSample] = field(default_factory=list)

    @staticmethod
    def available() -> bool:
        return shutil.which("tegrastats") is not None

    def __enter__(self) -> TegrastatsSampler:
        self._proc = subprocess.Popen(["tegrastats", "--interval", str(self.interval_ms)],
                                      stdout=subprocess.PIPE, text=True)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        for line in self._proc.stdout:
            sample = parse_tegrastats(line)
            if sample:
                self.samples.append(sample)

    def __exit__(self, *exc) -> None:
        self._proc.terminate()
        self._proc.wait(timeout=5)
        self._thread.join(timeout=5)

    def peak_ram_mb(self) -> int | None:
        return max((s.ram_used_mb for s in self.samples), default=None)
