"""Benchmark records and their files: JSON (machine block once), CSV, and a markdown table."""

from __future__ import annotations

import csv
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitqbench.errors import first_line
from vitqbench.files import atomic_path, write_text_atomic

# Emulated quantization (exact integer rounding, float arithmetic) is measured, but its time says
# nothing about a deployment on integer kernels: every table and file row says so.
EMULATED_NOTE = "emulated: not a deployment latency"


@dataclass
class BenchRecord:
    """One (model, provider, batch, threads) measurement. Statistics are None when the model failed."""

    model: str
    provider: str
    batch: int
    threads: int
    status: str = "ok"  # "ok" or "failed"
    error: str | None = None
    path: str | None = None
    precision: str | None = None
    execution: str | None = None  # the quantization record's: integer-kernels | emulated | float16 | float
    note: str | None = None  # "emulated: not a deployment latency" for models whose quantization is emulated
    backend: str | None = None  # what actually ran: the ORT execution provider, or torch-cpu/torch-cuda
    iters: int | None = None
    mean_ms: float | None = None
    std_ms: float | None = None
    min_ms: float | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    throughput_ips: float | None = None
    speedup: float | None = None  # first model's p50 / this p50, same batch
    peak_rss_mb: float | None = None  # peak resident memory of this model's own process
    base_rss_mb: float | None = None  # the same process before the model was loaded (interpreter + runtime)
    rss_ratio: float | None = None  # this peak_rss_mb / the first model's, same batch
    model_mb: float | None = None
    session_s: float | None = None
    peak_gpu_mb: float | None = None
    gpu_mem_scope: str | None = None  # "process", or "device" where the process could not be seen
    io_binding: bool = False
    allow_spinning: bool = False
    schedule: str = "interleaved"
    worker_pid: int | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True)
class Span:
    """When one measurement round of one model ran (CLOCK_MONOTONIC, shared by all processes)."""

    model: str
    batch: int
    round: int
    start_ns: int
    end_ns: int


@dataclass
class BenchResult:
    records: list[BenchRecord]
    machine: dict[str, Any]
    settings: dict[str, Any]
    timeline: list[Span] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "settings": self.settings,
            "records": [dataclasses.asdict(r) for r in self.records],
        }

    def write_json(self, path: str | Path) -> None:
        write_text_atomic(path, json.dumps(self.to_dict(), indent=2) + "\n")

    def write_csv(self, path: str | Path) -> None:
        """One row per record, after ``# key: value`` lines for the machine (read with comment="#")."""
        columns = [f.name for f in dataclasses.fields(BenchRecord)]
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
            for key, value in self.machine.items():
                f.write(f"# {key}: {value}\n")
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            for record in self.records:
                writer.writerow({k: "" if v is None else v for k, v in dataclasses.asdict(record).items()})


def _fmt(value: float | None, digits: int = 1, suffix: str = "") -> str:
    return "-" if value is None else f"{value:.{digits}f}{suffix}"


def table(records: list[BenchRecord]) -> tuple[list[str], list[list[str]]]:
    """Column names and display rows, shared by the terminal table and the markdown table."""
    gpu = any(r.peak_gpu_mb is not None for r in records)
    columns = ["model", "prec", "batch", "mean ms", "p50 ms", "p90 ms", "p99 ms", "img/s", "speed-up",
               "RSS MiB", "RSS ratio", "file MiB", "load s"] + (["GPU MiB"] if gpu else [])
    rows = []
    for r in records:
        head = [r.model, r.precision or "-", str(r.batch)]
        if r.note:
            head[1] += f" ({r.note})"
        if not r.ok:
            # The whole error is in the JSON/CSV; the table gets its first line, cut to a readable width.
            reason = first_line(r.error or "no timings")
            reason = reason if len(reason) <= 80 else reason[:77] + "..."
            rows.append(head + [f"failed: {reason}"] + [""] * (len(columns) - 4))
            continue
        rows.append(head + [
            _fmt(r.mean_ms, 2), _fmt(r.p50_ms, 2), _fmt(r.p90_ms, 2), _fmt(r.p99_ms, 2),
            _fmt(r.throughput_ips, 1), _fmt(r.speedup, 2, "x"), _fmt(r.peak_rss_mb, 0),
            _fmt(r.rss_ratio, 2, "x"), _fmt(r.model_mb, 1), _fmt(r.session_s, 2),
        ] + ([_fmt(r.peak_gpu_mb, 0)] if gpu else []))
    return columns, rows


def caption(result: BenchResult) -> str:
    """How the numbers were taken, in one line under the table."""
    s, m = result.settings, result.machine
    how = f"{s['iters']} iters" if s.get("seconds") is None else f"{s['seconds']} s"
    simd = ", ".join(m.get("cpu_simd") or []) or "SIMD flags unknown"
    openvino = s["provider"] == "openvino"
    runtime = f"OpenVINO {m.get('openvino')}" if openvino else f"ORT {m['onnxruntime']}"
    spinning = "OpenVINO's own threading" if openvino else "ORT spinning off"
    return (
        f"{s['provider']} provider, {s['threads']} threads, {how} in {s['rounds']} interleaved rounds "
        f"after {s['warmup']} warm-up, {spinning}, io_binding={'on' if s['io_binding'] else 'off'}; "
        f"speed-up = first model's p50 / p50; {m['cpu_model']} ({simd}), {runtime}"
    )


def rich_table(result: BenchResult) -> Any:
    from rich.table import Table

    columns, rows = table(result.records)
    out = Table(title="vitqbench bench", caption=caption(result), caption_justify="left")
    for i, name in enumerate(columns):
        out.add_column(name, justify="left" if i < 2 else "right", no_wrap=True)
    for row in rows:
        out.add_row(*row)
    return out


def markdown_table(records: list[BenchRecord]) -> str:
    columns, rows = table(records)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
