"""Which 8-bit settings keep a trained ViT accurate: fidelity of each int8 variant against fp32.

For every setting (calibration method x float exclusions) this quantizes the model with
``quantize_model`` and compares it with the fp32 model on held-out labelled images: top-1 agreement,
relative L2 error of logits and of features, accuracy, file size and quantization time.

    python benchmarks/quant_int8_trained_vit.py --out /tmp/q8/fmnist_vit.onnx   # once
    python benchmarks/quant_int8_fidelity.py --model /tmp/q8/fmnist_vit.onnx \
        --calib fashion-mnist:train --data fashion-mnist:n=2000
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from vitqbench.data import iter_batches, load_dataset
from vitqbench.metadata import read_metadata
from vitqbench.quant import CalibConfig, Int8Config, quantize_model
from vitqbench.runtime import create_session

SETTINGS = {
    "minmax": Int8Config(),
    "minmax per-tensor": Int8Config(per_channel=False),
    "minmax int8-sym-act": Int8Config(activation_type="int8", symmetric_activations=True),
    "entropy": Int8Config(calib_method="entropy"),
    "percentile": Int8Config(calib_method="percentile"),
    "minmax -head": Int8Config(exclude=("head",)),
    "minmax -patch_embed": Int8Config(exclude=("patch_embed",)),
    "minmax -attention": Int8Config(exclude=("attention",)),
    "minmax -Softmax": Int8Config(exclude=("Softmax",)),
    "minmax -post_gelu": Int8Config(exclude=("post_gelu",)),
    "minmax -LayerNorm": Int8Config(exclude=("LayerNormalization",)),
    "minmax -Add": Int8Config(exclude=("Add",)),
    "percentile -Add": Int8Config(calib_method="percentile", exclude=("Add",)),
}


def run(path: Path, data, data_config, threads: int) -> tuple[np.ndarray, np.ndarray]:
    session = create_session(path, threads=threads)
    logits, features = [], []
    for batch in iter_batches(data, data_config, batch_size=100, progress=False):
        out = session.run(["logits", "features"], {"pixel_values": batch.images})
        logits.append(out[0])
        features.append(out[1])
    return np.concatenate(logits), np.concatenate(features)


def rel_l2(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(a - ref) / np.linalg.norm(ref))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, default=Path("/tmp/q8/fmnist_vit.onnx"))
    parser.add_argument("--calib", default="fashion-mnist:train")
    parser.add_argument("--calib-size", type=int, default=256)
    parser.add_argument("--data", default="fashion-mnist:n=2000")
    parser.add_argument("--out-dir", type=Path, default=Path("/tmp/q8/fidelity"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", nargs="*", help="setting names to run (default: all)")
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    meta = read_metadata(args.model)
    data = load_dataset(args.data)
    ref_logits, ref_features = run(args.model, data, meta.data_config, args.threads)
    labels = data.labels
    fp32_size = args.model.stat().st_size
    fp32_acc = np.mean(ref_logits.argmax(1) == labels)
    print(f"fp32: accuracy {fp32_acc:.4f} on {len(labels)} images of {args.data}")
    header = ("setting", "acc", "top1agr", "relL2 log", "relL2 feat", "size", "time s")
    print(f"{header[0]:24s} " + " ".join(f"{h:>10s}" for h in header[1:]))
    rows = []
    for name, config in SETTINGS.items():
        if args.only and name not in args.only:
            continue
        out = args.out_dir / (name.replace(" ", "_") + ".onnx")
        start = time.perf_counter()
        quantize_model(args.model, out, config, calib=CalibConfig(args.calib, args.calib_size), progress=False)
        seconds = time.perf_counter() - start
        logits, features = run(out, data, meta.data_config, args.threads)
        row = {
            "setting": name,
            "accuracy": float(np.mean(logits.argmax(1) == labels)),
            "top1_agreement": float(np.mean(logits.argmax(1) == ref_logits.argmax(1))),
            "rel_l2_logits": rel_l2(logits, ref_logits),
            "rel_l2_features": rel_l2(features, ref_features),
            "size_ratio": out.stat().st_size / fp32_size,
            "seconds": seconds,
        }
        rows.append(row)
        print(
            f"{name:24s} {row['accuracy']:10.4f} {row['top1_agreement']:10.4f} {row['rel_l2_logits']:10.4f} "
            f"{row['rel_l2_features']:10.4f} {row['size_ratio']:10.3f} {seconds:10.1f}",
            flush=True,
        )
    (args.out_dir / "fidelity.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
