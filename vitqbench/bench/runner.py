"""Measure models side by side: one worker process per model, interleaved rounds A B C A B C ...

All workers of one batch size are alive together (each holds its own session), so ORT's intra-op
thread spinning is turned off: an idle session's spinning threads would steal the running one's
cores. Within a round each model runs its share of iterations in turn; only ``session.run`` (or the
torch forward) is inside the timer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from vitqbench.bench.client import WorkerFailed, WorkerProcess
from vitqbench.bench.machine import machine_info
from vitqbench.bench.results import EMULATED_NOTE, BenchRecord, BenchResult, Span
from vitqbench.bench.stats import summarize
from vitqbench.bench.targets import Target, inspect_onnx, label_targets, torch_target
from vitqbench.errors import VitqbenchError, check_seed
from vitqbench.progress import progress_bar
from vitqbench.runtime import CPU, ExecutionTarget, check_threads, execution_target, physical_cores

DEFAULT_ITERS = 50


@dataclass
class BenchSettings:
    target: ExecutionTarget = CPU  # where the models run (provider and its options)
    threads: int | None = None  # intra-op threads; None: physical cores
    batches: Sequence[int] = (1,)
    warmup: int = 5
    iters: int | None = None  # per model and batch, over all rounds; DEFAULT_ITERS when seconds is None
    seconds: float | None = None  # per model and batch, over all rounds (instead of iters)
    rounds: int = 10
    torch_baseline: bool = False
    io_binding: bool | None = None  # None: on for GPU providers (device-resident input and outputs)
    seed: int = 0
    timeout_s: float = 900.0  # per worker request: a hung runtime is killed and reported as failed

    def resolved(self) -> BenchSettings:
        """Validated copy with defaults filled in; bad values raise one-line VitqbenchErrors."""
        batches = tuple(int(b) for b in self.batches)
        if not batches or any(b <= 0 for b in batches):
            raise VitqbenchError(f"batch sizes must be positive integers, got {list(self.batches)}")
        if self.iters is not None and self.seconds is not None:
            raise VitqbenchError("give either --iters or --seconds, not both")
        if self.iters is not None and self.iters <= 0:
            raise VitqbenchError(f"--iters must be positive, got {self.iters}")
        if self.seconds is not None and not self.seconds > 0:
            raise VitqbenchError(f"--seconds must be positive, got {self.seconds}")
        if self.warmup < 0:
            raise VitqbenchError(f"--warmup must be >= 0, got {self.warmup}")
        if self.rounds <= 0:
            raise VitqbenchError(f"--rounds must be positive, got {self.rounds}")
        check_threads(self.threads)
        check_seed(self.seed)
        target = execution_target(self.target).check_available()
        return dataclasses.replace(
            self,
            target=target,
            threads=self.threads or physical_cores(),
            batches=batches,
            iters=DEFAULT_ITERS if self.iters is None and self.seconds is None else self.iters,
            io_binding=target.device == "gpu" if self.io_binding is None else self.io_binding,
        )

    def round_plan(self) -> list[dict[str, Any]]:
        """The run request of each round: iterations split as evenly as possible, or time slices."""
        if self.seconds is not None:
            return [{"seconds": self.seconds / self.rounds}] * self.rounds
        assert self.iters is not None
        rounds = min(self.rounds, self.iters)
        return [{"n": self.iters // rounds + (r < self.iters % rounds)} for r in range(rounds)]


@dataclass
class _Slot:
    """One target's worker and what it has measured so far, for one batch size."""

    target: Target
    worker: WorkerProcess | None
    times: list[float] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def call(self, op: str, timeout_s: float, **fields: Any) -> dict[str, Any] | None:
        if self.worker is None:
            return None
        try:
            return self.worker.request(op, timeout_s, **fields)
        except WorkerFailed as exc:
            self.error = str(exc)
            self.close()
            return None

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()
            self.worker = None


def _load_request(target: Target, batch: int, s: BenchSettings) -> dict[str, Any]:
    return {
        "kind": target.kind,
        "path": str(target.path) if target.path else None,
        "provider": s.target.name,
        "provider_options": dict(s.target.options),
        "threads": s.threads,
        "allow_spinning": False,
        "io_binding": s.io_binding,
        "input_name": target.input_name,
        "input_shape": [batch, *target.input_shape],
        "dtype": target.dtype,
        "seed": s.seed,
        "timm_name": target.timm_name,
        "model_kwargs": target.model_kwargs,
        "num_classes": target.num_classes,
    }


def _record(slot: _Slot, batch: int, s: BenchSettings) -> BenchRecord:
    t = slot.target
    record = BenchRecord(
        model=t.label,
        provider=s.target.name,
        batch=batch,
        threads=s.threads or 0,
        path=str(t.path) if t.path else None,
        precision=t.precision,
        execution=t.execution,
        note=EMULATED_NOTE if t.execution == "emulated" else None,
        model_mb=t.model_mb,
        io_binding=bool(s.io_binding) and t.kind == "onnx",
        allow_spinning=False,
        schedule="interleaved",
        worker_pid=slot.info.get("pid"),
        backend=slot.info.get("provider"),
    )
    if t.kind == "torch" and record.backend:
        record.provider = record.backend
    if slot.error is not None or not slot.times:
        record.status, record.error = "failed", slot.error or "no timings"
        return record
    for key, value in dataclasses.asdict(summarize(slot.times, batch)).items():
        setattr(record, key, value)
    for key in ("session_s", "base_rss_mb", "peak_rss_mb", "peak_gpu_mb", "gpu_mem_scope"):
        setattr(record, key, slot.info.get(key))
    return record


