"""ONNX Runtime sessions and provider choice, shared by quant, bench and eval."""

from __future__ import annotations

import os
from pathlib import Path

import onnxruntime as ort
import psutil

from vitqbench.errors import SWAP_TO_GPU, VitqbenchError, first_line

ort.set_default_logger_severity(3)  # errors only, before any session: no coloured load-time warnings

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


def available_cores() -> int:
    """CPUs this process may run on (its affinity mask: a container's or a scheduler's share)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def check_threads(threads: int | None, what: str = "--threads") -> None:
    """More threads than cores only makes them fight (a huge count starves the machine for minutes)."""
    if threads is None:
        return
    cores = available_cores()
    if not 1 <= threads <= cores:
        raise VitqbenchError(f"{what} must be in 1..{cores} (the cores available here), got {threads}")


def physical_cores() -> int:
    return psutil.cpu_count(logical=False) or psutil.cpu_count() or 1


def resolve_provider(name: str) -> str:
    """Map ``cpu|cuda|tensorrt`` to an available ORT provider, or fail with one clear line."""
    key = name.lower()
    if key not in PROVIDERS:
        raise VitqbenchError(f"unknown provider {name!r}; choose one of {', '.join(PROVIDERS)}")
    provider = PROVIDERS[key]
    available = ort.get_available_providers()
    if provider not in available:
        hint = f" (the GPU wheel replaces the CPU one: {SWAP_TO_GPU})" if key != "cpu" else ""
        raise VitqbenchError(
            f"provider {name} ({provider}) is not available; available: {', '.join(available)}{hint}"
        )
    return provider


def session_options(threads: int | None = None, allow_spinning: bool = True) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or physical_cores()
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if not allow_spinning:
        # With several sessions alive on few cores, idle spinning threads steal the running one's cores.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def create_session(
    path: str | Path,
    provider: str = "cpu",
    threads: int | None = None,
    allow_spinning: bool = True,
) -> ort.InferenceSession:
    """An InferenceSession on the named provider (CPU as fallback for ops the provider lacks)."""
    path = Path(path)
    if not path.is_file():
        raise VitqbenchError(f"no such file: {path}")
    chosen = resolve_provider(provider)
    fallbacks = [PROVIDERS["cpu"]]
    if chosen == PROVIDERS["tensorrt"] and PROVIDERS["cuda"] in ort.get_available_providers():
        fallbacks.insert(0, PROVIDERS["cuda"])  # nodes TensorRT rejects should stay on the GPU
    providers = [chosen] if chosen == PROVIDERS["cpu"] else [chosen, *fallbacks]
    try:
        return ort.InferenceSession(
            str(path), sess_options=session_options(threads, allow_spinning), providers=providers
        )
    except Exception as exc:  # ORT raises its own exception classes with multi-line messages
        raise VitqbenchError(f"ONNX Runtime cannot load {path}: {first_line(exc)}") from exc
