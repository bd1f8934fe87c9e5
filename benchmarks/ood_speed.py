"""Speed and memory of the OOD metrics and the feature scores at the issue's target sizes.

Targets (issues 5 and 17): metrics of 50k ID + 50k OOD scores < 1 s; every score that reads features
(knn, mahalanobis, rmds, nnguide, she, vim, react, dice, ash, scale, fdbd), fitted on 50k features of
dimension 384 and scoring 50k queries, < 60 s each on 2 cores, with no 50k x 50k matrix in memory.
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

from vitqbench.errors import VitqbenchError
from vitqbench.ood import SCORES, ScoreInputs, create_score, ood_metrics
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

    # Every score that reads features: fit on n samples, then score n queries (the target:
    # each under 60 s on 2 cores at n = 50k, d = 384).
    weight = rng.normal(size=(args.classes, dim)).astype(np.float32) / np.sqrt(dim)
    bias = rng.normal(size=args.classes).astype(np.float32)
    head = (weight, bias)
    fit_set = ScoreInputs(logits=fit @ weight.T + bias, features=fit, labels=labels, head=head)
    query_set = ScoreInputs(logits=queries @ weight.T + bias, features=queries, head=head)
    variants = [(name, {}) for name, cls in SCORES.items() if "features" in (*cls.reads, *cls.fit_reads)]
    variants += [("ash", {"variant": "ash_p"}), ("ash", {"variant": "ash_s"})]
    for name, params in variants:
        label = ":".join([name, *(f"{k}={v}" for k, v in params.items())])
        try:
            score = timed(f"{label} fit {n} x {dim}", lambda: create_score(name, **params).fit(fit_set))  # noqa: B023
        except VitqbenchError as exc:  # e.g. nnguide's alpha bank smaller than K at a small --n
            print(f"{label:<48} skipped: {exc}")
            continue
        timed(f"{label} score {n} queries", lambda: score.score(query_set))  # noqa: B023


if __name__ == "__main__":
    main()
