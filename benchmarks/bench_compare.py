"""fp32 vs int8 vs int4 side by side with `vitqbench bench`, and a plain-loop cross-check of its p50.

    python benchmarks/bench_compare.py [--model deit_small_patch16_224] [--batches 1,8] [--threads 2]
    python benchmarks/bench_compare.py --provider cuda --batches 1,8,32   # on a GPU machine

Exports the random-init model (no download), quantizes it with ``vitqbench.quant.quantize_model``
(8-bit static QDQ calibrated on a few noise images: calibration content does not change speed;
4-bit with the default block-wise settings), measures all files with ``run_benchmark`` in
interleaved rounds, then checks bench against a plain ``InferenceSession.run`` loop in this
process: per model at batch 1, plain loops (bench's options, and ORT's default thread spinning)
alternate with single-model bench runs, and the medians of their p50s are compared.
Files are kept in --workdir and reused by later runs.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from vitqbench.bench import markdown_table, run_benchmark
from vitqbench.bench.results import caption
from vitqbench.bench.runner import parse_batches
from vitqbench.bench.targets import inspect_onnx
from vitqbench.runtime import execution_target


def build_models(model: str, workdir: Path, calib: str) -> list[Path]:
    from vitqbench.export import export_model
    from vitqbench.quant import CalibConfig, quantize_model

    workdir.mkdir(parents=True, exist_ok=True)
    fp32 = workdir / f"{model}.onnx"
    if not fp32.exists():
        print(f"exporting {model} (random init) -> {fp32}")
        export_model(model, fp32, pretrained=False)
    paths = [fp32]
    for bits, scheme in ((8, "w8a8"), (4, "w4")):
        out = workdir / f"{model}.int{bits}.onnx"
        if not out.exists():
            print(f"quantizing to {bits} bits -> {out}")
            try:
                quantize_model(fp32, out, scheme, calib=CalibConfig(data=calib, size=32), progress=False)
            except Exception as exc:  # measure what exists; say plainly what could not be built
                print(f"  int{bits} not available: {type(exc).__name__}: {exc}")
                continue
        paths.append(out)
    return paths


def plain_p50(path: Path, threads: int, iters: int, warmup: int, spinning: bool, seed: int = 0) -> float:
    """The simplest possible measurement: one session in this process, a timed ``run`` loop.

    ``spinning=True`` is ORT's default behaviour; ``False`` matches the options ``bench`` uses.
    """
    target = inspect_onnx(path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(seed).standard_normal((1, *target.input_shape), dtype=np.float32)
    feeds = {target.input_name: x.astype(target.dtype)}
    for _ in range(warmup):
        session.run(None, feeds)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter_ns()
        session.run(None, feeds)
        times.append((time.perf_counter_ns() - t0) / 1e6)
    return float(np.median(times))


def agreement(path: Path, args: argparse.Namespace) -> dict[str, float]:
    """Median p50 of bench and of plain loops, alternated ``--check-reps`` times at batch 1.

    Alternating within seconds keeps the drift of a shared machine out of the comparison.
    """
    p50s: dict[str, list[float]] = {"bench": [], "plain": [], "plain_spinning": []}
    for _ in range(args.check_reps):
        p50s["plain"].append(plain_p50(path, args.threads, args.iters, args.warmup, spinning=False))
        p50s["plain_spinning"].append(plain_p50(path, args.threads, args.iters, args.warmup, spinning=True))
        single = run_benchmark(
            [path], threads=args.threads, iters=args.iters, rounds=1, warmup=args.warmup, progress=False
        )
        p50s["bench"].append(single.records[0].p50_ms)
    return {k: float(np.median(v)) for k, v in p50s.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="deit_small_patch16_224")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/vitqbench_bench_compare"))
    ap.add_argument("--calib", default="noise:gaussian")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--provider", default="cpu", help="cpu, cuda or tensorrt (the plain check is CPU only)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--torch", action="store_true", help="add the PyTorch eager row")
    ap.add_argument("--check-reps", type=int, default=3, help="bench/plain alternations per model")
    ap.add_argument("--json", type=Path, help="also write bench's JSON here")
    args = ap.parse_args()

    paths = build_models(args.model, args.workdir, args.calib)
    result = run_benchmark(
        paths, target=execution_target(args.provider), batches=parse_batches(args.batches), threads=args.threads,
        iters=args.iters, rounds=args.rounds, warmup=args.warmup, torch_baseline=args.torch,
    )
    print(markdown_table(result.records))
    print(caption(result) + "\n")
    if args.json:
        result.write_json(args.json)

    by_batch: dict[int, list] = {}
    for r in result.records:
        by_batch.setdefault(r.batch, []).append(r)
    for batch, records in by_batch.items():
        ref = records[0]
        for r in records[1:]:
            if r.ok and ref.ok and r.path:
                verdict = "lower" if r.peak_rss_mb < ref.peak_rss_mb else "NOT lower"
                print(f"batch {batch}: {r.model} peak RSS {r.peak_rss_mb:.0f} MB vs {ref.peak_rss_mb:.0f} MB "
                      f"({verdict}), speed-up {r.speedup:.2f}x")

    if args.provider != "cpu":
        return
    print(f"\nbench p50 vs a plain InferenceSession.run loop in this process (batch 1, {args.iters} iters, "
          f"medians of {args.check_reps} alternations):")
    for path in paths:
        m = agreement(path, args)
        diff = m["bench"] / m["plain"] - 1
        verdict = "within 15%" if abs(diff) <= 0.15 else "OUTSIDE 15%"
        print(f"  {path.name}: bench {m['bench']:.2f} ms, plain (spinning off, as bench) {m['plain']:.2f} ms "
              f"-> {diff:+.1%} ({verdict}); plain with ORT's default spinning {m['plain_spinning']:.2f} ms")

if __name__ == "__main__":
    main()
