"""Small real image files of every mode the preprocessing must handle, written for the data tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from vitqbench.metadata import DataConfig

TINY = DataConfig(input_size=(3, 32, 32), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pct=0.875)


def _pixels(seed: int, h: int, w: int, channels: int = 3) -> np.ndarray:
    """Smooth gradients plus noise: resampling filters see real structure, not just white noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * (c + 1) * 255 / w + yy * 255 / h) % 256 for c in range(channels)], axis=-1)
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


def write_image(path: Path, kind: str, seed: int = 0, size: tuple[int, int] = (61, 47)) -> Path:
    """``kind``: png (RGB), jpeg, gray (L jpeg), rgba (png), cmyk (jpeg), palette (png), truncated (jpeg)."""
    w, h = size
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = Image.fromarray(_pixels(seed, h, w))
    if kind == "png":
        rgb.save(path, format="PNG")
    elif kind in ("jpeg", "truncated"):
        rgb.save(path, format="JPEG", quality=90)
        if kind == "truncated":
            data = path.read_bytes()
            path.write_bytes(data[: len(data) // 2])
    elif kind == "gray":
        rgb.convert("L").save(path, format="JPEG", quality=90)
    elif kind == "rgba":
        alpha = Image.fromarray(_pixels(seed + 100, h, w, 1)[..., 0])
        rgba = rgb.convert("RGBA")
        rgba.putalpha(alpha)
        rgba.save(path, format="PNG")
    elif kind == "cmyk":
        rgb.convert("CMYK").save(path, format="JPEG", quality=90)
    elif kind == "palette":
        rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=32).save(path, format="PNG")
    else:
        raise ValueError(kind)
    return path


KINDS = ("png", "jpeg", "gray", "rgba", "cmyk", "palette")
EXTENSION = {"png": ".png", "rgba": ".png", "palette": ".png"}


def write_class_folders(root: Path, per_class: dict[str, list[str]]) -> list[Path]:
    """``{"cat": ["png", "jpeg"], ...}`` -> root/cat/000.png, root/cat/001.jpg ...; returns files in order."""
    files = []
    for label, kinds in sorted(per_class.items()):
        for i, kind in enumerate(kinds):
            name = f"{i:03d}{EXTENSION.get(kind, '.jpg')}"
            files.append(write_image(root / label / name, kind, seed=len(files), size=(40 + 7 * i, 33 + 5 * i)))
    return files
