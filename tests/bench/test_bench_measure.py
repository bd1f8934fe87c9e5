"""bench on real (tiny) models: record structure and relations, interleaving, process isolation."""

from __future__ import annotations

import csv
import json
import os
import shutil

import psutil
import pytest
from bench_graphs import fails_at_run

from vitqbench.bench import markdown_table, run_benchmark
from vitqbench.bench.runner import BenchSettings

REQUIRED = {"model", "provider", "batch", "threads", "mean_ms", "p50_ms", "p90_ms", "p99_ms",
            "throughput_ips", "peak_rss_mb", "model_mb", "session_s"}


@pytest.fixture(scope="module")
def two_models(tiny_onnx, tmp_path_factory):
    copy = tmp_path_factory.mktemp("bench") / "tiny_copy.onnx"
    shutil.copy(tiny_onnx, copy)
    return [tiny_onnx, copy]


@pytest.fixture(scope="module")
def result(two_models):
    return run_benchmark(two_models, batches=(1, 3), warmup=1, iters=6, rounds=3, threads=1, progress=False)


def test_records_have_keys_and_sane_statistics(result):
    assert [(r.model, r.batch) for r in result.records] == [
        ("tiny.onnx", 1), ("tiny_copy.onnx", 1), ("tiny.onnx", 3), ("tiny_copy.onnx", 3)
    ]
    for r in result.records:
        assert r.ok and r.iters == 6 and r.threads == 1 and r.provider == "cpu"
        assert r.min_ms <= r.p50_ms <= r.p90_ms <= r.p99_ms <= r.max_ms
        assert r.min_ms <= r.mean_ms <= r.max_ms
        assert r.throughput_ips == pytest.approx(r.batch * 1000 / r.mean_ms, rel=1e-9)
        assert r.session_s > 0 and r.model_mb > 0 and r.peak_rss_mb >= r.base_rss_mb > 0
        assert r.allow_spinning is False and r.schedule == "interleaved"
    first, second = result.records[:2]
    assert first.speedup == 1.0 and first.rss_ratio == 1.0
    assert second.speedup == pytest.approx(first.p50_ms / second.p50_ms)
    assert second.rss_ratio == pytest.approx(second.peak_rss_mb / first.peak_rss_mb)


def test_rounds_alternate_between_models(result):
    for batch in (1, 3):
        spans = [s for s in result.timeline if s.batch == batch]
        assert [(s.round, s.model) for s in spans] == [
            (i, m) for i in range(3) for m in ("tiny.onnx", "tiny_copy.onnx")
        ]
        # CLOCK_MONOTONIC is shared by all processes: no two models ever ran at the same time.
        assert all(a.end_ns <= b.start_ns for a, b in zip(spans, spans[1:], strict=False))


def test_each_model_runs_in_its_own_process(result):
    import torch  # noqa: F401  (makes this process far bigger than a worker holding a tiny model)

    pids = [r.worker_pid for r in result.records]
    assert len(set(pids)) == len(pids) and os.getpid() not in pids
    own_rss = psutil.Process().memory_info().rss / 2**20
    assert all(r.peak_rss_mb < own_rss for r in result.records)


def test_json_csv_and_markdown(result, tmp_path):
    result.write_json(tmp_path / "b.json")
    data = json.loads((tmp_path / "b.json").read_text())
    assert {"cpu_model", "physical_cores", "onnxruntime"} <= set(data["machine"])
    assert len(data["records"]) == 4 and all(REQUIRED <= set(rec) for rec in data["records"])
    assert data["settings"]["allow_spinning"] is False

    result.write_csv(tmp_path / "b.csv")
    lines = (tmp_path / "b.csv").read_text().splitlines()
    assert sum(line.startswith("# ") for line in lines) == len(result.machine)
    rows = list(csv.DictReader(line for line in lines if not line.startswith("#")))
    assert len(rows) == 4 and REQUIRED <= set(rows[0])
    assert float(rows[0]["p50_ms"]) == pytest.approx(result.records[0].p50_ms)

    table = markdown_table(result.records).splitlines()
    assert len(table) == 2 + 4 and "tiny_copy.onnx" in table[3]


def test_a_model_failing_at_run_fails_alone(tiny_onnx, tmp_path):
    broken = fails_at_run(tmp_path / "broken.onnx")
    result = run_benchmark(
        [tiny_onnx, broken], warmup=0, seconds=0.2, rounds=2, io_binding=True, progress=False
    )
    good, bad = result.records
    assert good.ok and good.iters >= 2 and good.speedup == 1.0 and good.io_binding
    assert bad.status == "failed" and "reshape" in bad.error.lower() and bad.p50_ms is None


def test_a_crashing_runtime_fails_alone(tiny_onnx, tmp_path, monkeypatch):
    """The second worker aborts the whole process (as a runtime segfault would) at its first run."""
    import sys

    import vitqbench.bench.client as client

    crash = (
        "import os\nfrom vitqbench.bench import worker\nhandle = worker.Worker.handle\n"
        "worker.Worker.handle = lambda self, req: os.abort() if req['op'] == 'run' else handle(self, req)\n"
        "worker.main()\n"
    )
    commands = iter([client.worker_command("onnx"), [sys.executable, "-c", crash]])
    monkeypatch.setattr(client, "worker_command", lambda kind: next(commands))
    copy = tmp_path / "tiny_b.onnx"
    shutil.copy(tiny_onnx, copy)
    good, bad = run_benchmark([tiny_onnx, copy], warmup=1, iters=4, rounds=2, progress=False).records
    assert good.ok and good.iters == 4
    assert bad.status == "failed" and "SIGABRT" in bad.error


def test_round_plan_splits_iterations():
    assert BenchSettings(iters=7, rounds=3).round_plan() == [{"n": 3}, {"n": 2}, {"n": 2}]
    assert BenchSettings(iters=2, rounds=10).round_plan() == [{"n": 1}, {"n": 1}]
    assert BenchSettings(seconds=1.0, rounds=4).round_plan() == [{"seconds": 0.25}] * 4
