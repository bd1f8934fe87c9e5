"""The 8-bit path on the tiny random-init ViT: QDQ graph, outputs, metadata record, effective head."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from PIL import Image

from vitqbench.files import sha256_file
from vitqbench.metadata import HEAD_WEIGHT, get_metadata, load_onnx, read_head, read_metadata
from vitqbench.quant import CalibConfig, Int8Config, quantize_model
from vitqbench.quant.calibration import BatchReader, calibration_set
from vitqbench.quant.int8 import exclusion_groups
from vitqbench.runtime import create_session

CALIB_IMAGES = 16


@pytest.fixture(scope="module")
def calib_folder(tmp_path_factory):
    """Smooth random RGB images (not white noise) so activations look a little like real ones."""
    folder = tmp_path_factory.mktemp("calib")
    rng = np.random.default_rng(0)
    for i in range(CALIB_IMAGES):
        small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        Image.fromarray(small).resize((48, 48), Image.BILINEAR).save(folder / f"img{i:02d}.png")
    return folder


@pytest.fixture(scope="module")
def int8_model(tiny_onnx, calib_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "tiny.int8.onnx"
    quantize_model(tiny_onnx, out, "w8a8", calib=CalibConfig(str(calib_folder), size=12, seed=3), progress=False)
    return out


def _images(model_path, folder, n=8):
    from vitqbench.data import iter_batches, load_dataset

    meta = read_metadata(model_path)
    batch = next(iter_batches(load_dataset(str(folder)), meta.data_config, batch_size=n, progress=False))
    return batch.images


def _run(path, images):
    return create_session(path, threads=1).run(["logits", "features"], {"pixel_values": images})


def test_int8_graph_has_qdq_pairs_on_every_weight(int8_model):
    model = load_onnx(int8_model)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") > 0 and ops.count("DequantizeLinear") > ops.count("QuantizeLinear")
    producers = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name: i for i in model.graph.initializer}
    compute = [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm", "Conv")]
    int8_weights = 0
    for node in compute:
        # Every input (activations and weights) of a quantized compute node comes out of a DQ.
        assert all(producers[i].op_type == "DequantizeLinear" for i in node.input[:2]), node.name
        for dq in (producers[i] for i in node.input[:2]):
            if dq.input[0] in inits:
                assert inits[dq.input[0]].data_type == onnx.TensorProto.INT8
                int8_weights += 1
    # All but the two activation x activation MatMuls per block (q @ k^T, attn @ v) hold int8 weights.
    assert int8_weights == len(compute) - 2 * 2


def test_int8_outputs_preserved(int8_model, tiny_onnx, calib_folder):
    images = _images(tiny_onnx, calib_folder)
    (ref_logits, ref_features), (logits, features) = _run(tiny_onnx, images), _run(int8_model, images)
    assert logits.shape == ref_logits.shape == (len(images), 10)
    assert features.shape == ref_features.shape == (len(images), 64)
    # A random-init ViT is fragile under int8 (measured: logits correlate 0.95 with fp32); real
    # fidelity is measured on a trained model in benchmarks/quant_int8_fidelity.py.
    for got, ref in ((logits, ref_logits), (features, ref_features)):
        assert np.isfinite(got).all()
        assert np.corrcoef(got.ravel(), ref.ravel())[0, 1] > 0.85


def test_int8_metadata_record(int8_model, tiny_onnx, calib_folder):
    meta = read_metadata(int8_model)
    parent = read_metadata(tiny_onnx)
    record = meta.quantization
    assert meta.precision == "w8a8" and record["bits"] == 8
    assert record["algorithm"] == "ort_static_qdq" and record["calib_method"] == "minmax"
    assert record["per_channel"] is True and record["activation_type"] == "uint8"
    assert record["calibration"]["size"] == 12 and record["calibration"]["available"] == CALIB_IMAGES
    assert record["calibration"]["data"] == str(calib_folder) and record["seed"] == 3
    assert record["parent"]["sha256"] == sha256_file(tiny_onnx)
    assert record["float_nodes"] == [] and record["head_quantized"] is True
    assert sorted(record["float_outputs"]) == ["features", "logits"]
    assert meta.data_config == parent.data_config and meta.outputs == parent.outputs


def _assert_head_reproduces_logits(int8_model, images, weight, bias):
    """The head read back from the metadata computes the QDQ model's logits from its 8-bit rounded features.

    The reference is the QDQ graph as written (ORT graph optimizations off): with them on, ORT runs the head
    as an integer GEMM whose u8s8 kernel may saturate on some CPUs, a runtime effect, not the file's.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(str(int8_model), options, providers=["CPUExecutionProvider"])
    logits, features = session.run(["logits", "features"], {"pixel_values": images})
    model = load_onnx(int8_model)
    producers = {o: n for n in model.graph.node for o in n.output}
    head = producers["logits"]
    quantize = producers[producers[head.input[0]].input[0]]
    assert quantize.op_type == "QuantizeLinear" and quantize.input[0] == "features"
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    scale, zero = inits[quantize.input[1]], inits[quantize.input[2]].astype(np.float32)
    rounded = (np.clip(np.round(features / scale) + zero, 0, 255) - zero) * scale
    np.testing.assert_allclose(rounded @ weight.T + bias, logits, atol=1e-5)

