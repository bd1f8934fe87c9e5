"""Train a small timm VisionTransformer on CPU and save a self-describing safetensors checkpoint.

These are the trained models behind every accuracy and OOD number vitqbench reports offline:
random-init weights say nothing about how quantization changes accuracy or OOD detection.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
import torch.nn.functional as F
from rich.progress import BarColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from safetensors.torch import save_file

from vitqbench.data import Dataset, decoded_images, load_dataset
from vitqbench.errors import VitqbenchError, check_seed
from vitqbench.export.model import CHECKPOINT_METADATA_KEY, check_model_name
from vitqbench.files import atomic_path, check_output_file
from vitqbench.metadata import DataConfig, check_choice
from vitqbench.progress import progress_bar
from vitqbench.runtime import check_threads

DEFAULT_MODEL = "vit_tiny_patch16_224"
# 28x28 inputs in 4x4 patches (49 tokens), width 128 (every 4-bit block size divides K), depth 6.
DEFAULT_KWARGS: dict[str, Any] = dict(img_size=28, patch_size=4, embed_dim=128, depth=6, num_heads=4)
# Training augmentation, the study's second axis: none; random +-max_shift px translations (the
# default, what every earlier checkpoint used); timm's RandAugment (rand-m9-mstd0.5-inc1, DeiT's);
# timm's Mixup/CutMix (mixup alpha 0.8, cutmix alpha 1.0, DeiT's) with its soft targets.
AUGMENTS = ("none", "shift", "randaugment", "mixup")
RANDAUGMENT = "rand-m9-mstd0.5-inc1"
POSTERIZE = {"PosterizeIncreasing": "PosterizeOriginal"}


@dataclass
class TrainConfig:
    data: str
    model: str = DEFAULT_MODEL
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    epochs: int = 60
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    val_fraction: float = 0.1
    max_shift: int = 2  # augment "shift": random translation by up to this many pixels
    augment: str = "shift"  # one of AUGMENTS
    seed: int = 0
    threads: int | None = None


@dataclass
class TrainResult:
    path: Path
    val_accuracy: float
    losses: list[float]
    seconds: float
    num_train: int
    num_val: int


def _normalized(images: np.ndarray, config: DataConfig) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(config.mean).view(1, -1, 1, 1)
    std = torch.tensor(config.std).view(1, -1, 1, 1)
    return (x - mean) / std


def _shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Random translation with edge padding, one offset per image."""
    if max_shift <= 0:
        return x
    _, _, h, w = x.shape
    padded = F.pad(x, [max_shift] * 4, mode="replicate")
    offsets = torch.randint(0, 2 * max_shift + 1, (x.shape[0], 2), generator=generator)
    return torch.stack([padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets.tolist())])


