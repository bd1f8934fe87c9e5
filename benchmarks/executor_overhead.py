"""Executor overhead: the same small eval study run in process and as Ray tasks, wall time each.

    python benchmarks/executor_overhead.py [--models 3] [--n 300] [--repeats 3] [--threads 1]

Study: M random-init tiny ViTs (deit_tiny, 32x32 input, depth 2; exported once into --work, random
seeds 0..M-1), ID digits:test:n=N, fit digits:train:n=N, OOD noise:gaussian:n=N and photos, scores
msp, energy and mahalanobis: M x 4 outputs cells and M scores cells. Each repeat runs both executors
on a fresh cache (every cell computed) and also once more on the warm cache (every cell a hit), so
the table shows the fixed cost of starting Ray and the cost per cell. Ray is started once by this
script (local, loopback, --ray-cpus CPUs; its start-up time is printed on its own line). Results are
checked equal between the executors. Run it alone on the machine: it measures wall time.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

TINY = {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 64, "num_heads": 2, "num_classes": 10}


def models(work: Path, count: int) -> list[Path]:
    from vitqbench.export import export_model

    work.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in range(count):
        path = work / f"tiny{seed}.onnx"
        if not path.exists():
            export_model("deit_tiny_patch16_224", path, pretrained=False, model_kwargs=TINY, seed=seed, verify=False)
        paths.append(path)
    return paths


def study(paths: list[Path], n: int, cache: Path, executor: str, threads: int):
    from vitqbench.evaluate import EvalConfig

    return EvalConfig(
        models=paths,
        id=f"digits:test:n={n}",
        fit=f"digits:train:n={n}",
        ood={"noise": f"noise:gaussian:n={n}", "photos": "photos"},
        scores="msp,energy,mahalanobis",
        threads=threads,
        cache_dir=cache,
        progress=False,
        executor=executor,
    )


def timed(config) -> tuple[float, dict]:
    from vitqbench.evaluate import run_eval
    from vitqbench.report import results_json

    start = time.perf_counter()
    results = run_eval(config)
    seconds = time.perf_counter() - start
    assert not results.failures, [f.describe() for f in results.failures]
    doc = json.loads(results_json(results))
    return seconds, {k: doc[k] for k in ("id_metrics", "ood_metrics", "deltas")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=3)
    ap.add_argument("--n", type=int, default=300, help="images per dataset (photos: its 120)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads per cell (= CPUs per Ray task)")
    ap.add_argument("--ray-cpus", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "vitqbench-executor-overhead")
    args = ap.parse_args()

    import ray

    paths = models(args.work / "models", args.models)
    cells = args.models * 4 + args.models
    t0 = time.perf_counter()
    ray.init(num_cpus=args.ray_cpus, include_dashboard=False, _node_ip_address="127.0.0.1", logging_level="ERROR")
    print(f"ray.init (local, {args.ray_cpus} CPUs): {time.perf_counter() - t0:.2f} s")
    rows: dict[tuple[str, str], list[float]] = {}
    try:
        for _ in range(args.repeats):
            for executor in ("inprocess", "ray"):
                cache = args.work / f"cache-{executor}"
                shutil.rmtree(cache, ignore_errors=True)
                cold, numbers = timed(study(paths, args.n, cache, executor, args.threads))
                warm, again = timed(study(paths, args.n, cache, executor, args.threads))
                assert numbers == again
                rows.setdefault((executor, "cold"), []).append(cold)
                rows.setdefault((executor, "warm"), []).append(warm)
                if executor == "inprocess":
                    reference = numbers
                else:
                    assert numbers == reference, "ray and in-process results differ"
    finally:
        ray.shutdown()
    print(f"study: {args.models} models x 4 datasets + {args.models} scores cells = {cells} cells, "
          f"n={args.n}, threads {args.threads}; median of {args.repeats}")  # fmt: skip
    print(f"{'executor':<10} {'cache':<5} {'wall s':>8} {'per cell ms':>12} {'vs in-process':>14}")
    for (executor, cache), times in rows.items():
        median = statistics.median(times)
        base = statistics.median(rows[("inprocess", cache)])
        print(f"{executor:<10} {cache:<5} {median:8.2f} {1000 * median / cells:12.1f} {median / base:13.2f}x")


if __name__ == "__main__":
    main()
