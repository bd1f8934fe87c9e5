"""bench: latency, throughput and memory of ONNX models side by side, each in its own process.

Public API: ``run_benchmark(paths, settings=None, **options) -> BenchResult``, ``BenchSettings``,
``BenchRecord``, ``BenchResult`` (``write_json``, ``write_csv``), ``markdown_table(records)``.
Imported lazily: the worker processes import ``vitqbench.bench.worker`` and must stay light.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "run_benchmark": "vitqbench.bench.runner",
    "BenchSettings": "vitqbench.bench.runner",
    "BenchRecord": "vitqbench.bench.results",
    "BenchResult": "vitqbench.bench.results",
    "markdown_table": "vitqbench.bench.results",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_EXPORTS[name]), name)
