"""Every precision side by side on a trained ViT: fidelity to fp32, accuracy and OOD detection deltas.

fp32 vs each registered scheme, the w4a4 recipe ablation (each element of the default flipped) and
plain ONNX Runtime ``quantize_static`` W4A4 (MatMul/Gemm inputs only, per-channel int4 weights,
uint4 activations, minmax and percentile) on the same calibration images, as the reference.

    vitqbench train --data fashion-mnist:train:0-5:n=18000 --epochs 10 --set img_size=28 \\
        --set patch_size=7 --set embed_dim=96 --set depth=4 --set num_heads=4 -o vit.safetensors
    python benchmarks/quant_schemes.py --checkpoint vit.safetensors --work /tmp/qs

Prints markdown tables (the README's) and writes WORK/quant_schemes.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quant_pre_process, quantize_static

from vitqbench.data import iter_batches, load_dataset
from vitqbench.export import export_model
from vitqbench.metadata import read_head, read_metadata
from vitqbench.ood import ScoreInputs, create_score
from vitqbench.ood.metrics import ood_metrics
from vitqbench.quant import CalibConfig, create_scheme, quantize_model
from vitqbench.quant.calibration import BatchReader, calibration_set
from vitqbench.runtime import create_session

SCHEMES = ("fp16", "w8a8", "w8a8-dynamic", "w4", "w4a8", "w6a6", "w4a4")
SCORES = ("msp", "energy", "mahalanobis", "knn", "vim")


def ablation() -> dict[str, dict]:
    """The w4a4 default and one variant per recipe element, each flipping that element only."""
    d = create_scheme("w4a4")
    return {
        "w4a4 (default)": {},
        "reparam off": {"reparam": not d.reparam},
        "alpha 1.0 (RepQ-ViT: ranges equalized)": {"alpha": 1.0},
        "softmax at 4 bits (uniform)": {"softmax": "act"},
        "softmax log2 (4 bits)": {"softmax": "log2"},
        "post-GELU symmetric": {"gelu_asym": not d.gelu_asym},
        "ranges minmax": {"act_range": "minmax"},
        "ranges mse": {"act_range": "mse"},
        "weights rtn": {"weight_algo": "rtn"},
        "patch embed + head at 4 bits": {"first_last_8bit": not d.first_last_8bit},
    }


def ort_w4a4(fp32: Path, out: Path, calib, method: str) -> None:
    """Plain ORT static W4A4: QDQ, MatMul/Gemm inputs only, per-channel int4 weights, uint4 activations."""
    meta = read_metadata(fp32)
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32), str(pre))
        quantize_static(
            str(pre),
            str(out),
            BatchReader(calib.readable().rebatched(4) if method != "minmax" else calib, meta.input_name),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            weight_type=QuantType.QInt4,
            activation_type=QuantType.QUInt4,
            op_types_to_quantize=["MatMul", "Gemm"],
            calibrate_method={"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}[method],
            extra_options={"CalibStridedMinMax": 1, "CalibPercentile": 99.99},
        )


def outputs(path: Path, batches: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    session = create_session(path, threads=2)
    result = {}
    for name, images in batches.items():
        logits, features = [], []
        for start in range(0, len(images), 250):
            out = session.run(["logits", "features"], {"pixel_values": images[start : start + 250]})
            logits.append(out[0])
            features.append(out[1])
        result[name] = (np.concatenate(logits), np.concatenate(features))
    return result


def evaluate(outs, ref, labels, fit_labels, head, ood_names) -> dict:
    logits = outs["id"][0]
    row = {
        "top1": float(np.mean(logits.argmax(1) == labels)),
        "agreement": float(np.mean(logits.argmax(1) == ref["id"][0].argmax(1))),
        "rel_logit_error": float(np.linalg.norm(logits - ref["id"][0]) / np.linalg.norm(ref["id"][0])),
        "ood": {},
    }
    for name in SCORES:
        score = create_score(name)
        fit_logits, fit_features = outs["fit"]
        score.fit(ScoreInputs(logits=fit_logits, features=fit_features, labels=fit_labels, head=head))
        id_scores = score.score(ScoreInputs(logits=logits, features=outs["id"][1], head=head))
        per_set = {}
        for ood in ood_names:
            m = ood_metrics(id_scores, score.score(ScoreInputs(logits=outs[ood][0], features=outs[ood][1], head=head)))
            per_set[ood] = {"auroc": m.auroc, "aupr_out": m.aupr_out, "fpr95": m.fpr95_id_positive}
        row["ood"][name] = {
            "mean": {k: float(np.mean([v[k] for v in per_set.values()])) for k in ("auroc", "aupr_out", "fpr95")},
            "per_set": per_set,
        }
    return row


def load(spec: str, data_config) -> tuple[np.ndarray, np.ndarray | None]:
    dataset = load_dataset(spec)
    images = np.concatenate([b.images for b in iter_batches(dataset, data_config, batch_size=256, progress=False)])
    return images, dataset.labels


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", type=Path, help="a `vitqbench train` checkpoint")
    parser.add_argument("--work", type=Path, default=Path("/tmp/quant_schemes"))
    parser.add_argument("--calib", default="fashion-mnist:train:0-5")
    parser.add_argument("--calib-size", type=int, default=256)
    parser.add_argument("--id", default="fashion-mnist:test:0-5:n=2000")
    parser.add_argument("--fit", default="fashion-mnist:train:0-5:n=2000")
    parser.add_argument(
        "--ood", nargs="*", default=["fashion-6-9=fashion-mnist:test:6-9:n=2000", "digits=digits", "photos=photos"]
    )
    parser.add_argument(
        "--only", nargs="*", choices=["schemes", "ablation", "ort"], default=["schemes", "ablation", "ort"]
    )
    parser.add_argument("--fresh", action="store_true", help="recompute every row (default: keep WORK's JSON rows)")
    parser.add_argument("--tables", type=Path, help="only print the tables of an earlier (or partial) run's JSON")
    args = parser.parse_args()
    if args.tables:
        print_tables(json.loads(args.tables.read_text()))
        return
    args.work.mkdir(parents=True, exist_ok=True)
    fp32 = args.work / "fp32.onnx"
    if not fp32.exists():
        export_model(str(args.checkpoint), fp32)
    meta = read_metadata(fp32)
    oods = dict(o.split("=", 1) for o in args.ood)
    batches, labels = {}, {}
    for name, spec in {"id": args.id, "fit": args.fit, **oods}.items():
        batches[name], labels[name] = load(spec, meta.data_config)
    print(f"images: {', '.join(f'{k} {len(v)}' for k, v in batches.items())}", flush=True)
    calib_config = CalibConfig(args.calib, args.calib_size, seed=0)
    ref = outputs(fp32, batches)
    head = read_head(fp32)
    rows = {"fp32": evaluate(ref, ref, labels["id"], labels["fit"], head, oods)}
    saved = args.work / "quant_schemes.json"
    done = {} if args.fresh or not saved.exists() else json.loads(saved.read_text())
    rows.update({k: v for k, v in done.items() if k != "fp32"})  # resume: rows of an earlier run are kept

    def measure(label: str, path: Path, seconds: float, execution: str, model_head=None) -> None:
        outs = outputs(path, batches)
        model_head = read_head(path) if model_head is None else model_head
        rows[label] = {
            **evaluate(outs, ref, labels["id"], labels["fit"], model_head, oods),
            "execution": execution,
            "quantize_s": seconds,
        }
        (args.work / "quant_schemes.json").write_text(json.dumps(rows, indent=1))  # a partial run keeps its rows
        r = rows[label]
        print(
            f"{label:42s} top-1 {r['top1']:.4f} agreement {r['agreement']:.4f} "
            f"logit err {r['rel_logit_error']:.4f} ({execution})",
            flush=True,
        )

    jobs = []
    if "schemes" in args.only:
        jobs += [(s, create_scheme(s)) for s in SCHEMES]

    def run(label: str, config) -> None:
        path = args.work / (label.replace(" ", "_").replace(":", "").replace("/", "-") + ".onnx")
        start = time.perf_counter()
        quantized = quantize_model(fp32, path, config, calib_config, progress=False)
        measure(label, path, time.perf_counter() - start, quantized.quantization["execution"])

    for label, config in jobs:
        if label not in rows:
            run(label, config)
    if "ort" in args.only:
        calib = calibration_set(calib_config, meta.data_config)
        for method in ("minmax", "percentile"):
            if f"ORT quantize_static W4A4 {method}" in rows:
                continue
            path = args.work / f"ort_w4a4_{method}.onnx"
            start = time.perf_counter()
            ort_w4a4(fp32, path, calib, method)
            # Plain ORT files carry our metadata but not the head readback: their ViM/ReAct use the fp32 head.
            label = f"ORT quantize_static W4A4 {method}"
            measure(label, path, time.perf_counter() - start, "emulated (plain ORT)", model_head=head)
    if "ablation" in args.only:
        default = create_scheme("w4a4")
        ablation_jobs = [(f"ablation: {k}", dataclasses.replace(default, **v)) for k, v in ablation().items() if v]
        for label, config in ablation_jobs:
            if label not in rows:
                run(label, config)
    (args.work / "quant_schemes.json").write_text(json.dumps(rows, indent=1))
    print_tables(rows)


def print_tables(rows: dict) -> None:
    base = rows["fp32"]
    print("\n| model | execution | top-1 % | Δ top-1 | agreement % | rel. logit error |")
    print("|---|---|---|---|---|---|")
    for label, r in rows.items():
        print(
            f"| {label} | {r.get('execution', 'float')} | {100 * r['top1']:.2f} "
            f"| {100 * (r['top1'] - base['top1']):+.2f} | {100 * r['agreement']:.2f} | {r['rel_logit_error']:.4f} |"
        )
    print("\nOOD: mean over the OOD sets; fp32 absolute, others Δ vs fp32 (percentage points)\n")
    print("| model | " + " | ".join(f"{s} AUROC / AUPR-out / FPR@95" for s in SCORES) + " |")
    print("|---|" + "---|" * len(SCORES))
    for label, r in rows.items():
        cells = []
        for s in SCORES:
            m, b = r["ood"][s]["mean"], base["ood"][s]["mean"]
            if label == "fp32":
                cells.append(f"{100 * m['auroc']:.1f} / {100 * m['aupr_out']:.1f} / {100 * m['fpr95']:.1f}")
            else:
                cells.append(" / ".join(f"{100 * (m[k] - b[k]):+.1f}" for k in ("auroc", "aupr_out", "fpr95")))
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
