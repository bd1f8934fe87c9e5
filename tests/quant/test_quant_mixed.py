"""Units, mixed-precision plans and the ``mixed`` scheme on a small random ViT."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from vitqbench.errors import VitqbenchError
from vitqbench.files import sha256_file
from vitqbench.metadata import get_metadata, load_onnx, read_metadata
from vitqbench.quant import CalibConfig, quantize_model
from vitqbench.quant.calibration import calibration_set
from vitqbench.quant.mixed import (
    UNIT_PRECISIONS,
    MixedConfig,
    MixedPlan,
    named_copy,
    node_precisions,
    plan_from_metadata,
    unit_weight_bytes,
)
from vitqbench.quant.units import find_units
from vitqbench.quant.wxax import calibrate_wxax, write_wxax
from vitqbench.runtime import create_session


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    folder = tmp_path_factory.mktemp("calib")
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize((40, 40)).save(folder / f"{i}.png")
    return CalibConfig(str(folder), size=6)


@pytest.fixture(scope="module")
def model(tiny_onnx):
    onnx_model = load_onnx(tiny_onnx)
    return named_copy(onnx_model), get_metadata(onnx_model)


def _plan(tiny_onnx, granularity, units):
    return MixedPlan(sha256_file(tiny_onnx), granularity, units, MixedConfig().recipe(), model_file=tiny_onnx.name)


def _logits(model, x):
    if isinstance(model, bytes):
        import onnxruntime as ort

        session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    else:
        session = create_session(model, threads=1)
    return session.run(["logits"], {"pixel_values": x})[0]


def _x(tiny_onnx):
    shape = read_metadata(tiny_onnx).data_config.input_size
    return np.random.default_rng(1).normal(0, 0.5, (4, *shape)).astype(np.float32)


def test_units_are_named_like_timm_modules(model):
    onnx_model, meta = model
    blocks = find_units(onnx_model, meta, "block")
    assert [u.name for u in blocks] == ["patch_embed", "blocks.0", "blocks.1", "head"]
    assert [len(u.nodes) for u in blocks] == [1, 6, 6, 1]
    layers = [u.name for u in find_units(onnx_model, meta, "layer")]
    assert layers[:7] == [
        "patch_embed",
        "blocks.0.attn.qkv",
        "blocks.0.attn.matmul_qk",
        "blocks.0.attn.matmul_av",
        "blocks.0.attn.proj",
        "blocks.0.mlp.fc1",
        "blocks.0.mlp.fc2",
    ]
    assert len(layers) == 14 and layers[-1] == "head"
    with pytest.raises(VitqbenchError, match="granularity"):
        find_units(onnx_model, meta, "head")


@pytest.mark.parametrize("unit", ["blocks.0.attn.qkv", "blocks.1.attn.matmul_qk", "blocks.1.mlp.fc2", "head"])
def test_quantizing_one_unit_changes_only_its_nodes(tiny_onnx, calib, tmp_path, unit, model):
    onnx_model, meta = model
    nodes = {u.name: set(u.nodes) for u in find_units(onnx_model, meta, "layer")}
    out = tmp_path / "one.onnx"
    quantize_model(tiny_onnx, out, _plan(tiny_onnx, "layer", {unit: "w4a4"}).scheme(), calib, progress=False)
    graph = load_onnx(out).graph
    producers = {o: n for n in graph.node for o in n.output}
    fed_by_dq = {
        n.name
        for n in graph.node
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear")
        and any(producers.get(i) is not None and producers[i].op_type == "DequantizeLinear" for i in n.input)
    }
    assert fed_by_dq == nodes[unit]


def test_a_plan_of_w4a4_everywhere_writes_the_w4a4_scheme_graph(tiny_onnx, calib, tmp_path, model):
    onnx_model, meta = model
    plan = _plan(tiny_onnx, "block", {u.name: "w4a4" for u in find_units(onnx_model, meta, "block")})
    quantize_model(tiny_onnx, tmp_path / "mixed.onnx", plan.scheme(), calib, progress=False)
    quantize_model(tiny_onnx, tmp_path / "w4a4.onnx", "w4a4", calib, progress=False)
    a, b = load_onnx(tmp_path / "mixed.onnx"), load_onnx(tmp_path / "w4a4.onnx")
    assert a.graph.SerializeToString() == b.graph.SerializeToString()


def test_plan_round_trips_through_quantize_and_metadata(tiny_onnx, calib, tmp_path):
    plan = _plan(tiny_onnx, "layer", {"blocks.0.attn.qkv": "w8a8", "blocks.1.mlp.fc1": "w4", "head": "w4a8"})
    plan.save(tmp_path / "plan.json")
    loaded = MixedPlan.load(tmp_path / "plan.json")
    assert loaded.hash == plan.hash and loaded.units == plan.units
    meta = quantize_model(tiny_onnx, tmp_path / "m.onnx", loaded.scheme(), calib, progress=False)
    back = plan_from_metadata(read_metadata(tmp_path / "m.onnx"))
    assert (back.units, back.granularity, back.recipe, back.model_sha256) == (
        plan.units,
        plan.granularity,
        plan.recipe,
        plan.model_sha256,
    )
    assert back.hash == plan.hash and meta.precision == plan.label == f"mixed@{plan.hash[:8]}"
    assert meta.quantization["units"]["blocks.1.mlp.fc1"] == "w4"


def test_one_unit_from_a_shared_calibration_equals_quantizing_it_alone(tiny_onnx, calib, tmp_path, model):
    """Sensitivity writes every unit from one calibration; each must equal that unit's own mixed model."""
    onnx_model, meta = model
    units = find_units(onnx_model, meta, "layer")
    config = MixedConfig(granularity="layer", units={u.name: "w4a4" for u in units})
    calib_set = calibration_set(calib, meta.data_config, progress=False)
    shared = calibrate_wxax(onnx_model, meta, config, calib_set, node_precisions(units, config.units))
    x = _x(tiny_onnx)
    for unit in ("blocks.0.attn.qkv", "blocks.1.mlp.fc2"):
        alone = tmp_path / f"{unit}.onnx"
        quantize_model(tiny_onnx, alone, _plan(tiny_onnx, "layer", {unit: "w4a4"}).scheme(), calib, progress=False)
        written, _ = write_wxax(shared, meta, config, node_precisions(units, {unit: "w4a4"}))
        np.testing.assert_allclose(_logits(written.SerializeToString(), x), _logits(alone, x), atol=1e-5)


