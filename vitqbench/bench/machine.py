"""The machine block written once per results file: what the numbers were measured on."""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Any

import psutil

from vitqbench.bench.memory import nvidia_smi
from vitqbench.runtime import cpu_features, cpu_model


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine_info(gpu: bool = False) -> dict[str, Any]:
    import onnxruntime

    features = cpu_features()
    info: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "cpu_simd": features["simd"],
        "cpu_mhz": features["mhz"],
        "physical_cores": psutil.cpu_count(logical=False),
        "logical_cores": psutil.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "onnxruntime_providers": ",".join(onnxruntime.get_available_providers()),
        "openvino": _version("openvino"),
        "numpy": _version("numpy"),
        "torch": _version("torch"),
        "timm": _version("timm"),
    }
    if gpu:
        query = ["--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
        info["gpu"] = "; ".join(nvidia_smi(query))
    return info
