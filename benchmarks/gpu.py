"""fp32, fp16, int8 and int4 on a GPU: CUDA (and TensorRT where the wheel has it), batch 1/8/64, peak GPU memory.

    python benchmarks/gpu.py [--model deit_small_patch16_224] [--batches 1,8,64] [--work /tmp/gpu] [--json g.json]

One prepared run for a machine with an NVIDIA GPU and ``onnxruntime-gpu``: exports the random-init
model (same graph and cost as the pretrained one; no download), makes fp16, w8a8 (static QDQ,
calibrated on noise: content does not change speed) and w4 (MatMulNBits, which has CUDA kernels),
then times each file with ``vitqbench bench`` (one process per model, interleaved rounds, inputs and
outputs bound on the device, peak GPU memory from NVML / nvidia-smi) on each GPU provider present.
Without a GPU provider it prints one line and exits 2: nothing is measured on the CPU by mistake.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

GPU_PROVIDERS = ("cuda", "tensorrt")  # vitqbench's names of ORT's CUDA and TensorRT providers
SCHEMES = ("fp16", "w8a8", "w4")


def gpu_targets() -> list[str]:
    """The GPU providers this onnxruntime build has, in vitqbench's names."""
    import onnxruntime as ort

    from vitqbench.runtime import PROVIDERS

    available = set(ort.get_available_providers())
    return [name for name in GPU_PROVIDERS if PROVIDERS[name] in available]


def build(model: str, work: Path) -> list[Path]:
    from vitqbench.export import export_model
    from vitqbench.quant import CalibConfig, quantize_model

    work.mkdir(parents=True, exist_ok=True)
    fp32 = work / f"{model}.fp32.onnx"
    if not fp32.exists():
        export_model(model, fp32, pretrained=False)
    paths = [fp32]
    for scheme in SCHEMES:
        out = work / f"{model}.{scheme}.onnx"
        if not out.exists():
            quantize_model(fp32, out, scheme, calib=CalibConfig("noise:uniform:n=32", size=32), progress=False)
        paths.append(out)
    return paths


def main() -> int:
    from vitqbench.errors import SWAP_TO_GPU

    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="deit_small_patch16_224")
    parser.add_argument("--batches", default="1,8,64")
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--work", type=Path, default=Path("/tmp/vitqbench-gpu"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    targets = gpu_targets()
    if not targets:
        print(f"error: no GPU provider in this onnxruntime (CUDA or TensorRT): {SWAP_TO_GPU}", file=sys.stderr)
        return 2

    from vitqbench.bench import markdown_table, run_benchmark
    from vitqbench.bench.results import caption
    from vitqbench.bench.runner import parse_batches
    from vitqbench.runtime import execution_target

    paths = build(args.model, args.work)
    for name in targets:
        result = run_benchmark(
            paths, target=execution_target(name), batches=parse_batches(args.batches), iters=args.iters, rounds=5
        )
        print(f"\n## {name}: {result.machine.get('gpu')}\n")
        print(markdown_table(result.records))
        print(caption(result))
        if args.json:
            result.write_json(args.json.with_name(f"{args.json.stem}.{name}{args.json.suffix}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
