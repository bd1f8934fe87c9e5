"""End-to-end `eval` throughput versus model-only throughput, same session settings and batch size.

    python benchmarks/eval_throughput.py [--n 2000] [--batch-size 32] [--precisions fp32,int8,int4]

Model: random-init deit_small_patch16_224 (224x224), exported and quantized once into --work.
Images: N synthetic 224x224 images (half noise:gaussian as ID, half noise:uniform as OOD), decoded
once beforehand so both measurements read the decode cache. Model-only: ``session.run`` on one
pre-built batch, N/B times. End-to-end: ``run_eval`` (cache reads, preprocessing, batching, three
scores, metrics) plus ``write_report`` (json, csv, markdown, plots) with the outputs cache emptied
first. Model-only is measured before and after each end-to-end run and averaged, because the
machine is shared; quote the ratio, not the absolute numbers. The last column is load-drift free:
the time spent inside ``session.run`` during the end-to-end run itself, against that run's total.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np


def prepare_models(work: Path, precisions: list[str], cache: Path) -> dict[str, Path]:
    from vitqbench.export import export_model
    from vitqbench.quant import CalibConfig, quantize_model

    work.mkdir(parents=True, exist_ok=True)
    fp32 = work / "deit_small.fp32.onnx"
    if not fp32.exists():
        export_model("deit_small_patch16_224", fp32, pretrained=False, verify=False)
    paths = {"fp32": fp32}
    for name, bits in (("int8", 8), ("int4", 4)):
        if name not in precisions:
            continue
        path = work / f"deit_small.{name}.onnx"
        if not path.exists():
            calib = CalibConfig("noise:gaussian:n=64", size=32, cache_dir=cache) if bits == 8 else None
            quantize_model(fp32, path, {8: "w8a8", 4: "w4"}[bits], calib=calib, progress=False)
        paths[name] = path
    return {p: paths[p] for p in precisions}


def model_only_seconds(path: Path, images: np.ndarray, n: int, batch: int, threads: int | None) -> float:
    from vitqbench.metadata import read_metadata
    from vitqbench.runtime import create_session

    meta = read_metadata(path)
    session = create_session(path, "cpu", threads)
    fetch = [meta.outputs["logits"], meta.outputs["features"]]
    x = np.ascontiguousarray(images[:batch])
    session.run(fetch, {meta.input_name: x})  # warm-up, as eval's first batch also pays it
    start = time.perf_counter()
    done = 0
    while done < n:
        b = min(batch, n - done)
        session.run(fetch, {meta.input_name: x[:b]})
        done += b
    return time.perf_counter() - start


class _time_session_runs:
    """Sum the wall time of every ``session.run`` of the sessions eval creates, until ``stop``."""

    def __init__(self):
        import vitqbench.runtime

        self.total = 0.0
        self._module = vitqbench.runtime
        self._real = vitqbench.runtime.create_session
        timer = self

        class Timed:
            def __init__(self, session):
                self._session = session

            def run(self, *a, **k):
                t = time.perf_counter()
                try:
                    return self._session.run(*a, **k)
                finally:
                    timer.total += time.perf_counter() - t

        vitqbench.runtime.create_session = lambda *a, **k: Timed(self._real(*a, **k))

    def stop(self) -> float:
        self._module.create_session = self._real
        return self.total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="images in total (half ID, half OOD)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--precisions", default="fp32,int8,int4")
    parser.add_argument("--work", type=Path, default=Path("/tmp/vitqbench-eval-bench"))
    args = parser.parse_args()

    from vitqbench.data import iter_batches, load_dataset
    from vitqbench.evaluate import EvalConfig, run_eval
    from vitqbench.metadata import read_metadata
    from vitqbench.report import write_report

    cache = args.work / "cache"
    models = prepare_models(args.work, args.precisions.split(","), cache)
    half = args.n // 2
    id_spec, ood_spec = f"noise:gaussian:n={half}", f"noise:uniform:n={args.n - half}"
    meta = read_metadata(next(iter(models.values())))
    first = None
    for spec in (id_spec, ood_spec):  # fill the decode cache, untimed
        for batch in iter_batches(load_dataset(spec), meta.data_config, batch_size=64, cache_dir=cache):
            first = batch.images if first is None else first
    images = np.concatenate([first] * (-(-args.batch_size // len(first))))

    # Import what the first eval would import (scipy, sklearn, matplotlib): a one-off start-up cost
    # of the process, not a per-image cost of the pipeline.
    import matplotlib.pyplot  # noqa: F401
    import sklearn.metrics  # noqa: F401

    import vitqbench.ood  # noqa: F401

    print(f"{args.n} images 224x224, batch {args.batch_size}, threads {args.threads or 'auto'}")
    print(f"{'model':6} {'model-only img/s':>17} {'end-to-end img/s':>17} {'overhead':>9} {'non-model':>10}")
    for name, path in models.items():
        before = model_only_seconds(path, images, args.n, args.batch_size, args.threads)
        shutil.rmtree(cache / "outputs", ignore_errors=True)
        config = EvalConfig(
            models=[path],
            id=id_spec,
            ood={"uniform": ood_spec},
            scores="msp,energy,maxlogit",
            batch_size=args.batch_size,
            threads=args.threads,
            cache_dir=cache,
            progress=False,
        )
        inside = _time_session_runs()
        start = time.perf_counter()
        results = run_eval(config)
        write_report(results, args.work / f"report-{name}")
        e2e = time.perf_counter() - start
        in_model = inside.stop()
        assert results.cache["samples_computed"] == args.n and not results.failures
        after = model_only_seconds(path, images, args.n, args.batch_size, args.threads)
        model = (before + after) / 2
        print(
            f"{name:6} {args.n / model:17.1f} {args.n / e2e:17.1f} {e2e / model - 1:+9.1%}"
            f" {e2e / in_model - 1:+10.1%}   (model-only {before:.1f}s / {after:.1f}s, end-to-end {e2e:.1f}s,"
            f" of which session.run {in_model:.1f}s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
