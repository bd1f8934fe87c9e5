"""Which int8 formulation is fastest and correct on ORT CPU: latency on deit_small, fidelity on a trained ViT.

    python benchmarks/int8_formulations.py --checkpoint vit.safetensors [--work /tmp/int8f] [--batches 1,8]

Each variant is our ``w8a8`` (or ``w8a8-dynamic``) scheme with one option changed: weights at 8 bits
instead of 7 (``reduce_range``), int8 activations (S8S8), per-tensor weights, every op's inputs
quantized (``quantize_ops all``), the two attention matmuls left float, ORT dynamic quantization,
and ORT's saved optimized graph (``vitqbench optimize``, level all) of the default. Speed: random-init
deit_small_patch16_224 (same graph and cost as the pretrained one), ``vitqbench bench`` (one process
per model, interleaved rounds, spinning off, 2 threads); ratios against fp32 in the same run.
Fidelity: the same variants of a ViT trained on Fashion-MNIST (``vitqbench train``; see
quant_schemes.py), top-1 agreement with fp32 and relative logit error on 2,000 held-out images,
with ORT's optimizations on (what deployment runs). Run it alone on the machine.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

VARIANTS: dict[str, tuple[str, dict]] = {
    "w8a8 (default: matmul inputs, per-channel, u8s8, 7-bit weights)": ("w8a8", {}),
    "w8a8, 8-bit weights (reduce_range off)": ("w8a8", {"reduce_range": False}),
    "w8a8, int8 activations (S8S8)": ("w8a8", {"activation_type": "int8"}),
    "w8a8, per-tensor weights": ("w8a8", {"per_channel": False}),
    "w8a8, every op's inputs (quantize_ops all)": ("w8a8", {"quantize_ops": "all"}),
    "w8a8, attention matmuls float": ("w8a8", {"exclude": ("attention",)}),
    "w8a8-dynamic": ("w8a8-dynamic", {}),
}
OPTIMIZED = "w8a8 default, saved optimized graph (level all)"


def build(fp32: Path, work: Path, calib: str) -> dict[str, Path]:
    """fp32, every variant, and the default's optimized graph, made next to ``fp32`` (reused when present)."""
    from vitqbench.quant import CalibConfig, create_scheme, quantize_model
    from vitqbench.quant.optimize import optimize_model

    paths = {"fp32": fp32}
    for i, (label, (scheme, options)) in enumerate(VARIANTS.items()):
        out = work / f"{fp32.stem}.v{i}.onnx"
        if not out.exists():
            quantize_model(fp32, out, create_scheme(scheme, **options), CalibConfig(calib, size=256), progress=False)
        paths[label] = out
    optimized = work / f"{fp32.stem}.v0.opt.onnx"
    if not optimized.exists():
        optimize_model(paths[next(iter(VARIANTS))], optimized, "all")
    paths[OPTIMIZED] = optimized
    return paths


def fidelity(paths: dict[str, Path], images: np.ndarray) -> dict[str, tuple[float, float]]:
    from vitqbench.metadata import read_metadata
    from vitqbench.runtime import create_session

    def logits(path: Path) -> np.ndarray:
        meta = read_metadata(path)
        session = create_session(path, threads=2)
        out = [session.run([meta.outputs["logits"]], {meta.input_name: images[i : i + 200]})[0] for i in
               range(0, len(images), 200)]  # fmt: skip
        return np.concatenate(out)

    ref = logits(paths["fp32"])
    result = {}
    for label, path in paths.items():
        q = logits(path)
        result[label] = (
            float((q.argmax(1) == ref.argmax(1)).mean()),
            float(np.linalg.norm(q - ref) / np.linalg.norm(ref)),
        )
    return result


def main() -> None:
    from vitqbench.bench import run_benchmark
    from vitqbench.bench.results import caption
    from vitqbench.data import iter_batches, load_dataset
    from vitqbench.export import export_model
    from vitqbench.metadata import read_metadata

    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", type=Path, required=True, help="a `vitqbench train` checkpoint")
    parser.add_argument("--work", type=Path, default=Path("/tmp/int8_formulations"))
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--iters", type=int, default=60)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--build-only", action="store_true", help="make the files (no timing): run it while busy")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    trained = args.work / "trained.onnx"
    if not trained.exists():
        export_model(str(args.checkpoint), trained)
    trained_paths = build(trained, args.work, "fashion-mnist:train:0-5")
    meta = read_metadata(trained)
    data = load_dataset("fashion-mnist:test:0-5:n=2000")
    images = np.concatenate([b.images for b in iter_batches(data, meta.data_config, batch_size=250, progress=False)])
    agree = {} if args.build_only else fidelity(trained_paths, images)

    deit = args.work / "deit_small.onnx"
    if not deit.exists():
        export_model("deit_small_patch16_224", deit, pretrained=False)
    deit_paths = build(deit, args.work, "noise:uniform:n=256")
    if args.build_only:
        return
    labels = list(deit_paths)
    result = run_benchmark(
        list(deit_paths.values()), batches=[int(b) for b in args.batches.split(",")], iters=args.iters,
        threads=args.threads, rounds=10,
    )  # fmt: skip
    fp32_mb = result.records[0].model_mb
    print("\n| formulation | " + " | ".join(f"batch {b} (x fp32)" for b in args.batches.split(",")) +
          " | file (x fp32) | peak RSS MB | top-1 agreement % | rel. logit error |")  # fmt: skip
    print("|---|" + "---|" * (len(args.batches.split(",")) + 4))
    for label in labels:
        rows = [r for r in result.records if r.path == str(deit_paths[label])]
        ratios = " | ".join(f"{r.p50_ms:.1f} ms ({1 / r.speedup:.2f}x)" if r.ok else "failed" for r in rows)
        a, e = agree[label]
        print(f"| {label} | {ratios} | {rows[0].model_mb / fp32_mb:.2f} | {max(r.peak_rss_mb or 0 for r in rows):.0f} "
              f"| {100 * a:.2f} | {e:.4f} |")  # fmt: skip
    print("\n" + caption(result))


if __name__ == "__main__":
    main()
