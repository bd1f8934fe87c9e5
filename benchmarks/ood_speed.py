"""Speed and memory of the OOD metrics and the feature scores at the issue's target sizes.

Targets (issue 5): metrics of 50k ID + 50k OOD scores < 1 s; knn and mahalanobis for 50k queries
against 50k fit features of dimension 384 < 60 s on 2 cores, with no 50k x 50k matrix in memory.
Peak memory is numpy's traced allocations (tracemalloc) during the call, inputs excluded. CPU time
(all threads) is printed beside wall time because on a shared machine wall time mostly measures
the neighbours: on an otherwise idle 2-core machine wall ~ cpu / 2 for the BLAS-bound parts.

    python benchmarks/ood_speed.py                 # the targets
    python benchmarks/ood_speed.py --n 10000       # quicker
"""

from __future__ import annotations

import argparse
import os
import time
import tracemalloc

import numpy as np

from vitqbench.ood import ScoreInputs, create_score, ood_metrics
from vitqbench.ood.metrics import expected_calibration_error, topk_accuracy


def timed(label: str, fn) -> object:
    tracemalloc.start()
    start, cpu = time.perf_counter(), time.process_time()
    result = fn()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"{label:<48} {seconds:8.3f} s wall {cpu:8.3f} s cpu   peak {peak / 2**20:7.1f} MiB")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000, help="ID, OOD, fit and query sizes")
    parser.add_argument("--dim", type=int, default=384, help="feature dimension")
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    n, dim = args.n, args.dim
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"n={n} dim={dim} classes={args.classes} seed={args.seed} cores={os.cpu_count()} load1={load:.1f}")

    id_scores, ood_scores = rng.normal(1, 1, n), rng.normal(0, 1, n)
    timed(f"ood_metrics {n} + {n} scores", lambda: ood_metrics(id_scores, ood_scores))
    tied = np.round(id_scores, 1).astype(np.float32), np.round(ood_scores, 1).astype(np.float32)
    timed(f"ood_metrics {n} + {n} tied float32 scores", lambda: ood_metrics(*tied))

    labels = rng.integers(0, args.classes, n)
    centers = rng.normal(size=(args.classes, dim)).astype(np.float32)
    fit = centers[labels] + rng.normal(size=(n, dim)).astype(np.float32)
    queries = centers[rng.integers(0, args.classes, n)] + 1.5 * rng.normal(size=(n, dim)).astype(np.float32)
    logits = rng.normal(size=(n, args.classes)).astype(np.float32)
    timed(f"topk_accuracy k=5 {n} x {args.classes}", lambda: topk_accuracy(logits, labels, 5))
    timed(f"expected_calibration_error {n} x {args.classes}", lambda: expected_calibration_error(logits, labels))

    knn = timed(f"knn k=50 fit {n} x {dim}", lambda: create_score("knn", k=50).fit(ScoreInputs(features=fit)))
    timed(f"knn k=50 score {n} queries vs {n}", lambda: knn.score(ScoreInputs(features=queries)))
    maha = timed(
        f"mahalanobis fit {n} x {dim}, {args.classes} classes",
        lambda: create_score("mahalanobis").fit(ScoreInputs(features=fit, labels=labels)),
    )
    timed(f"mahalanobis score {n} queries", lambda: maha.score(ScoreInputs(features=queries)))


if __name__ == "__main__":
    main()
