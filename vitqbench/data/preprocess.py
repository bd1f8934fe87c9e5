"""timm's eval transform, split in two: a PIL geometry step (cached as uint8) and a numpy normalization.

``transforms_imagenet_eval`` (timm) is ``Resize``/``ResizeKeepRatio`` -> ``CenterCrop``/``CenterCropOrPad``
-> ``ToTensor`` -> ``Normalize``. The first two only move PIL pixels, so their uint8 output can be decoded
once and cached; ``normalize`` then reproduces ``ToTensor``+``Normalize`` in float32 with the same
operations, which is what makes the cached path match timm within 1e-5 (tests check it against timm).
We reimplement the geometry on PIL instead of calling torchvision so that decode workers need neither
torch nor its thread pools.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from vitqbench.errors import VitqbenchError
from vitqbench.metadata import DataConfig

# torchvision's pil_modes_mapping, which timm's str_to_interp_mode goes through.
PIL_INTERPOLATION = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass(frozen=True)
class Geometry:
    """Everything that decides the cached uint8 pixels (not mean/std: those apply on the fly)."""

    height: int
    width: int
    channels: int
    interpolation: str
    crop_pct: float
    crop_mode: str
    fill: tuple[int, ...]  # the pad colour of crop_mode "border" (timm: round(255 * mean)), else zeros

    @classmethod
    def from_config(cls, config: DataConfig) -> Geometry:
        channels, height, width = (int(v) for v in config.input_size)
        if channels not in (1, 3):
            raise VitqbenchError(f"models with {channels} input channels are not supported (only 1 or 3)")
        return cls(
            height=height,
            width=width,
            channels=channels,
            interpolation=config.interpolation,
            crop_pct=config.crop_pct,
            crop_mode=config.crop_mode,
            # only "border" pads with the mean colour; elsewhere mean must not split the cache
            fill=tuple(round(255 * m) if config.crop_mode == "border" else 0 for m in config.mean),
        )

    @property
    def mode(self) -> str:
        return "RGB" if self.channels == 3 else "L"

    @property
    def shape(self) -> tuple[int, int, int]:
        """The cached image shape, (H, W, C) like PIL's arrays."""
        return (self.height, self.width, self.channels)


def to_model_mode(img: Image.Image, geometry: Geometry) -> Image.Image:
    """Grayscale, palette, RGBA, CMYK... -> RGB or L, exactly as timm's ImageDataset (``img.convert``)."""
    return img if img.mode == geometry.mode else img.convert(geometry.mode)


def _resize(img: Image.Image, height: int, width: int, geometry: Geometry) -> Image.Image:
    # torchvision returns the image untouched when it already has the size; resampling would not.
    if img.size == (width, height):
        return img
    return img.resize((width, height), PIL_INTERPOLATION[geometry.interpolation])


def _crop_or_pad(img: Image.Image, height: int, width: int, fill: int | tuple[int, ...]) -> Image.Image:
    """torchvision's center_crop (fill 0) and timm's center_crop_or_pad (mean fill)."""
    w, h = img.size
    if width > w or height > h:
        left, top = max(width - w, 0) // 2, max(height - h, 0) // 2
        canvas = Image.new(img.mode, (max(w, width), max(h, height)), fill)
        canvas.paste(img, (left, top))
        img = canvas
        w, h = img.size
        if (w, h) == (width, height):
            return img
    top = int(round((h - height) / 2.0))
    left = int(round((w - width) / 2.0))
    return img.crop((left, top, left + width, top + height))


def resize_crop(img: Image.Image, geometry: Geometry) -> Image.Image:
    """The geometric part of timm's eval transform, for an image already in the model's mode."""
    th, tw = geometry.height, geometry.width
    scale_h, scale_w = math.floor(th / geometry.crop_pct), math.floor(tw / geometry.crop_pct)
    w, h = img.size
    if geometry.crop_mode == "squash":
        return _crop_or_pad(_resize(img, scale_h, scale_w, geometry), th, tw, 0)
    if geometry.crop_mode == "border":
        ratio = max(h / scale_h, w / scale_w)  # ResizeKeepRatio(longest=1.0)
        img = _resize(img, round(h / ratio), round(w / ratio), geometry)
        fill = geometry.fill if geometry.channels > 1 else geometry.fill[0]
        return _crop_or_pad(img, th, tw, fill)
    if scale_h == scale_w:  # torchvision Resize(int): shortest edge
        short, long = (w, h) if w <= h else (h, w)
        new_long = int(scale_h * long / short)
        new_w, new_h = (scale_h, new_long) if w <= h else (new_long, scale_h)
    else:  # ResizeKeepRatio(longest=0.0)
        ratio = min(h / scale_h, w / scale_w)
        new_h, new_w = round(h / ratio), round(w / ratio)
    return _crop_or_pad(_resize(img, new_h, new_w, geometry), th, tw, 0)


def prepare_image(img: Image.Image, geometry: Geometry) -> np.ndarray:
    """A decoded PIL image -> the cached uint8 array [H, W, C]."""
    out = np.asarray(resize_crop(to_model_mode(img, geometry), geometry), dtype=np.uint8)
    return out.reshape(geometry.shape)


@dataclass(frozen=True)
class Normalization:
    """ToTensor + Normalize constants, float32 [C, 1, 1] like the tensors torchvision uses."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def from_config(cls, config: DataConfig) -> Normalization:
        shape = (len(config.mean), 1, 1)
        return cls(
            mean=np.asarray(config.mean, dtype=np.float32).reshape(shape),
            std=np.asarray(config.std, dtype=np.float32).reshape(shape),
        )


def normalize(images: np.ndarray, norm: Normalization, out: np.ndarray | None = None) -> np.ndarray:
    """uint8 [B, H, W, C] -> float32 [B, C, H, W], normalized like timm's eval transform.

    The same float32 operations in the same order as ``ToTensor`` (x / 255) and ``Normalize``
    ((x - mean) / std), so the result is bit-identical to timm's; in-place ufuncs keep it to three
    passes over memory, with the uint8 -> float32 cast and the HWC -> CHW move folded into the first.
    """
    b, h, w, c = images.shape
    if out is None:
        out = np.empty((b, c, h, w), dtype=np.float32)
    np.divide(images.transpose(0, 3, 1, 2), np.float32(255), out=out, dtype=np.float32)
    np.subtract(out, norm.mean, out=out)
    np.divide(out, norm.std, out=out)
    return out
