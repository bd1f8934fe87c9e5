"""Measure our 4-bit pass against fp32 and ONNX Runtime's own MatMulNBitsQuantizer (round to nearest).

Two studies, side by side in one run each (CPU, shared machines: compare ratios, not absolute times):

* ``speed``: random-init deit_small_patch16_224: file size, quantization time, batch-1 latency at
  2 threads for fp32, ours at accuracy levels 0 and 4 (block sizes 32/64/128), the qdq file (fused by
  ORT) and ORT's quantizer. One session alive at a time, models interleaved over rounds.
* ``kernels``: why the ``speed`` ratios are what they are. Each Linear shape of one transformer block
  (deit_small at batch 1: 197 tokens, width 384, MLP 1536) as a one-layer model, fp32 MatMul+Add
  against our MatMulNBits (the bias folded in) at each block size and accuracy level.
* ``fidelity``: a small ViT trained on Fashion-MNIST (``train`` makes one with vitqbench.train):
  top-1 agreement, relative L2 error of logits and features and accuracy on the held-out test split,
  for rtn/mse/gptq x block sizes x sym/asym, and ORT's quantizer at the same block sizes.

    python benchmarks/quant_int4.py train          # once: /tmp/vitqbench_bench/fmnist_vit.onnx
    python benchmarks/quant_int4.py fidelity
    python benchmarks/quant_int4.py speed
    python benchmarks/quant_int4.py kernels
"""

from __future__ import annotations

import argparse
import itertools
import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

from vitqbench.data import iter_batches, load_dataset
from vitqbench.metadata import get_metadata, load_onnx
from vitqbench.quant.int4 import Int4Config, quantize_int4
from vitqbench.runtime import create_session

WIDTHS = (4, 4, 3, 7, 8, 8, 7, 6)
WORK = Path(tempfile.gettempdir()) / "vitqbench_bench"


