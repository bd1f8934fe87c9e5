"""Peak memory of the current process: resident (CPU) and, on NVIDIA GPUs, device memory."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB."""
    status = Path("/proc/self/status")
    if status.is_file():
        # VmHWM belongs to this process's own address space. getrusage's ru_maxrss does not: Linux
        # carries it across fork and exec, so a worker would inherit its parent's peak.
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**10  # kB
    try:
        import resource
    except ImportError:  # Windows: psutil exposes the peak working set instead
        import psutil

        return psutil.Process().memory_info().peak_wset / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def nvidia_smi(args: list[str]) -> list[str]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run([exe, *args], capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def _process_used_mb(pid: int) -> float | None:
    for line in nvidia_smi(["--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"]):
        fields = [f.strip() for f in line.split(",")]
        if len(fields) == 2 and fields[0] == str(pid) and fields[1].isdigit():
            return float(fields[1])
    return None


def _device_used_mb() -> float | None:
    lines = nvidia_smi(["--query-gpu=memory.used", "--format=csv,noheader,nounits"])
    return float(lines[0]) if lines and lines[0].isdigit() else None


class GpuMemoryProbe:
    """Peak GPU memory of one process, sampled between measurement rounds (outside the timed loop).

    Per-process figures come from ``nvidia-smi --query-compute-apps``; inside containers the
    process is often not listed (PID namespaces), and the probe falls back to the growth of the
    first device's used memory since the probe was made (``scope == "device"``). That growth is
    only this process's while no other model loads: the runner loads and warms up one model at a
    time, and samples taken later (``device_fallback=False``) read the process line only.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.baseline = _device_used_mb()
        self.peak_mb: float | None = None
        self.scope: str | None = None

    def sample(self, device_fallback: bool = True) -> None:
        used = _process_used_mb(self.pid)
        scope = "process"
        if used is None and device_fallback and self.baseline is not None:
            device = _device_used_mb()
            used = None if device is None else device - self.baseline
            scope = "device"
        if used is not None and (self.peak_mb is None or used > self.peak_mb):
            self.peak_mb, self.scope = used, scope
