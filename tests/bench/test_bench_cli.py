"""`vitqbench bench` on the command line: output files, the torch row, and one-line errors."""

from __future__ import annotations

import json

import onnxruntime as ort
import pytest
from bench_graphs import fails_at_run, fixed_batch, token_input, two_inputs


def test_cli_writes_table_json_csv_with_torch_row(run_cli, tiny_onnx, tmp_path):
    out_json, out_csv = tmp_path / "bench.json", tmp_path / "bench.csv"
    res = run_cli("bench", tiny_onnx, "--batch", "2", "--iters", "3", "--rounds", "1", "--warmup", "1",
                  "--torch", "--json", out_json, "--csv", out_csv)
    assert res.code == 0, res.stderr
    assert "tiny.onnx" in res.stdout and "torch:deit_tiny_patch16_224" in res.stdout
    records = json.loads(out_json.read_text())["records"]
    assert [r["provider"] for r in records] == ["cpu", "torch-cpu"]
    assert all(r["status"] == "ok" and r["batch"] == 2 for r in records)
    assert records[1]["speedup"] == pytest.approx(records[0]["p50_ms"] / records[1]["p50_ms"])
    assert out_csv.read_text().count("\ntiny.onnx,") == 1


def test_cli_reports_a_failed_model_and_exits_1(run_cli, tiny_onnx, tmp_path):
    out_json = tmp_path / "bench.json"
    broken = fails_at_run(tmp_path / "broken.onnx")
    res = run_cli("bench", tiny_onnx, broken, "--iters", "2", "--rounds", "1", "--warmup", "0", "--json", out_json)
    assert res.code == 1 and "failed: broken.onnx" in res.stdout
    assert [r["status"] for r in json.loads(out_json.read_text())["records"]] == ["ok", "failed"]


def _bad_inputs(tmp_path, tiny_onnx):
    (tmp_path / "text.onnx").write_text("not a model")
    (tmp_path / "empty.onnx").write_bytes(b"")
    return {
        "not onnx": ([tmp_path / "text.onnx"], "not a readable ONNX model"),
        "empty file": ([tmp_path / "empty.onnx"], "not an ONNX model"),
        "missing file": ([tmp_path / "nope.onnx"], "no such file"),
        "token input": ([token_input(tmp_path / "tok.onnx")], "not an image tensor"),
        "two inputs": ([two_inputs(tmp_path / "two.onnx")], "exactly one image input"),
        "fixed batch": ([fixed_batch(tmp_path / "fixed.onnx"), "--batch", "1,4"], "fixed batch size of 1"),
        "batch zero": ([tiny_onnx, "--batch", "0"], "positive integers"),
        "batch text": ([tiny_onnx, "--batch", "1,x"], "positive integers"),
        "iters and seconds": ([tiny_onnx, "--iters", "3", "--seconds", "1"], "not both"),
        "unknown provider": ([tiny_onnx, "--provider", "npu"], "unknown provider"),
        "torch without metadata": ([fixed_batch(tmp_path / "f.onnx"), "--torch"], "needs vitqbench metadata"),
    }


def test_bad_inputs_fail_with_one_line(run_cli, tiny_onnx, tmp_path):
    for case, (args, message) in _bad_inputs(tmp_path, tiny_onnx).items():
        res = run_cli("bench", *args)
        assert res.code != 0, case
        assert res.stderr.startswith("error: ") and message in res.stderr, (case, res.stderr)
        assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr, case


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA is available here")
def test_unavailable_provider_lists_the_available_ones(run_cli, tiny_onnx):
    res = run_cli("bench", tiny_onnx, "--provider", "cuda")
    assert res.code != 0
    assert "not available" in res.stderr and "CPUExecutionProvider" in res.stderr


def test_the_gpu_benchmark_says_in_one_line_that_there_is_no_gpu_provider():
    """benchmarks/gpu.py is for a GPU machine: on a CPU-only onnxruntime it measures nothing, in one line."""
    import subprocess
    import sys
    from pathlib import Path

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("a GPU provider is available here")
    script = Path(__file__).parents[2] / "benchmarks" / "gpu.py"
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        "error: no GPU provider in this onnxruntime (CUDA or TensorRT): "
        "pip uninstall -y onnxruntime && pip install 'onnxruntime-gpu>=1.20'"
    ]
