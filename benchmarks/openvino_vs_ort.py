"""ONNX Runtime vs OpenVINO on the same files: latency (one runtime per process) and output agreement.

    python benchmarks/openvino_vs_ort.py MODEL.onnx [MORE.onnx ...] [--batches 1,8] [--reps 3] [--threads 2]

Each repetition runs ``vitqbench bench`` over all files on ONNX Runtime's CPU provider, then over
the same files on OpenVINO (``--provider openvino``): one process per model, so each process holds
one runtime; the two runs alternate ``--reps`` times and the table gives the median p50 of each, its
ratio to ORT's fp32 (the first file) and OpenVINO's time over ORT's for the same file. Agreement:
the largest relative difference between the two runtimes' logits on the same random batch.
Run it alone on the machine: it measures wall time.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np


def agreement(path: Path, threads: int) -> float:
    from vitqbench.metadata import read_metadata
    from vitqbench.runtime import create_session

    meta = read_metadata(path)
    x = np.random.default_rng(0).normal(0, 1, (4, *meta.data_config.input_size)).astype(np.float32)
    fetch, feeds = [meta.outputs["logits"]], {meta.input_name: x}
    ort_logits = create_session(path, "cpu", threads).run(fetch, feeds)[0]
    ov_logits = create_session(path, "openvino", threads).run(fetch, feeds)[0]
    return float(np.abs(ov_logits - ort_logits).max() / np.abs(ort_logits).max())


def main() -> None:
    from vitqbench.bench import run_benchmark
    from vitqbench.bench.results import caption
    from vitqbench.runtime import execution_target

    parser = argparse.ArgumentParser()
    parser.add_argument("models", nargs="+", type=Path, help="ONNX files; the first is the fp32 reference")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    p50: dict[tuple[str, str, int], list[float]] = {}
    captions = {}
    for _ in range(args.reps):
        for provider in ("cpu", "openvino"):
            result = run_benchmark(
                args.models, target=execution_target(provider), batches=batches, iters=args.iters,
                threads=args.threads, rounds=5, progress=False,
            )  # fmt: skip
            captions[provider] = caption(result)
            for r in result.records:
                if r.ok:
                    p50.setdefault((provider, r.path, r.batch), []).append(r.p50_ms)
    med = {k: statistics.median(v) for k, v in p50.items()}
    ref = str(args.models[0])
    header = "| file | batch | ORT p50 ms (x ORT fp32) | OpenVINO p50 ms (x ORT fp32) | OV / ORT | max rel. diff |"
    print("\n" + header)
    print("|---|---|---|---|---|---|")
    for path in args.models:
        diff = agreement(path, args.threads)
        for b in batches:
            o, v, base = med.get(("cpu", str(path), b)), med.get(("openvino", str(path), b)), med[("cpu", ref, b)]
            ort_cell = f"{o:.1f} ({o / base:.2f}x)" if o else "failed"
            ov_cell = f"{v:.1f} ({v / base:.2f}x)" if v else "failed"
            ratio = f"{v / o:.2f}" if o and v else "-"
            print(f"| {path.name} | {b} | {ort_cell} | {ov_cell} | {ratio} | {diff:.1e} |")
    for provider, text in captions.items():
        print(f"\n{provider}: {text}")


if __name__ == "__main__":
    main()