def _add_ratios(records: list[BenchRecord]) -> None:
    ref = records[0]
    if not ref.ok:
        return
    for r in records:
        if r.ok:
            r.speedup = ref.p50_ms / r.p50_ms if r.p50_ms else None
            r.rss_ratio = r.peak_rss_mb / ref.peak_rss_mb if r.peak_rss_mb and ref.peak_rss_mb else None


def _measure_batch(
    targets: list[Target], batch: int, s: BenchSettings, progress: Progress, task: Any
) -> tuple[list[BenchRecord], list[Span]]:
    slots: list[_Slot] = []
    spans: list[Span] = []
    plan = s.round_plan()
    try:
        for t in targets:  # start every process first: their interpreters boot in parallel
            slots.append(_Slot(t, WorkerProcess(t.kind)))
        for slot in slots:  # all booted before any load: session_s must not share the cores with a boot
            slot.call("ping", s.timeout_s)
        # Load and warm up one model at a time: session_s shares the cores with nobody, and a GPU
        # probe that can only see the whole device reads this model's growth before the next loads.
        for slot in slots:
            progress.update(task, description=f"batch {batch}: loading {slot.target.label}")
            slot.info.update(slot.call("load", s.timeout_s, **_load_request(slot.target, batch, s)) or {})
            progress.advance(task)
            progress.update(task, description=f"batch {batch}: warming up {slot.target.label}")
            if s.warmup:
                slot.call("warmup", s.timeout_s, n=s.warmup)
            progress.advance(task)
        for i, request in enumerate(plan):
            for slot in slots:
                what = f"batch {batch}: round {i + 1}/{len(plan)} {slot.target.label}"
                progress.update(task, description=what)
                reply = slot.call("run", s.timeout_s + request.get("seconds", 0.0), **request)
                if reply is not None:
                    slot.times.extend(reply["times_ms"])
                    spans.append(Span(slot.target.label, batch, i, reply["start_ns"], reply["end_ns"]))
                progress.advance(task)
        for slot in slots:
            slot.info.update(slot.call("finish", s.timeout_s) or {})
    finally:
        for slot in slots:
            slot.close()
    records = [_record(slot, batch, s) for slot in slots]
    _add_ratios(records)
    return records, spans


def parse_batches(text: str) -> tuple[int, ...]:
    """``"1,8,32"`` -> ``(1, 8, 32)``; anything but positive integers is a one-line error."""
    try:
        batches = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise VitqbenchError(f"--batch expects positive integers like 1,8,32, got {text!r}") from None
    if any(b <= 0 for b in batches):
        raise VitqbenchError(f"batch sizes must be positive integers, got {text!r}")
    return batches


def prepare_targets(paths: Sequence[str | Path], torch_baseline: bool = False) -> list[Target]:
    """Check every file before anything runs: a bad one fails the command with one line."""
    if not paths:
        raise VitqbenchError("give at least one ONNX model to benchmark")
    targets = label_targets([inspect_onnx(p) for p in paths])
    if torch_baseline:
        targets.append(torch_target(targets[0]))
    return targets


def run_benchmark(
    paths: Sequence[str | Path],
    settings: BenchSettings | None = None,
    *,
    progress: bool = True,
    **options: Any,
) -> BenchResult:
    """Benchmark ONNX files side by side; ``options`` are BenchSettings fields (target, batches, ...).

    Records come in batch order, then model order; ratios compare each model with the first one at
    the same batch size. A model whose worker fails or crashes gets a ``failed`` record; the others
    are still measured.
    """
    s = dataclasses.replace(settings or BenchSettings(), **options).resolved()
    targets = prepare_targets(paths, s.torch_baseline)
    for t in targets:
        for b in s.batches:
            t.check_batch(b)
    steps_per_batch = len(targets) * (2 + len(s.round_plan()))
    records: list[BenchRecord] = []
    spans: list[Span] = []
    bar = progress_bar(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), enabled=progress
    )
    with bar:
        task = bar.add_task("bench", total=steps_per_batch * len(s.batches))
        for batch in s.batches:
            batch_records, batch_spans = _measure_batch(targets, batch, s, bar, task)
            records += batch_records
            spans += batch_spans
    settings_out = dataclasses.asdict(s)
    settings_out.update(provider=s.target.name, target=s.target.to_dict())
    settings_out.update(allow_spinning=False, schedule="interleaved", rounds=len(s.round_plan()))
    return BenchResult(records, machine_info(gpu=s.target.device == "gpu"), settings_out, spans)