def ort_reference(model: onnx.ModelProto, block_size: int, symmetric: bool, level: int = 0) -> onnx.ModelProto:
    """ONNX Runtime's own 4-bit weight-only quantizer (round to nearest; it leaves Gemm heads float)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)  # it rewrites its input in place
    config = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=symmetric, accuracy_level=level or None)
    quantizer = MatMulNBitsQuantizer(copy, algo_config=config)
    quantizer.process()
    return quantizer.model.model


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def run_outputs(path: Path, batches: list[np.ndarray], threads: int = 2) -> dict[str, np.ndarray]:
    session = create_session(path, threads=threads)
    name = session.get_inputs()[0].name
    outs = [session.run(["logits", "features"], {name: b}) for b in batches]
    return {"logits": np.concatenate([o[0] for o in outs]), "features": np.concatenate([o[1] for o in outs])}


def rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# ---------------------------------------------------------------------------------------------- fidelity
def fidelity(args: argparse.Namespace) -> None:
    model = load_onnx(args.model)
    meta = get_metadata(model)
    test = load_dataset(args.test)
    batches, labels = [], []
    for batch in iter_batches(test, meta.data_config, batch_size=256, progress=False):
        batches.append(batch.images)
        labels.append(batch.labels)
    labels = np.concatenate(labels)
    calib_set = load_dataset(args.calib)
    calib = [b.images for b in iter_batches(calib_set, meta.data_config, batch_size=64, progress=False)]
    out_dir = WORK / "fidelity"
    out_dir.mkdir(parents=True, exist_ok=True)
    ref = run_outputs(Path(args.model), batches)
    print(f"model {args.model}: {len(labels)} test images ({args.test}), gptq calibration {len(calib_set)}")
    print(f"fp32 accuracy {np.mean(ref['logits'].argmax(1) == labels):.4f}")
    columns = ("bs", "sym", "lvl", "agree", "logits", "feats", "acc", "sec")
    print(f"{'method':34s} " + " ".join(f"{c:>{w}s}" for c, w in zip(columns, WIDTHS, strict=True)))

    def report(label: str, bs: int, sym: bool, level: int, path: Path, seconds: float) -> None:
        out = run_outputs(path, batches)
        agree = np.mean(out["logits"].argmax(1) == ref["logits"].argmax(1))
        acc = np.mean(out["logits"].argmax(1) == labels)
        print(
            f"{label:34s} {bs:4d} {'y' if sym else 'n':>4s} {level:3d} {agree:7.4f} "
            f"{rel_l2(out['logits'], ref['logits']):8.4f} {rel_l2(out['features'], ref['features']):8.4f} "
            f"{acc:7.4f} {seconds:6.1f}",
            flush=True,
        )

    variants = [(algo, {}) for algo in args.algos if algo != "gptq"]
    if "gptq" in args.algos:
        variants += [
            ("gptq", {"act_order": act_order, "gptq_clip_search": clip})
            for act_order, clip in itertools.product((False, True), repeat=2)
        ]
    for bs, sym in itertools.product(args.block_sizes, (True, False)):
        start = time.perf_counter()
        theirs = ort_reference(model, bs, sym)
        report(
            "ort MatMulNBitsQuantizer (head fp32)",
            bs,
            sym,
            0,
            save(theirs, out_dir / "ort.onnx"),
            time.perf_counter() - start,
        )
        for algo, extra in variants:
            for keep_head in (False, True) if algo == "mse" else (False,):
                config = Int4Config(
                    block_size=bs,
                    symmetric=sym,
                    algo=algo,
                    accuracy_level=0,
                    keep_head=keep_head,
                    progress=False,
                    **extra,
                )
                start = time.perf_counter()
                ours, _ = quantize_int4(model, config, calib if algo == "gptq" else None)
                seconds = time.perf_counter() - start
                label = algo + "".join(f" {k}={v}" for k, v in extra.items()) + (" (head fp32)" if keep_head else "")
                report(label, bs, sym, 0, save(ours, out_dir / "ours.onnx"), seconds)
    default = Int4Config(progress=False)
    start = time.perf_counter()
    ours, _ = quantize_int4(model, default, calib if default.algo == "gptq" else None)
    report(
        f"default {default.algo} (matmulnbits)",
        default.block_size,
        default.symmetric,
        default.accuracy_level,
        save(ours, out_dir / "default.onnx"),
        time.perf_counter() - start,
    )


def train(args: argparse.Namespace) -> None:
    """A small ViT on Fashion-MNIST with `vitqbench train`'s library call, exported for ``fidelity``."""
    from vitqbench.export import export_model
    from vitqbench.train import TrainConfig, train_model

    WORK.mkdir(parents=True, exist_ok=True)
    checkpoint = WORK / "fmnist_vit.safetensors"
    # 7x7 patches (16 tokens) keep CPU training to minutes; K = 128 and 512 as in the default model.
    config = TrainConfig(data=args.data, model_kwargs={"patch_size": 7}, epochs=args.epochs, threads=2)
    result = train_model(config, checkpoint, progress=False)
    print(f"trained {result.num_train} images, held-out accuracy {result.val_accuracy:.4f}, {result.seconds:.0f} s")
    export_model(str(checkpoint), args.out, pretrained=False)
    print(f"wrote {args.out}")


# ------------------------------------------------------------------------------------------------- speed
def deit_small() -> Path:
    from vitqbench.export import export_model

    path = WORK / "deit_small_random.onnx"
    if not path.exists():
        WORK.mkdir(parents=True, exist_ok=True)
        export_model("deit_small_patch16_224", path, pretrained=False, verify=False)
    return path


def latency_ms(path: Path, x: np.ndarray, threads: int, warmup: int, iters: int) -> tuple[list[float], list[float]]:
    """Wall-clock and process CPU milliseconds per run. Spinning is off so that CPU time counts work,
    not busy-waiting: on a shared, loaded machine CPU time is the steadier measure of cost."""
    session = create_session(path, threads=threads, allow_spinning=False)
    name = session.get_inputs()[0].name
    for _ in range(warmup):
        session.run(None, {name: x})
    wall, cpu = [], []
    for _ in range(iters):
        start, start_cpu = time.perf_counter(), time.process_time()
        session.run(None, {name: x})
        wall.append((time.perf_counter() - start) * 1000)
        cpu.append((time.process_time() - start_cpu) * 1000)
    return wall, cpu