class Augmenter:
    """One training batch (uint8 images [B, H, W, C], labels) to model inputs and targets, per ``augment``.

    Seeded by ``generator`` alone: each batch draws a seed from it for the Python and numpy random
    state that timm's RandAugment and Mixup read, so the same seed gives the same batches.
    """

    def __init__(
        self, augment: str, config: DataConfig, num_classes: int, label_smoothing: float, max_shift: int,
        generator: torch.Generator,
    ):  # fmt: skip
        check_choice(augment, AUGMENTS, "--augment")
        self.augment, self.config, self.max_shift, self.generator = augment, config, max_shift, generator
        self.label_smoothing = label_smoothing
        self.randaugment = self.mixup = None
        if augment == "randaugment":
            from timm.data import rand_augment_transform
            from timm.data.auto_augment import _RAND_INCREASING_TRANSFORMS

            channels, height, width = config.input_size
            mean = tuple(round(255 * m) for m in config.mean)
            hparams = {"translate_const": int(0.45 * min(height, width)), "img_mean": mean if channels > 1 else mean[0]}
            # PosterizeIncreasing reaches 0 bits at full magnitude, which current Pillow refuses:
            # timm's 4-8 bit Posterize takes its place.
            ops = [POSTERIZE.get(op, op) for op in _RAND_INCREASING_TRANSFORMS]
            self.randaugment = rand_augment_transform(RANDAUGMENT, hparams, transforms=ops)
        elif augment == "mixup":
            from timm.data import Mixup

            self.mixup = Mixup(
                mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=label_smoothing, num_classes=num_classes
            )

    def _reseed(self) -> None:
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=self.generator))
        random.seed(seed)
        np.random.seed(seed)

    def __call__(self, images: np.ndarray, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.randaugment is not None:
            from PIL import Image

            self._reseed()
            gray = images.shape[-1] == 1
            pil = [Image.fromarray(im[..., 0] if gray else im) for im in images]
            images = np.stack([np.asarray(self.randaugment(im)) for im in pil])
            images = images[..., None] if gray else images
        x = _normalized(images, self.config)
        if self.augment == "shift":
            x = _shift(x, self.max_shift, self.generator)
        if self.mixup is not None and len(x) % 2 == 0:  # timm's batch Mixup pairs the batch with its reverse
            self._reseed()
            return self.mixup(x, labels)
        return x, labels

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.ndim == 2:  # Mixup's soft targets (label smoothing already in them)
            return torch.sum(-target * F.log_softmax(logits, dim=-1), dim=-1).mean()
        return F.cross_entropy(logits, target, label_smoothing=self.label_smoothing)


def _accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 256) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            correct += int((model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum())
    return correct / max(1, len(x))


def _usable(dataset: Dataset) -> np.ndarray:
    """Indices of the images that decoded (call after decoding: only then are unreadable ones known)."""
    keep = dataset.kept_indices()
    if len(keep) < 10:
        raise VitqbenchError(f"{dataset.spec} has only {len(keep)} usable images; training needs more")
    return keep


def _check(config: TrainConfig) -> None:
    if config.epochs < 1 or config.batch_size < 1:
        raise VitqbenchError("--epochs and --batch-size must be at least 1")
    if not config.lr > 0:
        raise VitqbenchError(f"--lr must be positive (got {config.lr})")
    if config.weight_decay < 0 or not 0 <= config.label_smoothing < 1 or not 0 <= config.val_fraction < 1:
        raise VitqbenchError("weight decay must be >= 0, label smoothing and the validation fraction in [0, 1)")
    if config.max_shift < 0:
        raise VitqbenchError(f"max shift must be >= 0 (got {config.max_shift})")
    check_choice(config.augment, AUGMENTS, "--augment")
    check_threads(config.threads)
    check_seed(config.seed)


def train_model(config: TrainConfig, out: Path, progress: bool = True, cache_dir: Path | None = None) -> TrainResult:
    """Train ``config.model`` on ``config.data`` and write the checkpoint to ``out`` atomically.

    ``config.seed`` also draws ``n=`` subsets of the data; ``cache_dir`` holds the decoded images."""
    check_output_file(out)
    arch, _ = check_model_name(config.model)
    _check(config)
    if config.threads:
        torch.set_num_threads(config.threads)
    dataset = load_dataset(config.data, seed=config.seed)
    if dataset.labels is None:
        raise VitqbenchError(f"{dataset.spec} has no labels: training needs class sub-folders or a labelled set")
    num_classes = int(dataset.labels.max()) + 1
    kwargs = {**DEFAULT_KWARGS, **config.model_kwargs} if config.model == DEFAULT_MODEL else dict(config.model_kwargs)
    kwargs["num_classes"] = num_classes
    torch.manual_seed(config.seed)
    try:
        model = timm.create_model(arch, pretrained=False, **kwargs)
    except TypeError as exc:
        raise VitqbenchError(f"bad model option for {arch}: {exc}") from exc
    if not hasattr(model, "patch_embed"):
        raise VitqbenchError(f"{arch} is not a vision transformer (no patch embedding); train a ViT, DeiT or DeiT3")
    size = model.patch_embed.img_size
    channels = int(model.patch_embed.proj.in_channels)
    data_config = DataConfig(
        input_size=(channels, int(size[0]), int(size[1])),
        mean=(0.5,) * channels,
        std=(0.5,) * channels,
        interpolation="bicubic",
        crop_pct=1.0,
        crop_mode="center",
    )
    images = decoded_images(dataset, data_config, cache_dir=cache_dir, progress=progress)
    keep = _usable(dataset)
    labels = dataset.labels[keep]
    images = images[keep]
    y_all = torch.from_numpy(labels.astype(np.int64))

    rng = np.random.default_rng(config.seed)
    order = rng.permutation(len(images))
    n_val = max(1, int(round(config.val_fraction * len(order)))) if config.val_fraction > 0 else 0
    val_idx, train_idx = order[:n_val], order[n_val:]
    images_train, y_train = images[train_idx], y_all[train_idx]
    x_val, y_val = _normalized(images[val_idx], data_config), y_all[val_idx]

    steps_per_epoch = math.ceil(len(images_train) / config.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch, pct_start=0.15
    )
    generator = torch.Generator().manual_seed(config.seed)
    augment = Augmenter(config.augment, data_config, num_classes, config.label_smoothing, config.max_shift, generator)
    losses: list[float] = []
    val_accuracy = float("nan")
    start = time.perf_counter()
    columns = (
        TextColumn("[bold]train[/]"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} epochs"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.description}"),
    )
    # In a log: one line per epoch (log_interval 0), epochs being few and slow.
    with progress_bar(*columns, enabled=progress, transient=False, log_interval=0) as bar:
        task = bar.add_task("", total=config.epochs)
        for _epoch in range(config.epochs):
            model.train()
            permutation = torch.randperm(len(images_train), generator=generator)
            total, count = 0.0, 0
            for i in range(0, len(images_train), config.batch_size):
                idx = permutation[i : i + config.batch_size]
                xb, target = augment(images_train[idx.numpy()], y_train[idx])
                loss = augment.loss(model(xb), target)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                total += loss.item() * len(idx)
                count += len(idx)
            losses.append(total / count)
            if n_val:
                val_accuracy = _accuracy(model, x_val, y_val)
            bar.update(task, advance=1, description=f"loss {losses[-1]:.3f}  held-out acc {val_accuracy:.3f}")
    seconds = time.perf_counter() - start

    description = {
        "timm_name": arch,
        "model_kwargs": kwargs,
        "data_config": asdict(data_config),
        "class_names": [str(c) for c in (dataset.class_names or range(num_classes))][:num_classes],
        "train": {
            **{k: v for k, v in asdict(config).items() if k != "model_kwargs"},
            "num_train": len(train_idx),
            "num_val": n_val,
            "val_accuracy": val_accuracy,
            "final_loss": losses[-1],
            "seconds": round(seconds, 1),
            "torch": torch.__version__,
            "timm": timm.__version__,
        },
    }
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    with atomic_path(out, suffix=".safetensors") as tmp:
        save_file(state, str(tmp), metadata={CHECKPOINT_METADATA_KEY: json.dumps(description)})
    return TrainResult(Path(out), val_accuracy, losses, seconds, len(train_idx), n_val)
