"""export --attention: each block's class-token attention and per-head entropy, verified, kept by every scheme."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from vitqbench.errors import VitqbenchError
from vitqbench.metadata import ATTN_CLS, ATTN_ENTROPY, ATTN_ROLLOUT, read_metadata
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


def _reference_probs(x: np.ndarray) -> list[np.ndarray]:
    """Each block's attention probabilities [B, heads, N, N], recomputed from q and k (not from the export's hook)."""
    import torch

    from vitqbench.export.model import build_model

    net = build_model("deit_tiny_patch16_224", pretrained=False, model_kwargs=TINY, seed=0).model
    probs = []

    def hook(attn, args):
        (h,) = args
        b, n, c = h.shape
        qkv = attn.qkv(h).reshape(b, n, 3, attn.num_heads, c // attn.num_heads).permute(2, 0, 3, 1, 4)
        q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
        probs.append(torch.softmax(q * attn.scale @ k.transpose(-2, -1), dim=-1).double().numpy())

    for block in net.blocks:
        block.attn.register_forward_pre_hook(hook)
    with torch.no_grad():
        net(torch.from_numpy(x))
    return probs


def test_attention_outputs_equal_a_pytorch_reference_rollout_included(attention_onnx):
    x = _x()
    out = _run(attention_onnx, x)
    probs = _reference_probs(x)
    np.testing.assert_allclose(out[ATTN_CLS], np.stack([p[:, :, 0, :].mean(1) for p in probs], 1), atol=1e-4)
    entropy = np.stack([-(p * np.log(np.clip(p, 1e-12, None))).sum(-1).mean(-1) for p in probs], 1)
    np.testing.assert_allclose(out[ATTN_ENTROPY], entropy, atol=1e-4)
    tokens = probs[0].shape[-1]
    rollout = np.broadcast_to(np.eye(tokens), probs[0].shape[:1] + (tokens, tokens))
    for p in probs:  # Abnar & Zuidema: R_l = A'_l R_(l-1), A' = 0.5 mean_heads(A) + 0.5 I, rows renormalized
        a = 0.5 * p.mean(1) + 0.5 * np.eye(tokens)
        rollout = (a / a.sum(-1, keepdims=True)) @ rollout
    np.testing.assert_allclose(out[ATTN_ROLLOUT], rollout[:, 0, :], atol=1e-4)
    np.testing.assert_allclose(out[ATTN_ROLLOUT].sum(-1), 1.0, atol=1e-5)
    assert read_metadata(attention_onnx).attention == {"prefix_tokens": 1, "grid": [4, 4]}


def test_the_plain_export_has_no_attention_outputs_and_the_same_logits(attention_onnx, tmp_path):
    from vitqbench.export import export_model

    plain = tmp_path / "plain.onnx"
    export_model("deit_tiny_patch16_224", plain, pretrained=False, model_kwargs=TINY)
    assert set(read_metadata(plain).outputs) == {"logits", "features"} and read_metadata(plain).attention is None
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
    assert {ATTN_CLS, ATTN_ENTROPY, ATTN_ROLLOUT} <= set(meta.outputs) and meta.attention["grid"] == [4, 4]
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
        attention=True, cache_dir=tmp_path / "c", progress=False, keep_outputs=True,
    )  # fmt: skip
    results = run_eval(config)
    rows = results.attention
    assert len(rows) == 2 * 3 * 2  # models x (ID + 2 OOD sets) x blocks
    assert all(r.drift_js is None for r in rows if r.model == "attn")  # the baseline
    assert all(abs(r.drift_js) < 1e-9 for r in rows if r.model == "twin")
    assert all(0 <= r.cls_concentration <= 1 and r.entropy > 0 for r in rows)
    # the rollout's rank correlation: on the last block's row of a compared model only; the same weights rank alike
    assert [r.rollout_spearman for r in rows if r.model == "twin" and r.block == 1] == pytest.approx([1.0] * 3)
    assert all(r.rollout_spearman is None for r in rows if r.model == "attn" or r.block == 0)
    maps = results.attention_maps  # the first 2 images of each set, both models, over the 4x4 patch grid
    assert len(maps) == 2 * 3 * 2 and {m.grid for m in maps} == {(4, 4)}
    assert all(len(m.rollout) == 16 and abs(sum(m.rollout) - 1) < 1e-6 for m in maps)
    shapes = {k: v.shape for k, v in results.attention_images.items()}
    assert shapes == {(m.dataset, m.index): (32, 32, 3) for m in maps}
    written = write_report(results, tmp_path / "out", save_outputs=True)
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Attention, ID vs OOD" in report and "moved more on OOD than on ID inputs in 0 of 2 blocks" in report
    assert "Spearman rank correlation with the baseline" in report and "1.000" in report
    plots = {p.name for p in written if p.suffix == ".png"}
    assert {"attention_entropy.png", "attention_drift.png", "attention_rollout_attn.png"} <= plots
    assert "plots/attention_rollout_attn.png" in report
    saved = np.load(tmp_path / "out" / "outputs" / "twin__d.npz")
    assert saved[ATTN_CLS].shape == (20, 2, 17) and saved[ATTN_ROLLOUT].shape == (20, 17)
    assert saved[ATTN_ENTROPY].shape == (20, 2, 2)
    json_text = (tmp_path / "out" / "results.json").read_text()
    assert '"attention_maps"' in json_text and '"attention_images"' not in json_text
    plain = tmp_path / "plain.onnx"
    from vitqbench.export import export_model

    export_model("deit_tiny_patch16_224", plain, pretrained=False, model_kwargs=TINY, verify=False)
    result = run_cli("eval", "-m", plain, "--id", "digits:test:n=10", "--attention", "-o", tmp_path / "o2")
    assert result.code == 2 and "plain has no attention outputs" in result.stderr
    # Beside a model that has them: its attention cells fail in one line, the rest of the run goes on.
    out = tmp_path / "o3"
    result = run_cli(
        "eval", "-m", attention_onnx, "-m", plain, "--id", "digits:test:n=10", "--attention", "-o", out,
        "--cache-dir", tmp_path / "c3",
    )  # fmt: skip
    assert result.code != 0 and "plain" in result.stderr and "export --attention" in result.stderr
    data = json.loads((out / "results.json").read_text())
    assert {r["model"] for r in data["attention"]} == {"attn"}
    assert {r["model"] for r in data["id_metrics"]} == {"attn", "plain"}


def test_attention_scores_run_where_the_outputs_are_and_fail_in_one_line_where_not(attention_onnx, tmp_path):
    from vitqbench.evaluate import EvalConfig, run_eval
    from vitqbench.export import export_model

    plain = tmp_path / "plain.onnx"
    export_model("deit_tiny_patch16_224", plain, pretrained=False, model_kwargs=TINY, verify=False)
    config = EvalConfig(
        models=[attention_onnx, plain], id="digits:test:n=30", scores="msp,attn_entropy,rollout",
        ood={"d": "digits:train:n=20"}, cache_dir=tmp_path / "c", progress=False,
    )  # fmt: skip
    results = run_eval(config)
    got = {(r.model, r.score) for r in results.ood_metrics if r.dataset == "d"}
    assert {("attn", "attn_entropy"), ("attn", "rollout"), ("attn", "msp"), ("plain", "msp")} == got
    failed = {(f.model, f.stage): f.message for f in results.failures}
    assert set(failed) == {("plain", "score attn_entropy"), ("plain", "score rollout")}
    assert all("`vitqbench export --attention`" in m and "\n" not in m for m in failed.values())
    rollout = results.samples[("attn", "d")]["rollout"]
    assert rollout.shape == (20,) and ((rollout >= 0) & (rollout <= 1)).all()


def test_rank_correlation_matches_scipy_spearman():
    from scipy.stats import spearmanr

    from vitqbench.evaluate.attention import rank_correlation

    rng = np.random.default_rng(1)
    a, b = rng.dirichlet(np.ones(16), size=6), rng.dirichlet(np.ones(16), size=6)
    b[0] = a[0] * 2  # the same ranking
    b[1, :8] = b[1, 8:]  # ties
    want = [spearmanr(x, y).statistic for x, y in zip(a, b, strict=True)]
    np.testing.assert_allclose(rank_correlation(a, b), want, atol=1e-12)
    assert np.isnan(rank_correlation(np.ones((1, 4)), a[:1, :4])).all()  # a constant row ranks nothing
