"""`vitqbench train` for a few epochs and `vitqbench demo` end to end in a reduced mode."""

from __future__ import annotations

import json

import numpy as np
import pytest
from clihelpers import one_line_error
from safetensors import safe_open

from vitqbench.demo import DemoConfig, run_demo
from vitqbench.errors import VitqbenchError
from vitqbench.metadata import read_metadata
from vitqbench.runtime import create_session
from vitqbench.train import AUGMENTS, Augmenter, TrainConfig, train_model

SMALL = {"embed_dim": 32, "depth": 1, "num_heads": 2, "img_size": 16}


def test_train_loss_decreases_and_checkpoint_exports_without_flags(tmp_path, run_cli):
    ckpt = tmp_path / "digits.safetensors"
    config = TrainConfig(data="digits:train:n=300", epochs=6, model_kwargs=SMALL, batch_size=32, seed=1)
    result = train_model(config, ckpt, progress=False)
    assert result.losses[-1] < result.losses[0]
    assert 0.0 <= result.val_accuracy <= 1.0 and result.num_train + result.num_val == 300
    with safe_open(str(ckpt), framework="pt") as f:
        description = json.loads(f.metadata()["vitqbench.checkpoint"])
    assert description["train"]["seed"] == 1 and description["timm_name"] == "vit_tiny_patch16_224"

    out = tmp_path / "m.onnx"
    exported = run_cli("export", ckpt, "-o", out)
    assert exported.code == 0, exported.stderr
    meta = read_metadata(out)
    assert meta.source["kind"] == "checkpoint" and meta.num_classes == 10
    assert meta.source["train"]["augment"] == "shift" and description["train"]["augment"] == "shift"
    assert meta.class_names == [str(i) for i in range(10)]
    assert meta.data_config.input_size == (3, 16, 16) and meta.data_config.crop_pct == 1.0
    logits, _ = create_session(out).run(None, {"pixel_values": np.zeros((2, 3, 16, 16), np.float32)})
    assert logits.shape == (2, 10)


def test_training_is_reproducible(tmp_path):
    config = TrainConfig(data="digits:train:n=120", epochs=2, model_kwargs=SMALL, batch_size=32)
    a = train_model(config, tmp_path / "a.safetensors", progress=False)
    b = train_model(config, tmp_path / "b.safetensors", progress=False)
    assert a.losses == b.losses


def test_train_rejects_unlabelled_data_and_bad_names(tmp_path, run_cli):
    result = run_cli("train", "--data", "noise:gaussian:n=20", "-o", tmp_path / "x.safetensors")
    assert result.code == 2 and "no labels" in result.stderr
    result = run_cli("train", "--data", "digits", "-o", tmp_path / "x.pth")
    assert result.code == 2 and "safetensors" in result.stderr


def _batches(augment: str, seed: int, count: int = 3):
    import torch

    from vitqbench.metadata import DataConfig

    config = DataConfig(input_size=(3, 16, 16), mean=(0.5,) * 3, std=(0.5,) * 3, crop_pct=1.0)
    images = np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
    labels = torch.arange(8) % 4
    aug = Augmenter(augment, config, 4, 0.1, 2, torch.Generator().manual_seed(seed))
    return [aug(images, labels) for _ in range(count)]


def test_randaugment_survives_full_magnitude():
    """timm's PosterizeIncreasing asks Pillow for 0 bits at magnitude 10: replaced, every op applies."""
    import random

    import torch
    from PIL import Image

    from vitqbench.metadata import DataConfig

    config = DataConfig(input_size=(3, 16, 16), mean=(0.5,) * 3, std=(0.5,) * 3, crop_pct=1.0)
    aug = Augmenter("randaugment", config, 4, 0.1, 2, torch.Generator().manual_seed(0))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8))
    random.seed(0)
    for op in aug.randaugment.ops:
        op.magnitude, op.magnitude_std, op.prob = 10, 0, 1.0
        assert np.asarray(op(image)).shape == (16, 16, 3)


@pytest.mark.parametrize("augment", AUGMENTS)
def test_augmentations_are_seeded(augment):
    import torch

    a, b, c = _batches(augment, 0), _batches(augment, 0), _batches(augment, 1)
    for (xa, ta), (xb, tb) in zip(a, b, strict=True):  # same seed, same batches
        assert torch.equal(xa, xb) and torch.equal(ta, tb)
    assert a[0][0].shape == (8, 3, 16, 16)
    if augment == "none":
        assert torch.equal(a[0][0], a[1][0]) and torch.equal(a[0][0], c[0][0])
    else:  # another seed, or the next batch, is augmented otherwise
        assert not torch.equal(a[0][0], c[0][0]) and not torch.equal(a[0][0], a[1][0])
    if augment == "mixup":  # soft targets: label smoothing plus the mixing weight, rows sum to 1
        assert a[0][1].shape == (8, 4) and torch.allclose(a[0][1].sum(1), torch.ones(8))


def test_train_augment_is_recorded_and_an_unknown_one_is_one_line(tmp_path, run_cli):
    ckpt = tmp_path / "m.safetensors"
    config = TrainConfig(data="digits:train:n=60", epochs=1, model_kwargs=SMALL, batch_size=16, augment="mixup")
    train_model(config, ckpt, progress=False)
    with safe_open(str(ckpt), framework="pt") as f:
        assert json.loads(f.metadata()["vitqbench.checkpoint"])["train"]["augment"] == "mixup"
    # given as --checkpoint beside its timm name (a sweep's models), the header still describes the model
    from vitqbench.export import export_model

    meta = export_model("vit_tiny_patch16_224", tmp_path / "m.onnx", checkpoint=ckpt, verify=False).metadata
    assert meta.source["train"]["augment"] == "mixup" and meta.data_config.input_size == (3, 16, 16)
    with pytest.raises(VitqbenchError, match="was trained as vit_tiny_patch16_224, not deit_tiny_patch16_224"):
        export_model("deit_tiny_patch16_224", tmp_path / "d.onnx", checkpoint=ckpt, verify=False)
    result = run_cli("train", "--data", "digits:train", "--augment", "cutout", "-o", tmp_path / "x.safetensors")
    one_line_error(result, "unknown --augment 'cutout'", "none, shift, randaugment, mixup")


@pytest.mark.slow
def test_demo_reduced_end_to_end(tmp_path):
    config = DemoConfig(
        out=tmp_path / "demo",
        epochs=3,
        ood_size=40,
        calib_size=16,
        bench_iters=3,
        scores="msp,energy,mahalanobis,vim",
        cache_dir=tmp_path / "cache",
        extra_train={"model_kwargs": SMALL},
    )
    results = run_demo(config)
    report = (config.out / "report.md").read_text()
    for precision in ("fp32", "w8a8", "w4", "w4a4"):
        assert precision in report
    assert (config.out / "results.csv").stat().st_size > 0
    assert any((config.out / "plots").glob("*.png"))
    document = json.loads((config.out / "results.json").read_text())
    assert len(document["models"]) == 4
    assert sorted(m.precision for m in results.models) == ["fp32", "w4", "w4a4", "w8a8"]
    assert len(results.id_metrics) == 4
    assert all(0.0 <= m.top1 <= 1.0 and 0.0 <= m.top5 <= 1.0 for m in results.id_metrics)
    assert all(0.0 <= m.auroc <= 1.0 and 0.0 <= m.fpr95_id_positive <= 1.0 for m in results.ood_metrics)
    assert not results.failures
