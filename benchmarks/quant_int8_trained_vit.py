"""Train a small timm ViT on Fashion-MNIST (CPU, a few minutes) and export it, for the int8 fidelity study.

Stand-in for `vitqbench train` until it lands. Gray images are replicated to 3 channels so the model
goes through the same RGB preprocessing path as every other vitqbench model.

    python benchmarks/quant_int8_trained_vit.py --out /tmp/q8/fmnist_vit.onnx --epochs 2
"""

from __future__ import annotations

import argparse
import gzip
import time
from pathlib import Path

import numpy as np
import timm
import torch
from safetensors.torch import save_file

from vitqbench.export import export_model

FMNIST = Path("/usr/share/datasets/fashion-mnist")
MODEL = "vit_tiny_patch16_224"
KWARGS = dict(img_size=28, patch_size=7, in_chans=3, embed_dim=96, depth=4, num_heads=4, num_classes=10)
MEAN, STD = 0.2860, 0.3530


def read_idx(name: str) -> np.ndarray:
    with gzip.open(FMNIST / name, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def to_input(images: np.ndarray) -> torch.Tensor:
    x = (images.astype(np.float32) / 255.0 - MEAN) / STD
    return torch.from_numpy(np.repeat(x[:, None], 3, axis=1))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("/tmp/q8/fmnist_vit.onnx"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(2)
    x_train, y_train = read_idx("train-images-idx3-ubyte.gz"), read_idx("train-labels-idx1-ubyte.gz")
    x_test, y_test = read_idx("t10k-images-idx3-ubyte.gz"), read_idx("t10k-labels-idx1-ubyte.gz")
    model = timm.create_model(MODEL, pretrained=False, **KWARGS)
    steps = args.epochs * (len(x_train) // 128)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    rng = np.random.default_rng(args.seed)
    start = time.time()
    for epoch in range(args.epochs):
        model.train()
        order = rng.permutation(len(x_train))
        for i in range(len(x_train) // 128):
            idx = order[i * 128 : (i + 1) * 128]
            images = x_train[idx]
            flip = rng.random(len(idx)) < 0.5
            images = np.where(flip[:, None, None], images[:, :, ::-1], images)
            loss = torch.nn.functional.cross_entropy(
                model(to_input(images)), torch.from_numpy(y_train[idx].astype(np.int64)), label_smoothing=0.1
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        with torch.no_grad():
            chunks = [model(to_input(x_test[i : i + 1000])).argmax(1) for i in range(0, len(x_test), 1000)]
            pred = torch.cat(chunks)
        acc = float((pred.numpy() == y_test).mean())
        print(f"epoch {epoch + 1}: loss {loss.item():.3f} test acc {acc:.4f} ({time.time() - start:.0f} s)", flush=True)
        # Saved and exported after every epoch so a slow machine still leaves a usable model.
        weights = args.out.with_suffix(".safetensors")
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
        export_model(
            MODEL, args.out, pretrained=False, checkpoint=weights, model_kwargs=KWARGS,
            mean=[MEAN] * 3, std=[STD] * 3, interpolation="bilinear", crop_pct=1.0,
        )  # fmt: skip
        print(f"wrote {args.out} (test acc {acc:.4f})", flush=True)


if __name__ == "__main__":
    main()
