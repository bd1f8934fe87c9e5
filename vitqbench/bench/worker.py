"""The measuring side of `bench`: one model in one process, driven by JSON lines on stdin/stdout.

Run as ``python -m vitqbench.bench.worker``. Each process holds exactly one model, so its peak
resident memory is that model's alone. Requests and replies are one JSON object per line:

    {"op": "ping"}            -> {"ok": true}   (the interpreter is up)
    {"op": "load", ...}       -> {"ok": true, "session_s", "base_rss_mb", "pid", "provider"}
    {"op": "warmup", "n"}     -> {"ok": true}
    {"op": "run", "n" | "seconds"} -> {"ok": true, "times_ms": [...], "start_ns", "end_ns"}
    {"op": "finish"}          -> {"ok": true, "peak_rss_mb", "peak_gpu_mb", ...}   (then the process exits)

A failure answers {"ok": false, "error": "one line"}; a crash answers nothing (the parent sees EOF).
This module imports only what the model needs (no onnx, no rich), so the baseline RSS stays small.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

import numpy as np

from vitqbench.bench.memory import GpuMemoryProbe, peak_rss_mb
from vitqbench.errors import first_line

Runner = Callable[[], None]
_RUNTIME_MODULES = {"onnx": ("onnxruntime", "vitqbench.runtime"), "torch": ("torch", "timm")}


def _random_input(shape: list[int], dtype: str, seed: int) -> np.ndarray:
    # Same seed and shape in every worker: all models see the same tensor.
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32).astype(dtype)


def _load_onnx(req: dict[str, Any], x: np.ndarray) -> tuple[Runner, str]:
    import onnxruntime as ort

    from vitqbench.runtime import create_session, execution_target

    target = execution_target(req["provider"], req.get("provider_options"))
    session = create_session(req["path"], target, threads=req["threads"], allow_spinning=req["allow_spinning"])
    used = session.get_providers()[0]
    input_name = req["input_name"]
    if not req["io_binding"]:
        feeds = {input_name: x}
        return (lambda: session.run(None, feeds)), used
    # Device-resident input and outputs: the loop measures the model, not host<->device copies.
    device = "cpu" if used == "CPUExecutionProvider" else "cuda"
    binding = session.io_binding()
    binding.bind_ortvalue_input(input_name, ort.OrtValue.ortvalue_from_numpy(x, device, 0))
    for out in session.get_outputs():
        binding.bind_output(out.name, device)

    def run() -> None:
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()  # the timer must stop when the device has finished

    return run, used


def _load_torch(req: dict[str, Any], x: np.ndarray) -> tuple[Runner, str]:
    import timm
    import torch

    torch.set_num_threads(req["threads"])
    torch.manual_seed(req["seed"])
    kwargs = dict(req["model_kwargs"])
    kwargs.setdefault("num_classes", req["num_classes"])
    model = timm.create_model(req["timm_name"], pretrained=False, **kwargs).eval()
    cuda = req["provider"] != "cpu" and torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    model = model.to(device)
    tensor = torch.from_numpy(x).to(device)

    def run() -> None:
        with torch.inference_mode():
            model(tensor)
        if cuda:
            torch.cuda.synchronize()

    return run, f"torch-{device.type}"


def _timed(run: Runner, n: int | None, seconds: float | None) -> list[float]:
    times: list[float] = []
    deadline = time.perf_counter() + seconds if seconds is not None else None
    while True:
        t0 = time.perf_counter_ns()
        run()
        times.append((time.perf_counter_ns() - t0) / 1e6)
        if deadline is not None:
            if time.perf_counter() >= deadline:
                return times
        elif len(times) >= n:
            return times


class Worker:
    def __init__(self) -> None:
        self.run: Runner | None = None
        self.gpu: GpuMemoryProbe | None = None

    def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req["op"]
        if op == "ping":
            return {}
        if op == "load":
            x = _random_input(req["input_shape"], req["dtype"], req["seed"])
            if req["provider"] != "cpu":
                self.gpu = GpuMemoryProbe(os.getpid())
            for module in _RUNTIME_MODULES[req["kind"]]:  # imports are the runtime's cost, not the model's
                importlib.import_module(module)
            base = peak_rss_mb()
            t0 = time.perf_counter()
            self.run, used = (_load_torch if req["kind"] == "torch" else _load_onnx)(req, x)
            session_s = time.perf_counter() - t0
            self._sample_gpu()
            return {"session_s": session_s, "base_rss_mb": base, "pid": os.getpid(), "provider": used}
        if self.run is None:
            raise RuntimeError(f"{op!r} before 'load'")
        if op == "warmup":
            _timed(self.run, max(1, req["n"]), None)
            self._sample_gpu()
            return {}
        if op == "run":
            start = time.monotonic_ns()  # system-wide clock: the parent can check the interleaving
            times = _timed(self.run, req.get("n"), req.get("seconds"))
            end = time.monotonic_ns()
            self._sample_gpu(device_fallback=False)  # other models are loaded by now
            return {"times_ms": times, "start_ns": start, "end_ns": end}
        if op == "finish":
            gpu = self.gpu
            return {
                "peak_rss_mb": peak_rss_mb(),
                "peak_gpu_mb": gpu.peak_mb if gpu else None,
                "gpu_mem_scope": gpu.scope if gpu else None,
            }
        raise RuntimeError(f"unknown request {op!r}")

    def _sample_gpu(self, device_fallback: bool = True) -> None:
        if self.gpu is not None:
            self.gpu.sample(device_fallback)


def serve(requests: TextIO, replies: TextIO) -> None:
    worker = Worker()
    for line in requests:
        req = json.loads(line)
        try:
            reply = {"ok": True, **worker.handle(req)}
        except Exception as exc:  # report any model or runtime failure to the parent as one line
            reply = {"ok": False, "error": first_line(exc)}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()
        if req["op"] == "finish" or not reply["ok"]:
            return


def main() -> None:
    # Keep the protocol channel private: anything a library prints to stdout goes to stderr instead.
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    serve(sys.stdin, replies)


if __name__ == "__main__":
    main()
