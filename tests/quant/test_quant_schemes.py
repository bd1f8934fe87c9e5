"""The scheme registry and every registered scheme on a small random ViT: graph, outputs, record, bad input."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from vitqbench.errors import VitqbenchError
from vitqbench.metadata import load_onnx, read_metadata
from vitqbench.quant import SCHEMES, CalibConfig, QuantRecord, SchemeConfig, create_scheme, quantize_model
from vitqbench.quant.schemes import register_scheme
from vitqbench.runtime import create_session

ALL = ("w8a8", "w8a8-dynamic", "w4", "w4a8", "w4a4", "w6a6", "fp16")


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    folder = tmp_path_factory.mktemp("calib")
    rng = np.random.default_rng(0)
    for i in range(6):
        small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        Image.fromarray(small).resize((40, 40), Image.BILINEAR).save(folder / f"{i}.png")
    return CalibConfig(str(folder), size=6)


@pytest.fixture(scope="module")
def quantized(tiny_onnx, calib, tmp_path_factory):
    folder = tmp_path_factory.mktemp("schemes")
    return {
        s: (quantize_model(tiny_onnx, folder / f"{s}.onnx", s, calib, progress=False), folder / f"{s}.onnx")
        for s in ALL
    }


def _outputs(path, x):
    return create_session(path, threads=1).run(["logits", "features"], {"pixel_values": x})


def _inputs(path):
    meta = read_metadata(path)
    return np.random.default_rng(1).normal(0, 0.5, (4, *meta.data_config.input_size)).astype(np.float32)


def _ops(path) -> list[str]:
    return [n.op_type for n in load_onnx(path).graph.node]


def _zero_point_types(path) -> set[int]:
    model = load_onnx(path)
    inits = {i.name: i for i in model.graph.initializer}
    return {inits[n.input[2]].data_type for n in model.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2}


@pytest.mark.parametrize("scheme", ALL)
def test_scheme_record_and_outputs(quantized, tiny_onnx, scheme):
    meta, path = quantized[scheme]
    record = meta.quantization
    assert meta.precision == scheme and record["scheme"] == scheme
    assert record["execution"] in ("integer-kernels", "emulated", "float16")
    assert {"weight_bits", "activation_bits", "quantized_inputs", "algorithm"} <= set(record)
    x = _inputs(tiny_onnx)
    (ref, _), (out, features) = _outputs(tiny_onnx, x), _outputs(path, x)
    assert out.shape == ref.shape and np.isfinite(out).all() and np.isfinite(features).all()
    # A random-init model is fragile at 4 bits; what must hold is that the logits stay related.
    bound = {"fp16": 0.01, "w8a8-dynamic": 0.1, "w8a8": 0.35}.get(scheme, 0.9)
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < bound


@pytest.mark.parametrize("scheme", ALL)
def test_every_scheme_keeps_a_readable_head_close_to_the_float_one(quantized, tiny_onnx, scheme):
    """ViM and ReAct read the head of the model they score: each scheme must leave one (its effective head)."""
    from vitqbench.metadata import read_head

    (w, b), (qw, qb) = read_head(tiny_onnx), read_head(quantized[scheme][1])
    assert qw.shape == w.shape and qb.shape == b.shape
    assert np.linalg.norm(qw - w) / np.linalg.norm(w) < 0.2


def test_node_types_and_bit_widths(quantized):
    path = {s: quantized[s][1] for s in ALL}
    assert {"QuantizeLinear", "DequantizeLinear"} <= set(_ops(path["w8a8"]))
    assert _zero_point_types(path["w8a8"]) == {TensorProto.UINT8}
    assert "MatMulInteger" in _ops(path["w8a8-dynamic"]) and "DynamicQuantizeLinear" in _ops(path["w8a8-dynamic"])
    assert "MatMulNBits" in _ops(path["w4"])
    # w4a4: 4-bit activations (UINT4) with the patch embedding and head inputs at 8 bits.
    assert _zero_point_types(path["w4a4"]) == {TensorProto.UINT4, TensorProto.UINT8}
    assert _zero_point_types(path["w4a8"]) == {TensorProto.UINT8}
    weights4 = [i for i in load_onnx(path["w4a8"]).graph.initializer if i.data_type == TensorProto.INT4]
    assert weights4
    # w6a6: 8-bit containers with a Clip in front, so only 64 levels occur.
    assert "Clip" in _ops(path["w6a6"])
    model = load_onnx(path["w6a6"])
    eight = tuple(quantized["w6a6"][0].quantization["bits_8_layers"])  # patch embedding and head
    codes = [
        numpy_helper.to_array(i)
        for i in model.graph.initializer
        if i.name.endswith(".wq") and not i.name.startswith(eight)
    ]
    assert codes and max(int(np.abs(c.astype(int)).max()) for c in codes) <= 32
    assert quantized["w4a4"][0].quantization["execution"] == "emulated"
    assert quantized["w8a8"][0].quantization["execution"] == "integer-kernels"
    assert quantized["w4"][0].quantization["execution"] == "integer-kernels"


def test_fp16_is_cast_free_inside_with_float32_io(quantized):
    model = load_onnx(quantized["fp16"][1])
    assert all(v.type.tensor_type.elem_type == TensorProto.FLOAT for v in [*model.graph.input, *model.graph.output])
    io = {v.name for v in [*model.graph.input, *model.graph.output]}
    casts = [n for n in model.graph.node if n.op_type == "Cast"]
    assert casts and all(n.input[0] in io or n.output[0] in io for n in casts)
    assert any(i.data_type == TensorProto.FLOAT16 for i in model.graph.initializer)
    assert quantized["fp16"][0].quantization["execution"] == "float16"


# ------------------------------------------------------------------------------------------ registry
@dataclass
class _Rounded(SchemeConfig):
    """A test-only scheme: weights rounded to a grid of ``step`` (plain float graph)."""

    step: float = 0.01
    name: ClassVar[str] = "test-rounded"

    @property
    def needs_calibration(self) -> bool:
        return False

    def quantize(self, model, meta, calib, progress=True):
        out = onnx.ModelProto()
        out.CopyFrom(model)
        for init in out.graph.initializer:
            if init.data_type == TensorProto.FLOAT:
                rounded = np.round(numpy_helper.to_array(init) / self.step) * self.step
                init.CopyFrom(numpy_helper.from_array(rounded.astype(np.float32), init.name))
        return out, QuantRecord(self.name, 8, None, "weights", "emulated", "round", {"step": self.step})


@pytest.fixture
def test_scheme():
    register_scheme(_Rounded)
    yield
    SCHEMES.pop(_Rounded.name)


def test_a_scheme_registered_here_works_through_quantize_model(test_scheme, tiny_onnx, tmp_path):
    meta = quantize_model(tiny_onnx, tmp_path / "r.onnx", create_scheme("test-rounded", step=0.05), progress=False)
    assert meta.precision == "test-rounded" and meta.quantization["step"] == 0.05
    assert meta.quantization["execution"] == "emulated" and meta.quantization["activation_bits"] is None
    x = _inputs(tiny_onnx)
    assert np.isfinite(_outputs(tmp_path / "r.onnx", x)[0]).all()


def test_registry_errors_name_the_choices():
    with pytest.raises(VitqbenchError, match="unknown scheme 'w3a3'; choose from w8a8, .*w4a4"):
        create_scheme("w3a3")
    with pytest.raises(VitqbenchError, match=r"option\(s\) block_size do not apply to scheme 'w8a8' \(its options: "):
        create_scheme("w8a8", block_size=32)
    assert create_scheme("w4").needs_calibration is False  # rtn until data are given
    assert create_scheme("w4").resolved(True).needs_calibration is True  # gptq with data


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--scheme", "w3a3"], "unknown scheme 'w3a3'; choose from"),
        (
            ["--scheme", "w8a8-dynamic", "--algo", "rtn", "--alpha", "0.5"],
            "--algo, --alpha do not apply to --scheme w8a8-dynamic",
        ),
        (["--scheme", "w4a4"], "scheme w4a4 needs calibration images"),
        (["--scheme", "w4", "--bits", "8"], "--bits 8 is --scheme w8a8"),
        (["--scheme", "w4a4", "--calib-method", "entropy", "--calib", "digits"], "act_range 'entropy' is not one of"),
        ([], "give --scheme NAME"),
    ],
)
def test_bad_scheme_input_is_one_line(run_cli, tiny_onnx, tmp_path, args, message):
    out = tmp_path / "out.onnx"
    result = run_cli("quantize", tiny_onnx, "-o", out, *args)
    assert result.code == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not out.exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize("second", ["fp16", "w4a4"])
def test_requantizing_is_refused(run_cli, quantized, tmp_path, second):
    out = tmp_path / "again.onnx"
    result = run_cli("quantize", quantized["fp16"][1], "--scheme", second, "--calib", "digits", "-o", out)
    assert result.code == 2 and "already quantized (fp16)" in result.stderr and not out.exists()


def test_four_bit_activation_round_trip_is_exact_on_grid_values():
    from vitqbench.quant.int4_graph import NameMaker
    from vitqbench.quant.wxax import ActSpec, _qdq_nodes, fake_quant, qparams

    graph = helper.make_graph([], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])], [], [])
    spec = ActSpec(4)
    nodes, out = _qdq_nodes("x", spec, -0.7, 2.3, graph, NameMaker(graph))
    graph.node.extend(nodes)
    graph.output.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, [None]))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    scale, zero = qparams(-0.7, 2.3, 4, False)
    grid = ((np.arange(16) - zero) * np.float32(scale)).astype(np.float32)
    session = __import__("onnxruntime").InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(session.run(None, {"x": grid})[0], grid)
    # Off-grid values land on the grid and saturate at its ends, as our numpy twin says.
    x = np.linspace(-2, 4, 101).astype(np.float32)
    np.testing.assert_array_equal(session.run(None, {"x": x})[0], fake_quant(x, scale, zero, 4, False))


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_layernorm_reparameterization_leaves_the_float_model_unchanged(tiny_onnx, alpha):
    from vitqbench.quant.reparam import find_sites, reparameterize
    from vitqbench.quant.wxax import _channel_ranges

    model = load_onnx(tiny_onnx)
    x = _inputs(tiny_onnx)
    sites = find_sites(model)
    assert len(sites) == 4  # norm1 and norm2 of both blocks; the final norm feeds the pooling, not a Linear
    ranges = _channel_ranges(model, [s.output for s in sites], [x], None)
    reparam, done = reparameterize(model, ranges, alpha)
    assert len(done) == 4
    session = __import__("onnxruntime").InferenceSession(
        reparam.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    logits, features = session.run(["logits", "features"], {"pixel_values": x})
    ref_logits, ref_features = _outputs(tiny_onnx, x)
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(features, ref_features, rtol=1e-4, atol=1e-4)
    # ...while the post-LayerNorm channels now share one range (alpha 1: equal spans).
    new = _channel_ranges(reparam, [s.output for s in find_sites(reparam)], [x], None)
    spans = [hi - lo for lo, hi in new.values()]
    if alpha == 1.0:
        assert all(np.ptp(s) / s.mean() < 1e-3 for s in spans)


def test_bench_marks_emulated_models(quantized):
    from vitqbench.bench.results import EMULATED_NOTE, table
    from vitqbench.bench.runner import BenchSettings, _record, _Slot
    from vitqbench.bench.targets import inspect_onnx

    records = [_record(_Slot(inspect_onnx(quantized[s][1]), None), 1, BenchSettings()) for s in ("w4a4", "w8a8")]
    assert [r.execution for r in records] == ["emulated", "integer-kernels"]
    assert [r.note for r in records] == [EMULATED_NOTE, None]
    _, rows = table(records)
    assert rows[0][1] == f"w4a4 ({EMULATED_NOTE})" and rows[1][1] == "w8a8"


@pytest.mark.parametrize("scheme", ["fp32", *ALL])
def test_the_optimized_graph_keeps_outputs_metadata_and_head(quantized, tiny_onnx, tmp_path, scheme):
    from vitqbench.metadata import read_head
    from vitqbench.quant.optimize import optimize_model

    source = tiny_onnx if scheme == "fp32" else quantized[scheme][1]
    out = tmp_path / "opt.onnx"
    meta = optimize_model(source, out, "extended")
    assert read_metadata(out) == meta and meta.optimization["level"] == "extended"
    assert meta.quantization == read_metadata(source).quantization and meta.precision == scheme
    x = _inputs(source)
    tol = 1e-3 if scheme == "fp16" else 1e-5  # float16 sums in another order once fused
    for want, got in zip(_outputs(source, x), _outputs(out, x), strict=True):
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
    for want, got in zip(read_head(source), read_head(out), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_optimized_w8a8_runs_integer_kernels_and_bad_input_is_one_line(quantized, tiny_onnx, tmp_path, run_cli):
    from clihelpers import one_line_error

    out = tmp_path / "w8a8.opt.onnx"
    assert run_cli("optimize", quantized["w8a8"][1], "-o", out, "--level", "all").code == 0
    ops = set(_ops(out))
    assert ops & {"QGemm", "QLinearMatMul", "MatMulIntegerToFloat"} and "MatMul" not in ops
    assert read_metadata(out).optimization["cpu"]  # level all may be tied to this CPU: the record says which
    one_line_error(run_cli("optimize", out, "-o", tmp_path / "again.onnx"), "already an optimized graph")
    one_line_error(run_cli("optimize", tiny_onnx, "-o", tmp_path / "x.onnx", "--level", "fast"), "unknown --level")
    model = load_onnx(tiny_onnx)  # an op no provider implements
    model.graph.node[0].domain = "com.example"
    model.opset_import.append(onnx.helper.make_opsetid("com.example", 1))
    alien = tmp_path / "alien.onnx"
    onnx.save(model, str(alien))
    one_line_error(run_cli("optimize", alien, "-o", tmp_path / "y.onnx"), "ONNX Runtime cannot optimize")
    assert not (tmp_path / "x.onnx").exists() and not (tmp_path / "y.onnx").exists()
