"""Execution targets (provider + options + cache tag) and ONNX Runtime sessions, shared by quant, bench and eval."""

from __future__ import annotations

import hashlib
import json
import os
import platform
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnxruntime as ort
import psutil

from vitqbench.errors import SWAP_TO_GPU, VitqbenchError, first_line

ort.set_default_logger_severity(3)  # errors only, before any session: no coloured load-time warnings

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "openvino": "OpenVINO",  # not an ORT provider: OpenVINO's own runtime on the CPU (extra `openvino`)
}
OPENVINO_INSTALL = "pip install -e '.[openvino]' (or pip install openvino)"


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


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


# The CPU features ORT's int8/int4 kernels dispatch on: without VNNI, u8s8 GEMMs use AVX2's saturating
# vpmaddubsw (hence w8a8's reduce_range), with AMX or AVX512-VNNI they take faster paths.
SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "amx_tile")


def cpu_features() -> dict[str, object]:
    """The SIMD flags above that this CPU has, and its clock (MHz, as /proc/cpuinfo reports it)."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return {"simd": None, "mhz": None}
    flags: set[str] = set()
    mhz = None
    for line in cpuinfo.read_text(errors="replace").splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags" and not flags:
            flags = set(value.split())
        elif key.strip() == "cpu MHz" and mhz is None:
            mhz = float(value)
    return {"simd": [f for f in SIMD_FLAGS if f in flags], "mhz": mhz}


def physical_cores() -> int:
    return psutil.cpu_count(logical=False) or psutil.cpu_count() or 1


@dataclass(frozen=True)
class ExecutionTarget:
    """Where models run: an ORT provider (``cpu|cuda|tensorrt``) or OpenVINO's CPU runtime, with options.

    ``openvino`` runs the same ONNX files on OpenVINO (its options are ``compile_model`` properties);
    the others are ONNX Runtime providers with ORT provider options.

    Made once (``execution_target``) and passed wherever a model runs; ``tag`` is what cache keys
    hold, so ``CPU`` and ``cpu`` share entries and different provider options never do.
    """

    name: str = "cpu"  # normalized: a key of PROVIDERS
    options: Mapping[str, str] = field(default_factory=dict)

    @property
    def provider(self) -> str:
        return PROVIDERS[self.name]

    @property
    def device(self) -> str:
        """``cpu`` or ``gpu``: what a scheduler must reserve for a model running here."""
        return "cpu" if self.name in ("cpu", "openvino") else "gpu"

    @property
    def runtime(self) -> str:
        return "openvino" if self.name == "openvino" else "onnxruntime"

    @property
    def tag(self) -> str:
        """Normalized name, plus a hash of the options when there are any (``cpu`` stays ``cpu``)."""
        if not self.options:
            return self.name
        text = json.dumps(dict(self.options), sort_keys=True)
        return f"{self.name}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"

    @property
    def providers(self) -> list[tuple[str, dict[str, str]]]:
        """ORT's ``providers=[(name, options), ...]``: this one first, then CPU for ops it lacks."""
        if self.runtime != "onnxruntime":
            raise VitqbenchError(f"{self.name} is not an ONNX Runtime provider; this step runs on ONNX Runtime")
        chain = [(self.provider, dict(self.options))]
        if self.name == "tensorrt" and PROVIDERS["cuda"] in ort.get_available_providers():
            chain.append((PROVIDERS["cuda"], {}))  # nodes TensorRT rejects should stay on the GPU
        if self.name != "cpu":
            chain.append((PROVIDERS["cpu"], {}))
        return chain

    def check_available(self) -> ExecutionTarget:
        """Fail with one line when this ONNX Runtime build lacks the provider; returns self."""
        if self.runtime == "openvino":
            try:
                import openvino  # noqa: F401
            except ImportError:
                raise VitqbenchError(f"provider openvino needs OpenVINO: {OPENVINO_INSTALL}") from None
            return self
        available = ort.get_available_providers()
        if self.provider not in available:
            hint = f" (the GPU wheel replaces the CPU one: {SWAP_TO_GPU})" if self.name != "cpu" else ""
            raise VitqbenchError(
                f"provider {self.name} ({self.provider}) is not available; available: {', '.join(available)}{hint}"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "options": dict(self.options), "tag": self.tag}


CPU = ExecutionTarget()


def execution_target(name: str | ExecutionTarget = "cpu", options: Mapping[str, Any] | None = None) -> ExecutionTarget:
    """The target named ``cpu|cuda|tensorrt`` (any case) with ORT provider options; one line if unknown."""
    if isinstance(name, ExecutionTarget):
        return name if options is None else ExecutionTarget(name.name, _options(options))
    key = str(name).strip().lower()
    if key not in PROVIDERS:
        raise VitqbenchError(f"unknown provider {name!r}; choose one of {', '.join(PROVIDERS)}")
    return ExecutionTarget(key, _options(options or {}))


def parse_provider_options(pairs: list[str]) -> dict[str, str]:
    """``["device_id=1", "trt_fp16_enable=1"]`` to ORT provider options (ORT takes string values)."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise VitqbenchError(f"--provider-option expects KEY=VALUE, got {pair!r}")
        out[key.strip()] = value.strip()
    return out


def _options(options: Mapping[str, Any]) -> dict[str, str]:
    return {str(k): str(v) for k, v in sorted(options.items())}


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
    target: ExecutionTarget | str = CPU,
    threads: int | None = None,
    allow_spinning: bool = True,
) -> ort.InferenceSession:
    """An InferenceSession on the target's provider (CPU as fallback for ops the provider lacks)."""
    path = Path(path)
    if not path.is_file():
        raise VitqbenchError(f"no such file: {path}")
    target = execution_target(target).check_available()
    if target.runtime == "openvino":
        return OpenVinoSession(path, threads, target.options)
    try:
        return ort.InferenceSession(
            str(path), sess_options=session_options(threads, allow_spinning), providers=target.providers
        )
    except Exception as exc:  # ORT raises its own exception classes with multi-line messages
        raise VitqbenchError(f"ONNX Runtime cannot load {path}: {first_line(exc)}") from exc


class OpenVinoSession:
    """An OpenVINO compiled model behind the few ``InferenceSession`` methods vitqbench uses."""

    def __init__(self, path: Path, threads: int | None = None, options: Mapping[str, str] | None = None):
        import openvino as ov

        threads = threads or physical_cores()
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads, **(options or {})}
        core = ov.Core()
        try:
            self._compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        except Exception as exc:  # OpenVINO's RuntimeError carries a multi-line report naming the op
            raise VitqbenchError(f"OpenVINO cannot load {path}: {first_line(exc)}") from exc
        self._request = self._compiled.create_infer_request()
        self._outputs = {o.get_any_name(): o for o in self._compiled.outputs}

    def run(self, names: list[str] | None, feeds: dict[str, Any]) -> list[Any]:
        results = self._request.infer(feeds)
        return [results[self._outputs[name]] for name in (names or list(self._outputs))]

    def get_inputs(self) -> list[Any]:
        return [_Arg(i.get_any_name()) for i in self._compiled.inputs]

    def get_outputs(self) -> list[Any]:
        return [_Arg(name) for name in self._outputs]

    def get_providers(self) -> list[str]:
        return ["OpenVINO-CPU"]


@dataclass(frozen=True)
class _Arg:
    name: str