def speed(args: argparse.Namespace) -> None:
    fp32_path = deit_small()
    model = load_onnx(fp32_path)
    out_dir = WORK / "speed"
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    calib = [rng.standard_normal((16, 3, 224, 224)).astype(np.float32) for _ in range(args.gptq_images // 16)]
    models: dict[str, Path] = {"fp32": fp32_path}
    fp32_size = fp32_path.stat().st_size
    print(f"{'model':36s} {'MB':>7s} {'x fp32':>7s} {'quantize s':>10s}")
    print(f"{'fp32':36s} {fp32_size / 1e6:7.1f} {1.0:7.3f} {'':>10s}")

    def add(label: str, make) -> None:
        start = time.perf_counter()
        quantized = make()
        seconds = time.perf_counter() - start
        path = save(quantized, out_dir / (label.replace(" ", "_").replace("=", "") + ".onnx"))
        size = path.stat().st_size
        print(f"{label:36s} {size / 1e6:7.1f} {size / fp32_size:7.3f} {seconds:10.1f}", flush=True)
        models[label] = path

    def ours(**kw):
        return lambda: quantize_int4(model, Int4Config(progress=False, **kw), calib)[0]

    # The kernels depend on format, block size and level, not on how the codes were chosen:
    # latency uses rtn files; mse and gptq are timed for quantization (and size) only.
    add("ours rtn bs32 L0", ours(algo="rtn", block_size=32, accuracy_level=0))
    for bs in (32, 64, 128):
        add(f"ours rtn bs{bs} L4", ours(algo="rtn", block_size=bs, accuracy_level=4))
    add("ours rtn bs32 qdq (ORT fuses, L4)", ours(algo="rtn", block_size=32, format="qdq"))
    add("ort rtn bs32 L4 (head fp32)", lambda: ort_reference(model, 32, True, level=4))
    timed = list(models)
    add("ours mse bs32", ours(algo="mse", block_size=32))
    if args.gptq_images:
        default = Int4Config()
        add(f"ours default (gptq act-order) bs{default.block_size} {args.gptq_images} img", ours())

    x = rng.standard_normal((1, 3, 224, 224)).astype(np.float32)
    wall: dict[str, list[float]] = {label: [] for label in timed}
    cpu: dict[str, list[float]] = {label: [] for label in timed}
    for _ in range(args.rounds):
        for label in timed:
            w, c = latency_ms(models[label], x, args.threads, args.warmup, args.iters)
            wall[label] += w
            cpu[label] += c
    base, base_cpu = statistics.median(wall["fp32"]), statistics.median(cpu["fp32"])
    print(f"\nbatch 1, {args.threads} threads, spinning off, {args.rounds} rounds x {args.iters} runs each,")
    print("models interleaved, one session alive at a time")
    print(f"{'model':36s} {'wall ms':>8s} {'x fp32':>7s} {'cpu ms':>8s} {'x fp32':>7s}")
    for label in timed:
        median, median_cpu = statistics.median(wall[label]), statistics.median(cpu[label])
        print(f"{label:36s} {median:8.1f} {median / base:7.3f} {median_cpu:8.1f} {median_cpu / base_cpu:7.3f}")


# ------------------------------------------------------------------------------------------------- kernels
def linear_model(k: int, n: int, tokens: int, seed: int) -> onnx.ModelProto:
    """One Linear layer as an ONNX model: y = x @ W + b, x [1, tokens, k]."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weight = numpy_helper.from_array((rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32), "W")
    bias = numpy_helper.from_array(rng.standard_normal(n).astype(np.float32) * 0.01, "b")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])],
        f"linear_{k}x{n}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, tokens, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, tokens, n])],
        [weight, bias],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def kernels(args: argparse.Namespace) -> None:
    shapes = {
        "qkv": (args.dim, 3 * args.dim),
        "proj": (args.dim, args.dim),
        "fc1": (args.dim, args.mlp_ratio * args.dim),
        "fc2": (args.mlp_ratio * args.dim, args.dim),
    }
    variants = [(bs, level) for level in (0, 4) for bs in args.block_sizes]
    out_dir = WORK / "kernels"
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    totals = {"fp32": 0.0} | {v: 0.0 for v in variants}
    print(f"median ms per run, {args.tokens} tokens, {args.threads} threads, spinning off; x fp32 in brackets")
    print(f"{'layer':6s} {'K x N':>10s} {'fp32':>7s} " + " ".join(f"{f'bs{bs} L{lv}':>16s}" for bs, lv in variants))
    for index, (layer, (k, n)) in enumerate(shapes.items()):
        fp32 = linear_model(k, n, args.tokens, seed=index)
        paths = {"fp32": save(fp32, out_dir / f"{layer}_fp32.onnx")}
        for bs, level in variants:
            config = Int4Config(algo="rtn", block_size=bs, accuracy_level=level, progress=False)
            paths[(bs, level)] = save(quantize_int4(fp32, config)[0], out_dir / f"{layer}_bs{bs}_L{level}.onnx")
        x = rng.standard_normal((1, args.tokens, k)).astype(np.float32)
        times: dict = {key: [] for key in paths}
        for _ in range(args.rounds):
            for key, path in paths.items():
                times[key] += latency_ms(path, x, args.threads, args.warmup, args.iters)[0]
        medians = {key: statistics.median(v) for key, v in times.items()}
        for key, value in medians.items():
            totals[key] += value
        cells = " ".join(f"{medians[v]:8.3f} [{medians[v] / medians['fp32']:.2f}]" for v in variants)
        print(f"{layer:6s} {f'{k}x{n}':>10s} {medians['fp32']:7.3f} {cells}", flush=True)
    cells = " ".join(f"{totals[v]:8.3f} [{totals[v] / totals['fp32']:.2f}]" for v in variants)
    print(f"{'block':6s} {'':>10s} {totals['fp32']:7.3f} {cells}")


def main() -> None:
    logging.getLogger().setLevel(logging.WARNING)  # importing ORT's quantizer sets the root logger to INFO
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="study", required=True)
    fid = sub.add_parser("fidelity")
    fid.add_argument("--model", type=Path, default=WORK / "fmnist_vit.onnx")
    fid.add_argument("--test", default="fashion-mnist:test")
    fid.add_argument("--calib", default="fashion-mnist:train:n=256")
    fid.add_argument("--algos", nargs="+", default=["rtn", "mse", "gptq"])
    fid.add_argument("--block-sizes", type=int, nargs="+", default=[32, 64, 128])
    trn = sub.add_parser("train")
    trn.add_argument("--data", default="fashion-mnist:train:n=12000")
    trn.add_argument("--epochs", type=int, default=6)
    trn.add_argument("--out", type=Path, default=WORK / "fmnist_vit.onnx")
    spd = sub.add_parser("speed")
    spd.add_argument("--threads", type=int, default=2)
    spd.add_argument("--rounds", type=int, default=3)
    spd.add_argument("--iters", type=int, default=30)
    spd.add_argument("--warmup", type=int, default=5)
    spd.add_argument("--gptq-images", type=int, default=64, help="noise images for timing gptq (0: skip)")
    ker = sub.add_parser("kernels")
    ker.add_argument("--tokens", type=int, default=197)
    ker.add_argument("--dim", type=int, default=384)
    ker.add_argument("--mlp-ratio", type=int, default=4)
    ker.add_argument("--block-sizes", type=int, nargs="+", default=[32, 128])
    ker.add_argument("--threads", type=int, default=2)
    ker.add_argument("--rounds", type=int, default=3)
    ker.add_argument("--iters", type=int, default=100)
    ker.add_argument("--warmup", type=int, default=10)
    args = parser.parse_args()
    {"fidelity": fidelity, "train": train, "speed": speed, "kernels": kernels}[args.study](args)


if __name__ == "__main__":
    main()
