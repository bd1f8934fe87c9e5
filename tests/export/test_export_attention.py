"""export --attention: each block's class-token attention and per-head entropy, verified, kept by every scheme."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vitqbench.errors import VitqbenchError
from vitqbench.metadata import ATTN_CLS, ATTN_ENTROPY, read_metadata
from vitqbench.runtime import create_session

TINY = {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2, "num_classes": 10}
SCHEMES = ("w8a8", "w8a8-dynamic", "w4", "w4a8", "w4a4", "w6a6", "fp16")


@pytest.fixture(scope="module")
def attention_onnx(tmp_path_factory):
    from vitqbench.export import export_model

    path = tmp_path_factory.mktemp("attn") / "attn.onnx"
    result = export_model("deit_tiny_patch16_224", path, pretrained=False, model_kwargs=TINY, attention=True)
    assert result.verification.passed  # the attention outputs are compared with PyTorch as features are
    return path


def _run(path, x):
    session = create_session(path, threads=1)
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, {"pixel_values": x}), strict=True))


def _x():
    return np.random.default_rng(0).normal(0, 0.5, (3, 3, 32, 32)).astype(np.float32)


def test_attention_outputs_are_distributions_and_entropies(attention_onnx):
    meta = read_metadata(attention_onnx)
    assert meta.outputs[ATTN_CLS] == ATTN_CLS and meta.outputs[ATTN_ENTROPY] == ATTN_ENTROPY
    out = _run(attention_onnx, _x())
    tokens = (32 // 8) ** 2 + 1
    assert out[ATTN_CLS].shape == (3, 2, tokens) and out[ATTN_ENTROPY].shape == (3, 2, 2)
    np.testing.assert_allclose(out[ATTN_CLS].sum(-1), 1.0, atol=1e-5)  # a mean of softmax rows
    assert (out[ATTN_ENTROPY] >= 0).all() and (out[ATTN_ENTROPY] <= np.log(tokens) + 1e-5).all()


def test_the_plain_export_has_no_attention_outputs_and_the_same_logits(attention_onnx, tmp_path):
    from vitqbench.export import export_model

    plain = tmp_path / "plain.onnx"
    export_model("deit_tiny_patch16_224", plain, pretrained=False, model_kwargs=TINY)
    assert set(read_metadata(plain).outputs) == {"logits", "features"}
    x = _x()
    np.testing.assert_allclose(_run(attention_onnx, x)["logits"], _run(plain, x)["logits"], atol=1e-5)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_every_scheme_keeps_the_attention_outputs(attention_onnx, tmp_path, scheme):
    from vitqbench.quant import CalibConfig, quantize_model

    folder = tmp_path / "calib"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    out = tmp_path / f"{scheme}.onnx"
    meta = quantize_model(attention_onnx, out, scheme, CalibConfig(str(folder), size=4), progress=False)
    assert {ATTN_CLS, ATTN_ENTROPY} <= set(meta.outputs)
    got, ref = _run(out, _x()), _run(attention_onnx, _x())
    assert got[ATTN_CLS].shape == ref[ATTN_CLS].shape and np.isfinite(got[ATTN_ENTROPY]).all()
    # Quantized softmax inputs round the probabilities: still close to distributions.
    np.testing.assert_allclose(got[ATTN_CLS].sum(-1), 1.0, atol=0.1)


def test_attention_needs_timm_attention_blocks():
    import torch

    from vitqbench.export.onnx_export import WithAttention

    with pytest.raises(VitqbenchError, match="--attention needs a ViT whose blocks use timm's Attention"):
        WithAttention(torch.nn.Linear(3, 3), linear_head=False)


def test_export_cli_flag(tmp_path, run_cli):
    out = tmp_path / "m.onnx"
    args = ["export", "deit_tiny_patch16_224", "--no-pretrained", "--attention", "-o", out]
    args += [f"--set={k}={v}" for k, v in TINY.items()]
    result = run_cli(*args)
    assert result.code == 0, result.stderr
    assert ATTN_ENTROPY in read_metadata(out).outputs


def test_js_divergence_matches_scipy():
    from scipy.spatial.distance import jensenshannon

    from vitqbench.evaluate.attention import js_divergence

    rng = np.random.default_rng(0)
    p, q = rng.dirichlet(np.ones(17), size=5), rng.dirichlet(np.ones(17), size=5)
    want = np.array([jensenshannon(a, b, base=2) ** 2 for a, b in zip(p, q, strict=True)])
    np.testing.assert_allclose(js_divergence(p, q), want, atol=1e-12)
    assert np.allclose(js_divergence(p, p), 0) and (js_divergence(p, q) <= 1).all()


def test_eval_attention_rows_drift_and_report(attention_onnx, tmp_path, run_cli):
    import shutil

    from vitqbench.evaluate import EvalConfig, run_eval
    from vitqbench.report import write_report

    twin = tmp_path / "twin.onnx"  # the same weights: no drift at all
    shutil.copy(attention_onnx, twin)
    config = EvalConfig(
        models=[attention_onnx, twin], id="digits:test:n=30", scores="msp",
        ood={"d": "digits:train:n=20", "noise": "noise:gaussian:n=10"},
        attention=True, cache_dir=tmp_path / "c", progress=False,
    )  # fmt: skip
    results = run_eval(config)
    rows = results.attention
    assert len(rows) == 2 * 3 * 2  # models x (ID + 2 OOD sets) x blocks
    assert all(r.drift_js is None for r in rows if r.model == "attn")  # the baseline
    assert all(abs(r.drift_js) < 1e-9 for r in rows if r.model == "twin")
    assert all(0 <= r.cls_concentration <= 1 and r.entropy > 0 for r in rows)
    write_report(results, tmp_path / "out")
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Attention, ID vs OOD" in report and "moved more on OOD than on ID inputs in 0 of 2 blocks" in report
    plain = tmp_path / "plain.onnx"
    from vitqbench.export import export_model

    export_model("deit_tiny_patch16_224", plain, pretrained=False, model_kwargs=TINY, verify=False)
    result = run_cli("eval", "-m", plain, "--id", "digits:test:n=10", "--attention", "-o", tmp_path / "o2")
    assert result.code == 2 and "plain has no attention outputs" in result.stderr
