"""Measure our 4-bit pass against fp32 and ONNX Runtime's own MatMulNBitsQuantizer (round to nearest).

Two studies, side by side in one run each (CPU, shared machines: compare ratios, not absolute times):

* ``speed``: random-init deit_small_patch16_224: file size, quantization time, batch-1 latency at
  2 threads for fp32, ours at accuracy levels 0 and 4 (block sizes 32/64/128), the qdq file (fused by
  ORT) and ORT's quantizer. One session alive at a time, models interleaved over rounds.
* ``fidelity``: a small ViT trained on Fashion-MNIST (``train`` makes one with vitqbench.train):
  top-1 agreement, relative L2 error of logits and features and accuracy on the held-out test split,
  for rtn/mse/gptq x block sizes x sym/asym, and ORT's quantizer at the same block sizes.

    python benchmarks/quant_int4.py train          # once: /tmp/vitqbench_bench/fmnist_vit.onnx
    python benchmarks/quant_int4.py fidelity
    python benchmarks/quant_int4.py speed
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
    args = parser.parse_args()
    {"fidelity": fidelity, "train": train, "speed": speed}[args.study](args)


if __name__ == "__main__":
    main()
