"""The int8 GEMM ceiling on this CPU: one deit_small linear layer at a time, fp32 vs ORT's int8 kernels.

A whole int8 ViT cannot run faster, relative to fp32, than its matrix products do: this script
measures that bound. For each linear-layer shape of deit_small_patch16_224 (197 tokens x batch,
qkv 384->1152, proj 384->384, fc1 384->1536, fc2 1536->384) it builds a one-MatMul ONNX model,
quantizes it as ``w8a8`` (ORT static QDQ, u8 activations, s8 per-channel 7-bit weights, as our
scheme) and as ``w8a8-dynamic`` (ORT dynamic, MatMulInteger), and times the three interleaved in
one process (one session alive at a time, spinning off), ``--rounds`` alternations. Prints each
shape's ratio and the ratio of one transformer block's four linear layers (times summed): the ceiling for the GEMM
share of an int8 deit_small. The CPU's SIMD flags are printed: u8s8 GEMMs without AVX-512 VNNI
(or AVX-VNNI) take three instructions per multiply-accumulate step where VNNI takes one.

    python benchmarks/int8_gemm_ceiling.py --threads 2 --batch 1 8
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)

from vitqbench.runtime import cpu_features, cpu_model

SHAPES = {"qkv": (384, 1152), "proj": (384, 384), "fc1": (384, 1536), "fc2": (1536, 384)}
TOKENS = 197


def matmul_model(k: int, n: int, path: Path) -> None:
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array((rng.normal(0, 0.02, (k, n))).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", n])],
        [weight],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


class Reader(CalibrationDataReader):
    def __init__(self, k: int) -> None:
        rng = np.random.default_rng(1)
        self.batches = iter([{"x": rng.normal(0, 1, (TOKENS, k)).astype(np.float32)} for _ in range(4)])

    def get_next(self):
        return next(self.batches, None)


def session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def time_once(path: Path, x: np.ndarray, threads: int, runs: int) -> float:
    sess = session(path, threads)
    for _ in range(5):
        sess.run(None, {"x": x})
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        sess.run(None, {"x": x})
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    simd = cpu_features()["simd"] or ["unknown"]
    print(f"CPU: {cpu_model()}; SIMD: {', '.join(simd)}; ORT {ort.__version__}")
    print(f"{args.threads} threads, spinning off, one session at a time, {args.rounds} interleaved rounds\n")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        files = {}
        for name, (k, n) in SHAPES.items():
            fp32 = folder / f"{name}.onnx"
            matmul_model(k, n, fp32)
            static, dynamic = folder / f"{name}.static.onnx", folder / f"{name}.dynamic.onnx"
            quantize_static(
                str(fp32),
                str(static),
                Reader(k),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=True,
                reduce_range=True,
            )
            quantize_dynamic(str(fp32), str(dynamic), weight_type=QuantType.QInt8, per_channel=True)
            files[name] = {"fp32": fp32, "w8a8": static, "w8a8-dynamic": dynamic}
        print("| batch | layer | fp32 ms | w8a8 / fp32 | w8a8-dynamic / fp32 |")
        print("|---:|---|---:|---:|---:|")
        for batch in args.batch:
            block = {"fp32": 0.0, "w8a8": 0.0, "w8a8-dynamic": 0.0}
            for name, (k, _) in SHAPES.items():
                x = np.random.default_rng(2).normal(0, 1, (TOKENS * batch, k)).astype(np.float32)
                samples: dict[str, list[float]] = {v: [] for v in files[name]}
                for _ in range(args.rounds):
                    for variant, path in files[name].items():
                        samples[variant].append(time_once(path, x, args.threads, args.runs))
                med = {v: statistics.median(t) for v, t in samples.items()}
                for v in block:
                    block[v] += med[v]
                print(
                    f"| {batch} | {name} | {1000 * med['fp32']:.3f} | {med['w8a8'] / med['fp32']:.2f}x "
                    f"| {med['w8a8-dynamic'] / med['fp32']:.2f}x |"
                )
            print(
                f"| {batch} | **one block's linear layers** | {1000 * block['fp32']:.3f} "
                f"| **{block['w8a8'] / block['fp32']:.2f}x** | **{block['w8a8-dynamic'] / block['fp32']:.2f}x** |"
            )


if __name__ == "__main__":
    main()
