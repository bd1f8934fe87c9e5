"""Does ONNX Runtime's transformer optimizer (model type vit) speed up our exported ViT on CPU?

Exports random-init deit_small_patch16_224 (same graph and cost as the pretrained one), runs
`onnxruntime.transformers.optimizer.optimize_model(model_type="vit")`, and times both files side by
side in interleaved rounds (spinning off, one process), batch 1, at the given thread count.

    python benchmarks/export_optimizer.py [--threads 2] [--rounds 20] [--iters 10]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.transformers.optimizer import optimize_model

from vitqbench.export import export_model
from vitqbench.runtime import create_session


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="deit_small_patch16_224")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--iters", type=int, default=10)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / "plain.onnx"
        start = time.perf_counter()
        result = export_model(args.model, plain, pretrained=False)
        print(f"export of {args.model}: {time.perf_counter() - start:.1f} s (incl. verification)")
        optimized = Path(tmp) / "optimized.onnx"
        meta = result.metadata
        heads = meta.model_kwargs.get("num_heads", 6)
        opt = optimize_model(str(plain), model_type="vit", num_heads=heads, hidden_size=meta.feature_dim)
        opt.save_model_to_file(str(optimized))
        for name, path in (("plain", plain), ("optimized", optimized)):
            ops = Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)
            print(f"{name:9s} ops: {dict(ops.most_common(8))}")

        x = np.random.default_rng(0).standard_normal((1, *meta.data_config.input_size), dtype=np.float32)
        sessions = {
            name: create_session(path, threads=args.threads, allow_spinning=False)
            for name, path in (("plain", plain), ("optimized", optimized))
        }
        reference = {name: s.run(["logits"], {"pixel_values": x})[0] for name, s in sessions.items()}
        print(f"max |delta logits| optimized vs plain: {np.abs(reference['plain'] - reference['optimized']).max():.2e}")
        times: dict[str, list[float]] = {name: [] for name in sessions}
        for _ in range(3):
            for s in sessions.values():
                s.run(["logits"], {"pixel_values": x})
        for _ in range(args.rounds):
            for name, s in sessions.items():
                for _ in range(args.iters):
                    t = time.perf_counter()
                    s.run(["logits"], {"pixel_values": x})
                    times[name].append(time.perf_counter() - t)
        p50 = {name: 1000 * float(np.median(v)) for name, v in times.items()}
        for name, value in p50.items():
            print(f"{name:9s} p50 {value:.1f} ms  ({len(times[name])} runs, batch 1, {args.threads} threads)")
        print(f"optimized / plain p50: {p50['optimized'] / p50['plain']:.3f}")


if __name__ == "__main__":
    main()