def test_int8_head_is_the_dequantized_head(int8_model, tiny_onnx, calib_folder):
    meta = read_metadata(int8_model)
    assert meta.head.weight == HEAD_WEIGHT
    weight, bias = read_head(int8_model)
    float_weight, float_bias = read_head(tiny_onnx)
    assert weight.shape == float_weight.shape and not np.array_equal(weight, float_weight)
    # Per-channel symmetric int8: each row sits on its own grid of step max|row| / 127 (/ 64 with reduce_range).
    levels = 64 if meta.quantization["reduce_range"] else 127
    step = np.abs(float_weight).max(axis=1, keepdims=True) / levels
    np.testing.assert_allclose(weight / step, np.round(weight / step), atol=1e-3)
    assert np.all(np.abs(weight - float_weight) <= step / 2 + 1e-6)
    np.testing.assert_allclose(bias, float_bias, atol=1e-3)
    # The attached head reproduces the int8 model's float logits from its (8-bit rounded) features.
    _assert_head_reproduces_logits(int8_model, _images(tiny_onnx, calib_folder), weight, bias)


def test_exclude_head_keeps_float_head(tiny_onnx, calib_folder, tmp_path):
    out = tmp_path / "nohead.onnx"
    config = Int8Config(exclude=("head", "Softmax"))
    quantize_model(tiny_onnx, out, config, calib=CalibConfig(str(calib_folder), size=8), progress=False)
    model = load_onnx(out)
    meta, parent = get_metadata(model), read_metadata(tiny_onnx)
    assert meta.head == parent.head
    for got, want in zip(read_head(model), read_head(tiny_onnx), strict=True):
        np.testing.assert_array_equal(got, want)
    softmax = [n.name for n in model.graph.node if n.op_type == "Softmax"]
    assert set(softmax) < set(meta.quantization["float_nodes"])
    head_node = next(n for n in model.graph.node if meta.head.weight in n.input)
    assert head_node.name in meta.quantization["float_nodes"]
    # Excluded means float weights and float compute (its input may still arrive through Q/DQ).
    float_inits = {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    assert set(head_node.input[1:]) <= float_inits


def test_exclusion_groups_find_the_vit_parts(tiny_onnx):
    model = load_onnx(tiny_onnx)
    groups = exclusion_groups(model, get_metadata(model))
    depth = 2
    assert len(groups["head"]) == 1 and len(groups["patch_embed"]) == 1
    assert len(groups["attention"]) == 2 * depth  # q @ k^T and attn @ v per block
    assert len(groups["post_gelu"]) == depth  # fc2 per block
    assert not set(groups["attention"]) & set(groups["post_gelu"])


def test_calibration_subset_is_seeded(tiny_onnx, calib_folder):
    data_config = read_metadata(tiny_onnx).data_config
    first = calibration_set(CalibConfig(str(calib_folder), size=8, seed=0), data_config).indices
    again = calibration_set(CalibConfig(str(calib_folder), size=8, seed=0), data_config).indices
    other = calibration_set(CalibConfig(str(calib_folder), size=8, seed=1), data_config).indices
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert len(np.unique(first)) == 8 and first.max() < CALIB_IMAGES and np.all(np.diff(first) > 0)


def test_batch_reader_serves_one_batch_per_window(tiny_onnx, calib_folder):
    """The loop quantize_static runs with CalibStridedMinMax=1 sees every image exactly once."""
    data_config = read_metadata(tiny_onnx).data_config
    calib = calibration_set(CalibConfig(str(calib_folder), size=10, batch_size=4), data_config)
    reader = BatchReader(calib, "pixel_values")
    assert len(reader) == 3
    sizes = []
    for start in range(len(reader)):
        reader.set_range(start, start + 1)
        window = list(iter(reader.get_next, None))
        assert len(window) == 1
        sizes.append(len(window[0]["pixel_values"]))
    assert sizes == [4, 4, 2] and reader.get_next() is None


def test_percentile_calibration_runs(tiny_onnx, calib_folder, tmp_path):
    out = tmp_path / "pct.onnx"
    config = Int8Config(calib_method="percentile", activation_type="int8", symmetric_activations=True)
    meta = quantize_model(tiny_onnx, out, config, calib=CalibConfig(str(calib_folder), size=8), progress=False)
    assert meta.quantization["calib_method"] == "percentile" and meta.quantization["percentile"] == 99.999
    zero_points = [numpy_helper.to_array(i) for i in load_onnx(out).graph.initializer if i.name.endswith("_zero_point")]
    # Symmetric int8 activations and weights: every zero point is 0 (int32 ones belong to biases).
    assert zero_points and all(zp.dtype in (np.int8, np.int32) and not zp.any() for zp in zero_points)


def test_matmul_add_head_is_read_back(tmp_path, calib_folder):
    """A head stored [D, C] for a MatMul with its bias in a separate Add (layout in_out)."""
    from onnx import TensorProto, helper

    from vitqbench.metadata import DataConfig, HeadRef, ModelMetadata, set_metadata

    rng = np.random.default_rng(0)
    w1 = rng.normal(0, 0.1, (3 * 8 * 8, 16)).astype(np.float32)
    head_w = rng.normal(0, 0.5, (16, 5)).astype(np.float32)
    head_b = rng.normal(0, 0.5, 5).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["pixel_values"], ["flat"], name="flatten"),
            helper.make_node("MatMul", ["flat", "w1"], ["features"], name="trunk"),
            helper.make_node("MatMul", ["features", "head_w"], ["scores"], name="head"),
            helper.make_node("Add", ["scores", "head_b"], ["logits"], name="head_bias"),
        ],
        "synthetic",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5]),
            helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 16]),
        ],
        [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (head_w, "head_w"), (head_b, "head_b"))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    meta = ModelMetadata(
        timm_name="synthetic", timm_tag=None, model_kwargs={}, source={"kind": "random", "seed": 0},
        num_classes=5, feature_dim=16,
        data_config=DataConfig((3, 8, 8), (0.5,) * 3, (0.5,) * 3, "bilinear", 1.0, "center"),
        head=HeadRef("head_w", "head_b", layout="in_out"), opset=18,
    )  # fmt: skip
    set_metadata(model, meta)
    fp32, int8 = tmp_path / "synthetic.onnx", tmp_path / "synthetic.int8.onnx"
    onnx.save(model, str(fp32))
    quantize_model(fp32, int8, "w8a8", calib=CalibConfig(str(calib_folder), size=8), progress=False)
    weight, bias = read_head(int8)
    assert read_metadata(int8).head.weight == HEAD_WEIGHT and weight.shape == (5, 16)
    step = np.abs(head_w.T).max(axis=1, keepdims=True) / 64  # 7-bit weights: reduce_range is the default
    assert np.all(np.abs(weight - head_w.T) <= step / 2 + 1e-6)
    # The bias went through the Add's 8-bit input quantization: close to, not equal to, the float bias.
    np.testing.assert_allclose(bias, head_b, atol=0.02)
    assert not np.allclose(bias, 0)
    _assert_head_reproduces_logits(int8, _images(fp32, calib_folder), weight, bias)

    # Excluding the head keeps its weight and its bias in float (here ORT's pre-processing fuses the
    # MatMul and the Add into one Gemm; unfused, both nodes are excluded).
    kept = tmp_path / "synthetic.kept.onnx"
    calib = CalibConfig(str(calib_folder), size=8)
    quantize_model(fp32, kept, Int8Config(exclude=("head",)), calib=calib, progress=False)
    assert read_metadata(kept).quantization["float_nodes"]
    weight, bias = read_head(kept)
    np.testing.assert_array_equal(weight, head_w.T)
    np.testing.assert_array_equal(bias, head_b)
