"""The 4-bit graph rewrite on a tiny exported ViT: node types, outputs, formats, head, bad input."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto

from vitqbench.errors import VitqbenchError
from vitqbench.metadata import get_metadata, read_head
from vitqbench.quant.int4 import Int4Config, find_layers, quantize_int4

X = np.random.default_rng(0).standard_normal((6, 3, 32, 32)).astype(np.float32)
N_LAYERS = 9  # 2 blocks x (qkv, proj, fc1, fc2) + head


@pytest.fixture(scope="module")
def fp32(tiny_onnx):
    return onnx.load(str(tiny_onnx))


def run(model: onnx.ModelProto, optimized: str | None = None, qdq_level: int = 0) -> dict[str, np.ndarray]:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    opts.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", str(qdq_level))
    if optimized:
        opts.optimized_model_filepath = optimized
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return dict(zip(["logits", "features"], session.run(["logits", "features"], {"pixel_values": X}), strict=True))


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def quantize(model, **kwargs):
    kwargs.setdefault("accuracy_level", 0)
    kwargs.setdefault("algo", "rtn")  # data-free and fast; gptq has its own tests
    kwargs.setdefault("block_size", 32)  # K = 64: two blocks per column
    return quantize_int4(model, Int4Config(progress=False, **kwargs))


def weight_bytes(model: onnx.ModelProto) -> int:
    return sum(len(i.SerializeToString()) for i in model.graph.initializer)


def ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def test_matmulnbits_replaces_every_constant_weight_layer(fp32):
    q, record = quantize(fp32, format="matmulnbits", algo="rtn")
    onnx.checker.check_model(q)
    assert ops(q).count("MatMulNBits") == N_LAYERS
    assert find_layers(q.graph) == []  # no float MatMul/Gemm with a constant weight left
    assert "Conv" in ops(q) and record["patch_embed"] == "float"
    assert record["algorithm"] == "rtn" and len(record["quantized_nodes"]) == N_LAYERS
    node = next(n for n in q.graph.node if n.op_type == "MatMulNBits")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["bits"] == 4 and attrs["block_size"] == 32 and attrs["K"] == 64
    assert weight_bytes(q) < 0.35 * weight_bytes(fp32)  # the rest is the float patch embedding, norms
    out, ref = run(q), run(fp32)
    assert rel(out["logits"], ref["logits"]) < 0.3 and rel(out["features"], ref["features"]) < 0.3


@pytest.mark.parametrize("symmetric", [True, False])
def test_qdq_is_int4_dequantize_and_ort_fuses_it_to_matmulnbits(fp32, tmp_path, symmetric):
    q, _ = quantize(fp32, format="qdq", symmetric=symmetric)
    onnx.checker.check_model(q)
    assert max(o.version for o in q.opset_import if o.domain in ("", "ai.onnx")) >= 21
    dqs = [n for n in q.graph.node if n.op_type == "DequantizeLinear"]
    assert len(dqs) == N_LAYERS
    assert all(onnx.helper.get_attribute_value(a) == 32 for n in dqs for a in n.attribute if a.name == "block_size")
    inits = {i.name: i for i in q.graph.initializer}
    assert {inits[n.input[0]].data_type for n in dqs} == {TensorProto.INT4 if symmetric else TensorProto.UINT4}
    optimized = tmp_path / "optimized.onnx"
    run(q, optimized=str(optimized))
    fused = ops(onnx.load(str(optimized)))
    assert fused.count("MatMulNBits") == N_LAYERS and "DequantizeLinear" not in fused


@pytest.mark.parametrize(("symmetric", "block_size", "level"), [(True, 32, 0), (False, 64, 4), (True, 128, 4)])
def test_both_formats_give_the_same_outputs(fp32, symmetric, block_size, level):
    # block 128 > K = 64: a single, padded tail block per column
    config = dict(symmetric=symmetric, block_size=block_size, algo="mse")
    nbits, _ = quantize(fp32, format="matmulnbits", accuracy_level=level, **config)
    qdq, _ = quantize(fp32, format="qdq", **config)
    a, b = run(nbits), run(qdq, qdq_level=level)
    for name in ("logits", "features"):
        np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-5)


def test_quantized_head_is_what_the_metadata_points_to(fp32):
    q, record = quantize(fp32, algo="mse")
    assert record["head"] == "int4"
    weight, bias = read_head(q)
    original_weight, original_bias = read_head(fp32)
    assert not np.array_equal(weight, original_weight)
    np.testing.assert_array_equal(bias, original_bias)
    out = run(q)
    np.testing.assert_allclose(out["features"] @ weight.T + bias, out["logits"], rtol=1e-4, atol=1e-4)


def test_keep_head_and_int8_patch_embedding(fp32):
    q, record = quantize(fp32, keep_head=True, patch_embed_int8=True)
    assert ops(q).count("MatMulNBits") == N_LAYERS - 1 and "Gemm" in ops(q)
    assert record["head"] == "float" and record["patch_embed"] == "int8"
    assert len(record["float_nodes"]) == 1 and len(record["int8_nodes"]) == 1
    np.testing.assert_array_equal(read_head(q)[0], read_head(fp32)[0])
    conv = next(n for n in q.graph.node if n.op_type == "Conv")
    producer = next(n for n in q.graph.node if conv.input[1] in n.output)
    assert producer.op_type == "DequantizeLinear"
    inits = {i.name: i for i in q.graph.initializer}
    assert inits[producer.input[0]].data_type == TensorProto.INT8
    used = {name for n in q.graph.node for name in n.input}
    head_copies = {i.name for i in q.graph.initializer if i.name.startswith("vitqbench.head.")}
    assert set(inits) - used <= head_copies  # the float Conv weight is gone, not carried along unused
    assert rel(run(q)["logits"], run(fp32)["logits"]) < 0.3


def test_rtn_matches_onnxruntime_matmulnbits_quantizer(fp32):
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    copy = onnx.ModelProto()
    copy.CopyFrom(fp32)  # ORT's quantizer rewrites the model it is given in place
    theirs = MatMulNBitsQuantizer(copy, algo_config=DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=True))
    theirs.process()
    ours, _ = quantize(fp32, algo="rtn", block_size=32, symmetric=True, keep_head=True)  # ORT skips Gemm
    a, b = run(ours), run(theirs.model.model)
    for name in ("logits", "features"):
        np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-5)


def test_gptq_beats_rtn_on_its_calibration_data(fp32):
    ref = run(fp32)
    rtn, _ = quantize(fp32, algo="rtn")
    gptq, record = quantize_int4(fp32, Int4Config(algo="gptq", accuracy_level=0, progress=False), [X[:3], X[3:]])
    assert record["gptq"]["calib_images"] == 6
    assert rel(run(gptq)["logits"], ref["logits"]) < rel(run(rtn)["logits"], ref["logits"])


def test_metadata_survives(fp32):
    q, _ = quantize(fp32)
    assert get_metadata(q).timm_name == get_metadata(fp32).timm_name
    assert [o.name for o in q.graph.output] == [o.name for o in fp32.graph.output]


@pytest.mark.parametrize(
    ("config", "calib", "message"),
    [
        (dict(algo="gptq"), None, "needs calibration"),
        (dict(algo="awq"), None, "unknown 4-bit algorithm"),
        (dict(format="gguf"), None, "unknown 4-bit format"),
        (dict(block_size=100), None, "block size 100"),
        (dict(accuracy_level=7), None, "accuracy-level"),
    ],
)
def test_bad_options_are_one_clear_error(fp32, config, calib, message):
    with pytest.raises(VitqbenchError, match=message):
        quantize_int4(fp32, Int4Config(progress=False, **config), calib)


def test_gptq_with_empty_calibration_is_an_error(fp32):
    with pytest.raises(VitqbenchError, match="yielded none"):
        quantize_int4(fp32, Int4Config(algo="gptq", progress=False), [])


def test_already_quantized_input_is_refused(fp32):
    q, _ = quantize(fp32)
    with pytest.raises(VitqbenchError, match="already quantized"):
        quantize(q)


def handmade(k: int, n: int) -> tuple[onnx.ModelProto, np.ndarray, np.ndarray, np.ndarray]:
    """x [B, K] -> MatMul(W1 [K, N]) -> Gemm(W2 [N, K] transposed, bias) -> y [B, K]."""
    rng = np.random.default_rng(1)
    w1 = rng.standard_normal((k, n)).astype(np.float32)
    w2 = rng.standard_normal((k, n)).astype(np.float32)  # Gemm with transB: stored [N_out=k, K_in=n]
    bias = rng.standard_normal(k).astype(np.float32)
    h = onnx.helper
    graph = h.make_graph(
        [
            h.make_node("MatMul", ["x", "w1"], ["hidden"], name="mm"),
            h.make_node("Gemm", ["hidden", "w2", "b2"], ["y"], name="gemm", transB=1),
        ],
        "handmade",
        [h.make_tensor_value_info("x", TensorProto.FLOAT, [None, k])],
        [h.make_tensor_value_info("y", TensorProto.FLOAT, [None, k])],
        [onnx.numpy_helper.from_array(a, name) for a, name in ((w1, "w1"), (w2, "w2"), (bias, "b2"))],
    )
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 18)])
    return model, w1, w2, bias


@pytest.mark.parametrize("fmt", ["matmulnbits", "qdq"])
@pytest.mark.parametrize("symmetric", [True, False])
def test_tail_blocks_gemm_transb_and_bias_compute_the_dequantized_product(fmt, symmetric):
    from vitqbench.quant.int4_blockwise import quantize_weight

    k, n = 100, 48  # K = 100 (mm) and 48 (gemm): neither is a multiple of the block size 32
    model, w1, w2, bias = handmade(k, n)
    q, record = quantize_int4(
        model, Int4Config(format=fmt, symmetric=symmetric, algo="rtn", block_size=32, accuracy_level=0, progress=False)
    )
    assert record["quantized_nodes"] == ["mm", "gemm"] and find_layers(q.graph) == []
    x = np.random.default_rng(2).standard_normal((5, k)).astype(np.float32)
    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
    y = ort.InferenceSession(q.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    d1 = quantize_weight(w1, 32, symmetric).dequantize()
    d2 = quantize_weight(w2.T, 32, symmetric).dequantize()
    np.testing.assert_allclose(y, (x @ d1) @ d2 + bias, rtol=1e-4, atol=1e-3)
