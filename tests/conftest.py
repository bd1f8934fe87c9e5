"""Shared test helpers: run the CLI in-process and capture its exit code and streams."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may touch the network


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


@pytest.fixture
def run_cli(capsys):
    from vitqbench.cli import main

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out = capsys.readouterr()
        return CliResult(code, out.out, out.err)

    return run


TINY_VIT = dict(img_size=32, patch_size=8, depth=2, embed_dim=64, num_heads=2, num_classes=10)


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory):
    """A random-init ViT (3x32x32 input, 10 classes, 64-d features) exported once per test session.

    The head bias is set non-zero so it survives export as an initializer, as in a trained model.
    """
    import timm
    import torch
    from safetensors.torch import save_file

    from vitqbench.export import export_model

    folder = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    net = timm.create_model("deit_tiny_patch16_224", **TINY_VIT)
    with torch.no_grad():
        net.head.bias.normal_(0, 0.1)
    weights = folder / "tiny.safetensors"
    save_file(net.state_dict(), str(weights))
    out = folder / "tiny.onnx"
    export_model("deit_tiny_patch16_224", out, checkpoint=weights, model_kwargs=TINY_VIT)
    return out
