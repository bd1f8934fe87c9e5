"""``--bench``: latency, throughput and size of the evaluated models, measured by the bench part."""

from __future__ import annotations

import dataclasses
from typing import Any

from vitqbench.errors import VitqbenchError
from vitqbench.results import Failure, ModelInfo
from vitqbench.runtime import ExecutionTarget


def bench_models(
    models: list[ModelInfo],
    target: ExecutionTarget,
    threads: int | None,
    options: dict[str, Any],
    progress: bool,
    failures: list[Failure],
) -> list[dict[str, Any]]:
    """One record per model and batch size (bench's own subprocess isolation); failures recorded."""
    from vitqbench.bench import run_benchmark

    if not models:
        return []
    try:
        result = run_benchmark(
            [m.path for m in models], target=target, threads=threads, progress=progress, **options
        )
    except VitqbenchError as exc:
        failures.append(Failure(None, None, "bench", str(exc)))
        return []
    by_path = {m.path: m for m in models}
    records = []
    for record in result.records:
        row = dataclasses.asdict(record)
        info = by_path.get(str(row.get("path")))
        row["model"] = info.label if info else row["model"]
        if info is not None and row.get("precision") is None:
            row["precision"] = info.precision
        if row.get("status") != "ok":
            failures.append(Failure(row["model"], None, "bench", str(row.get("error"))))
        records.append(row)
    return records
