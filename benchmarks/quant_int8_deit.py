"""8-bit quantization of deit_small_patch16_224 (random init is fine for size and speed).

Measures, in one run: quantization time with N calibration images, file size int8 / fp32, and batch-1
latency at 2 threads of fp32 and int8 side by side (interleaved rounds, via ``vitqbench.bench``).

    python benchmarks/quant_int8_deit.py --calib fashion-mnist:train --calib-size 256
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

from vitqbench.bench import run_benchmark
from vitqbench.export import export_model
from vitqbench.quant import CalibConfig, Int8Config, quantize_model


def quantize(fp32: Path, int8: Path, args: argparse.Namespace) -> None:
    start, cpu_start = time.perf_counter(), time.process_time()
    meta = quantize_model(
        fp32,
        int8,
        Int8Config(calib_method=args.calib_method),
        calib=CalibConfig(args.calib, args.calib_size),
        progress=False,
    )
    total, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    record = meta.quantization
    print(
        f"quantize {args.model} int8 ({args.calib_method}, {args.calib_size} images of {args.calib}): "
        f"{total:.1f} s wall end to end, {cpu:.1f} s CPU; pre-process {record['seconds_pre_process']:.1f} s, "
        f"calibrate + quantize {record['seconds_calibrate_quantize']:.1f} s"
    )
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process: {peak_mb:.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="deit_small_patch16_224")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/q8/deit"))
    parser.add_argument("--calib", default="fashion-mnist:train")
    parser.add_argument("--calib-size", type=int, default=256)
    parser.add_argument("--calib-method", default="minmax")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--skip-bench", action="store_true")
    parser.add_argument("--bench-only", action="store_true", help="reuse the int8 file of an earlier run")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    fp32 = args.dir / f"{args.model}.onnx"
    if not fp32.exists():
        start = time.perf_counter()
        export_model(args.model, fp32, pretrained=False)
        print(f"export: {time.perf_counter() - start:.1f} s")
    int8 = args.dir / f"{args.model}.int8.onnx"
    if not args.bench_only:
        quantize(fp32, int8, args)
    ratio = int8.stat().st_size / fp32.stat().st_size
    print(f"size: fp32 {fp32.stat().st_size / 1e6:.1f} MB, int8 {int8.stat().st_size / 1e6:.1f} MB, {ratio:.3f}x")
    if args.skip_bench:
        return
    result = run_benchmark([fp32, int8], threads=args.threads, batches=(1,), iters=args.iters, progress=False)
    base = result.records[0]
    for rec in result.records:
        print(
            f"latency batch 1, {rec.threads} threads: {rec.precision} p50 {rec.p50_ms:.1f} ms "
            f"(mean {rec.mean_ms:.1f}), {rec.p50_ms / base.p50_ms:.2f}x fp32 ({rec.schedule}, "
            f"spinning {'on' if rec.allow_spinning else 'off'})"
        )


if __name__ == "__main__":
    main()
