"""Our cached uint8 + numpy normalization against timm's own eval transform, on real files."""

from __future__ import annotations

import numpy as np
import pytest
import timm
from datahelpers import EXTENSION, KINDS, write_image
from PIL import Image
from timm.data import create_transform, resolve_data_config

from vitqbench.data import iter_batches, load_dataset
from vitqbench.metadata import DataConfig

IMAGENET = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
CONFIGS = {
    "deit": dict(input_size=(3, 224, 224), interpolation="bicubic", crop_pct=0.875, **IMAGENET),
    "deit3": dict(input_size=(3, 224, 224), interpolation="bicubic", crop_pct=1.0, **IMAGENET),
    "vit-augreg": dict(
        input_size=(3, 224, 224), interpolation="bicubic", crop_pct=0.9, mean=(0.5,) * 3, std=(0.5,) * 3
    ),
}
SIZES = [(300, 200), (97, 131), (224, 224)]  # landscape, portrait smaller than the crop, exact size
# six files, one per mode (RGB png/jpeg, L, RGBA, CMYK, P), sizes cycling through SIZES


def _timm_config(name: str) -> dict:
    return resolve_data_config({}, pretrained_cfg=timm.models.get_pretrained_cfg(name).to_dict())


def _assert_matches_timm(tmp_path, config: dict) -> None:
    files = [
        write_image(tmp_path / "img" / f"{i}{EXTENSION.get(kind, '.jpg')}", kind, seed=i, size=SIZES[i % 3])
        for i, kind in enumerate(KINDS)
    ]
    dataset = load_dataset(str(tmp_path / "img"))
    data_config = DataConfig.from_dict(config)
    reference = create_transform(**config, is_training=False)
    mode = "RGB" if config["input_size"][0] == 3 else "L"
    for cached_pass in (False, True):
        seen = 0
        cache_dir = tmp_path / "cache"
        for batch in iter_batches(dataset, data_config, batch_size=6, cache_dir=cache_dir, progress=False):
            for image, index in zip(batch.images, batch.indices, strict=True):
                with Image.open(dataset.paths[index]) as img:
                    expected = reference(img.convert(mode)).numpy()
                np.testing.assert_allclose(image, expected, atol=1e-5, rtol=0)
                seen += 1
        assert seen == len(files), f"cached_pass={cached_pass}"


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_parity_with_timm_issue_configs(tmp_path, name):
    _assert_matches_timm(tmp_path, CONFIGS[name])


def test_parity_with_timm_resolved_config(tmp_path):
    """What resolve_data_config gives for a real pretrained tag (crop_pct 0.9 here)."""
    _assert_matches_timm(tmp_path, _timm_config("deit_small_patch16_224.fb_in1k"))


@pytest.mark.parametrize(
    "config",
    [
        dict(input_size=(3, 48, 64), interpolation="bilinear", crop_pct=0.9, crop_mode="center", **IMAGENET),
        dict(input_size=(3, 40, 40), interpolation="bicubic", crop_pct=0.95, crop_mode="squash", **IMAGENET),
        dict(input_size=(3, 40, 40), interpolation="bicubic", crop_pct=0.95, crop_mode="border", **IMAGENET),
        dict(input_size=(3, 40, 40), interpolation="lanczos", crop_pct=1.25, crop_mode="center", **IMAGENET),
        dict(input_size=(1, 28, 28), interpolation="bilinear", crop_pct=1.0, mean=(0.3,), std=(0.2,)),
        dict(input_size=(1, 28, 28), interpolation="bicubic", crop_pct=0.9, crop_mode="border", mean=(0.3,),
             std=(0.2,)),
    ],
    ids=["non-square", "squash", "border", "pad", "gray", "gray-border"],
)  # fmt: skip
def test_parity_other_geometries(tmp_path, config):
    _assert_matches_timm(tmp_path, config)
