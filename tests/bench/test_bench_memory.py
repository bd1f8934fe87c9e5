"""Memory probes: the worker's own peak RSS, and GPU memory parsed from nvidia-smi (faked here)."""

from __future__ import annotations

import psutil

import vitqbench.bench.memory as memory


def test_peak_rss_is_at_least_the_current_rss():
    assert memory.peak_rss_mb() >= psutil.Process().memory_info().rss / 2**20 * 0.99


def test_gpu_probe_prefers_the_process_line(monkeypatch):
    answers = {"--query-compute-apps": ["111, 900", "4242, 350"], "--query-gpu": ["1000"]}
    monkeypatch.setattr(memory, "nvidia_smi", lambda args: answers[args[0].split("=")[0]])
    probe = memory.GpuMemoryProbe(4242)
    probe.sample()
    answers["--query-compute-apps"] = ["4242, 300"]
    probe.sample()
    assert probe.peak_mb == 350 and probe.scope == "process"


def test_gpu_probe_falls_back_to_device_growth(monkeypatch):
    used = {"now": 1000}
    monkeypatch.setattr(
        memory, "nvidia_smi",
        lambda args: [] if args[0].startswith("--query-compute-apps") else [str(used["now"])],
    )
    probe = memory.GpuMemoryProbe(4242)
    used["now"] = 1800
    probe.sample()
    assert probe.peak_mb == 800 and probe.scope == "device"


def test_gpu_probe_without_nvidia_smi_reports_nothing(monkeypatch):
    monkeypatch.setattr(memory, "nvidia_smi", lambda args: [])
    probe = memory.GpuMemoryProbe(1)
    probe.sample()
    assert probe.peak_mb is None and probe.scope is None


def test_gpu_probe_reads_device_growth_only_while_its_model_is_alone(monkeypatch):
    """Samples taken once other models have loaded must not add their memory to this one's."""
    used = {"now": 1000}
    monkeypatch.setattr(
        memory, "nvidia_smi",
        lambda args: [] if args[0].startswith("--query-compute-apps") else [str(used["now"])],
    )  # fmt: skip
    probe = memory.GpuMemoryProbe(4242)
    used["now"] = 1300  # this model loaded and warmed up
    probe.sample()
    used["now"] = 2500  # the next model loaded on the same device
    probe.sample(device_fallback=False)
    assert probe.peak_mb == 300 and probe.scope == "device"