def test_weight_bytes_per_unit_and_precision(model):
    onnx_model, meta = model
    units = find_units(onnx_model, meta, "layer")
    sizes = unit_weight_bytes(onnx_model, meta, units)
    assert set(sizes["blocks.0.mlp.fc1"]) == set(UNIT_PRECISIONS)
    fc1 = sizes["blocks.0.mlp.fc1"]  # 64 x 256
    assert fc1["fp32"] == 4 * 64 * 256 and fc1["w8a8"] == 64 * 256 + 4 * 256 and fc1["w4a4"] == 64 * 128 + 4 * 256
    assert sizes["blocks.0.attn.matmul_qk"]["fp32"] == 0
    assert sizes["head"]["w4a4"] == sizes["head"]["w8a8"]  # the head stays 8-bit (first_last_8bit)


def test_bad_plans_are_one_line(tiny_onnx, calib, tmp_path, run_cli):
    other = _plan(tiny_onnx, "block", {"blocks.0": "w4a4"})
    other.model_sha256 = "0" * 64
    other.save(tmp_path / "other.json")
    result = run_cli(
        "quantize",
        tiny_onnx,
        "--plan",
        tmp_path / "other.json",
        "-o",
        tmp_path / "o.onnx",
        "--calib",
        calib.data,
        "--calib-size",
        6,
    )
    assert result.code != 0 and "made for another model" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "o.onnx").exists()
    _plan(tiny_onnx, "block", {"blocks.9": "w4a4"}).save(tmp_path / "unit.json")
    result = run_cli(
        "quantize",
        tiny_onnx,
        "--plan",
        tmp_path / "unit.json",
        "-o",
        tmp_path / "o.onnx",
        "--calib",
        calib.data,
        "--calib-size",
        6,
    )
    assert result.code != 0 and "blocks.9" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    data = json.loads((tmp_path / "unit.json").read_text())
    data["units"] = {"blocks.0": "w3a3"}
    (tmp_path / "bad.json").write_text(json.dumps(data))
    result = run_cli(
        "quantize",
        tiny_onnx,
        "--plan",
        tmp_path / "bad.json",
        "-o",
        tmp_path / "o.onnx",
        "--calib",
        calib.data,
        "--calib-size",
        6,
    )
    assert result.code != 0 and "w3a3" in result.stderr
    assert not (tmp_path / "o.onnx").exists()


def test_a_plan_applied_by_the_cli_names_its_units(tiny_onnx, calib, tmp_path, run_cli):
    plan = _plan(tiny_onnx, "block", {"blocks.0": "w4a4", "blocks.1": "w8a8"})
    plan.save(tmp_path / "plan.json")
    result = run_cli(
        "quantize",
        tiny_onnx,
        "--plan",
        tmp_path / "plan.json",
        "-o",
        tmp_path / "m.onnx",
        "--calib",
        calib.data,
        "--calib-size",
        6,
    )
    assert result.code == 0, result.stderr
    assert plan.label in result.stdout
    record = read_metadata(tmp_path / "m.onnx").quantization
    assert record["units"] == plan.units and record["plan_hash"] == plan.hash
