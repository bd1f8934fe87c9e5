"""Weight + activation schemes of our own (``w4a8``, ``w4a4``, ``w6a6``): the ViT-aware recipe on the ONNX graph.

A standard QDQ graph written in numpy: every quantized op input gets ``QuantizeLinear ->
DequantizeLinear`` (activations: per-tensor ranges from calibration; weights: per-output-channel
symmetric codes from rtn, mse or GPTQ). 4-bit values use ONNX's INT4/UINT4 types (opset 21); other
widths below 8 use 8-bit containers with a Clip in front, so only 2**bits levels occur. Each element
of the recipe is an option, measured in ``benchmarks/quant_schemes.py``:

- ``reparam`` (+ ``alpha``): post-LayerNorm channel reparameterization (``reparam.py``);
- ``softmax``: attention probabilities at 8 bits (``uint8``), at the activation width (``act``) or
  with a log2 quantizer (``log2``: emulated with float ops, no integer kernel takes it);
- ``gelu_asym``: post-GELU inputs of fc2 with asymmetric ranges (off: symmetric signed);
- ``act_range``: per-tensor activation ranges by ``minmax``, ``percentile`` or ``mse`` search;
- ``weight_algo``: ``rtn``, ``mse`` (clipping search) or ``gptq`` on the reparameterized weights;
- ``first_last_8bit``: patch embedding and classifier head at 8 bits (the literature's rule).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from vitqbench.errors import VitqbenchError
from vitqbench.metadata import ModelMetadata, attach_head, read_head
from vitqbench.quant.calibration import iter_activations
from vitqbench.quant.execution import execution_summary
from vitqbench.quant.int4_blockwise import BlockQuant, quantize_weight
from vitqbench.quant.int4_gptq import add_hessian, gptq_quantize
from vitqbench.quant.int4_graph import NameMaker, _int4_tensor, find_layers, set_opsets
from vitqbench.quant.int8 import _is_gelu_output, _name_nodes, _producers
from vitqbench.quant.reparam import find_sites, reparameterize
from vitqbench.quant.schemes import QUANTIZE_OPS, QuantRecord, SchemeConfig, register_scheme

ACT_RANGES = ("minmax", "percentile", "mse")
SOFTMAX_MODES = ("uint8", "act", "log2")
WEIGHT_ALGOS = ("rtn", "mse", "gptq")
# --quantize-ops all: the inputs of these ops too (residual Adds, LayerNorm, Softmax, GELU's arithmetic).
ALL_OPS = {"Add", "Mul", "Div", "Sub", "LayerNormalization", "Softmax", "Erf"}
SAMPLE = 1 << 20  # activation values kept per tensor (a seeded subsample) for percentile/mse ranges
MSE_GRID = np.linspace(1.0, 0.2, 41)


@dataclass
class WxAxConfig(SchemeConfig):
    """Options shared by the weight + activation schemes; the bit widths are the subclass's."""

    weight_algo: str = "gptq"
    act_range: str = "percentile"
    percentile: float = 99.99
    reparam: bool = True
    alpha: float = 0.5
    softmax: str = "uint8"
    gelu_asym: bool = True
    first_last_8bit: bool = True
    quantize_ops: str = "matmul"
    damp: float = 0.01
    threads: int | None = None

    weight_bits: ClassVar[int] = 4
    act_bits: ClassVar[int] = 4

    def check(self) -> None:
        for option, value, valid in (
            ("weight_algo", self.weight_algo, WEIGHT_ALGOS),
            ("act_range", self.act_range, ACT_RANGES),
            ("softmax", self.softmax, SOFTMAX_MODES),
            ("quantize_ops", self.quantize_ops, QUANTIZE_OPS),
        ):
            if value not in valid:
                raise VitqbenchError(f"{self.name}: {option} {value!r} is not one of {', '.join(valid)}")
        if not 0.0 <= self.alpha <= 1.0:
            raise VitqbenchError(f"{self.name}: alpha must be in [0, 1] (got {self.alpha})")
        if not 50.0 < self.percentile <= 100.0:
            raise VitqbenchError(f"{self.name}: percentile must be in (50, 100] (got {self.percentile})")

    def quantize(
        self, model: onnx.ModelProto, meta: ModelMetadata, calib: Any, progress: bool = True
    ) -> tuple[onnx.ModelProto, QuantRecord]:
        quantized, details = quantize_wxax(model, meta, self, calib)
        details.update(execution_summary(quantized))
        record = QuantRecord(
            scheme=self.name,
            weight_bits=self.weight_bits,
            activation_bits=self.act_bits,
            quantized_inputs=self.quantize_ops,
            execution=details.pop("execution"),
            algorithm=f"vitqbench_qdq_{self.weight_algo}",
            details=details,
        )
        return quantized, record


@register_scheme
@dataclass
class W4A4Config(WxAxConfig):
    name: ClassVar[str] = "w4a4"
    summary: ClassVar[str] = "int4 weights, 4-bit activations: the ViT-aware recipe (emulated on CPU)"


@register_scheme
@dataclass
class W4A8Config(WxAxConfig):
    act_range: str = "minmax"
    softmax: str = "act"
    act_bits: ClassVar[int] = 8
    name: ClassVar[str] = "w4a8"
    summary: ClassVar[str] = "int4 weights, uint8 activations (calibrated)"


@register_scheme
@dataclass
class W6A6Config(WxAxConfig):
    weight_bits: ClassVar[int] = 6
    act_bits: ClassVar[int] = 6
    name: ClassVar[str] = "w6a6"
    summary: ClassVar[str] = "6-bit levels inside 8-bit Q/DQ, weights and activations"


# ------------------------------------------------------------------------------------------ quantizers
@dataclass
class ActSpec:
    """How one activation tensor is quantized: ``bits`` wide, signed/symmetric or unsigned/asymmetric."""

    bits: int
    signed: bool = False
    fixed: tuple[float, float] | None = None  # a known range (softmax: [0, 1])
    log2: bool = False


@dataclass
class Stats:
    lo: float = math.inf
    hi: float = -math.inf
    samples: list[np.ndarray] = field(default_factory=list)

    def add(self, x: np.ndarray, keep: int, rng: np.random.Generator) -> None:
        flat = x.reshape(-1)
        self.lo, self.hi = min(self.lo, float(flat.min())), max(self.hi, float(flat.max()))
        self.samples.append(flat if flat.size <= keep else rng.choice(flat, keep, replace=False))


def qparams(lo: float, hi: float, bits: int, signed: bool) -> tuple[float, int]:
    """Per-tensor scale and zero point covering ``[lo, hi]`` (always containing 0)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if signed:
        scale = max(abs(lo), abs(hi)) / (2 ** (bits - 1) - 1)
        return (scale or 1.0), 0
    scale = (hi - lo) / (2**bits - 1)
    if scale == 0:
        return 1.0, 0
    return scale, int(np.clip(round(-lo / scale), 0, 2**bits - 1))


def fake_quant(x: np.ndarray, scale: float, zero: int, bits: int, signed: bool) -> np.ndarray:
    """What Q -> DQ computes: round half to even (ONNX QuantizeLinear), saturate, scale back."""
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    q = np.clip(np.rint(x / np.float32(scale)) + zero, lo, hi)
    return ((q - zero) * np.float32(scale)).astype(np.float32)


def act_range(stats: Stats, spec: ActSpec, method: str, percentile: float) -> tuple[float, float]:
    if spec.fixed is not None:
        return spec.fixed
    if method == "minmax":
        return stats.lo, stats.hi
    sample = np.concatenate(stats.samples).astype(np.float32)
    if method == "percentile":
        return float(np.percentile(sample, 100 - percentile)), float(np.percentile(sample, percentile))
    best, best_err = (stats.lo, stats.hi), math.inf
    for ratio in MSE_GRID:
        lo, hi = stats.lo * ratio, stats.hi * ratio
        scale, zero = qparams(lo, hi, spec.bits, spec.signed)
        err = float(np.mean(np.square(fake_quant(sample, scale, zero, spec.bits, spec.signed) - sample)))
        if err < best_err:
            best, best_err = (lo, hi), err
    return best


# ------------------------------------------------------------------------------------------- the plan
@dataclass
class Plan:
    """What to quantize: activation inputs (node name, input index) -> spec, and weight layers -> bits."""

    acts: dict[tuple[str, int], tuple[str, ActSpec]] = field(default_factory=dict)
    layers: dict[str, int] = field(default_factory=dict)  # MatMul/Gemm node name -> weight bits
    convs: dict[str, int] = field(default_factory=dict)  # Conv node name -> weight bits


# (weight bits, activation bits); None activation bits: weights only, activations stay float.
Precision = tuple[int, int | None]


def plan(
    model: onnx.ModelProto, meta: ModelMetadata, config: WxAxConfig, precisions: dict[str, Precision] | None = None
) -> Plan:
    """What ``config`` quantizes in ``model``: every MatMul/Gemm/Conv input at the scheme's widths, or
    with ``precisions`` (node name -> widths; a mixed-precision plan) only the nodes listed, at theirs."""
    graph = model.graph
    constants = {i.name for i in graph.initializer} | {
        o for n in graph.node if n.op_type == "Constant" for o in n.output
    }
    producers = _producers(graph)
    uniform: Precision = (config.weight_bits, config.act_bits)
    out = Plan()
    layers = find_layers(graph, meta)
    heads = {layer.node.name for layer in layers if layer.is_head}
    layer_names = {layer.node.name for layer in layers}
    float_tensors = _float_tensors(model) if precisions is None and config.quantize_ops == "all" else set()
    for node in graph.node:
        widths = uniform if precisions is None else precisions.get(node.name)
        if widths is None:
            continue
        weight_bits, act_bits = widths
        edge = config.first_last_8bit and (node.name in heads or node.op_type == "Conv")
        if node.name in layer_names:
            out.layers[node.name] = 8 if edge else weight_bits
            if act_bits is None:
                continue
            if edge:
                spec = ActSpec(8)
            elif _is_gelu_output(node.input[0], producers):
                spec = ActSpec(act_bits, signed=not config.gelu_asym)
            else:
                spec = ActSpec(act_bits)
            out.acts[(node.name, 0)] = (node.input[0], spec)
        elif node.op_type == "Conv" and len(node.input) > 1 and node.input[1] in constants:
            out.convs[node.name] = 8 if edge else weight_bits
            if act_bits is not None:
                out.acts[(node.name, 0)] = (node.input[0], ActSpec(8 if edge else act_bits))
        elif node.op_type == "MatMul" and act_bits is not None:  # attention: q @ k^T and softmax @ v
            for index, name in enumerate(node.input[:2]):
                source = producers.get(name)
                if source is not None and source.op_type == "Softmax":
                    spec = {
                        "uint8": ActSpec(8, fixed=(0.0, 1.0)),
                        "act": ActSpec(act_bits, fixed=(0.0, 1.0)),
                        "log2": ActSpec(act_bits, log2=True),
                    }[config.softmax]
                else:
                    spec = ActSpec(act_bits)
                out.acts[(node.name, index)] = (name, spec)
        elif node.op_type in ALL_OPS and float_tensors:  # --quantize-ops all (uniform schemes only)
            for index, name in enumerate(node.input):
                if name and name not in constants and name in float_tensors:
                    out.acts[(node.name, index)] = (name, ActSpec(act_bits))
    return out


def _float_tensors(model: onnx.ModelProto) -> set[str]:
    inferred = onnx.shape_inference.infer_shapes(model)
    values = list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
    return {v.name for v in values if v.type.tensor_type.elem_type == TensorProto.FLOAT}


# ---------------------------------------------------------------------------------------- the pipeline
@dataclass
class Calibrated:
    """What calibration measured on the float model, enough to write any sub-plan without re-reading images.

    ``ranges``: per-channel ranges of the post-LayerNorm sites (for the reparameterization);
    ``stats`` and ``hessians`` were gathered on the model with those sites reparameterized.
    """

    model: onnx.ModelProto  # the input, nodes named
    ranges: dict[str, tuple[np.ndarray, np.ndarray]]
    stats: dict[str, Stats]
    hessians: dict[str, np.ndarray]


def calibrate_wxax(
    model: onnx.ModelProto,
    meta: ModelMetadata,
    config: WxAxConfig,
    calib: Any,
    precisions: dict[str, Precision] | None = None,
) -> Calibrated:
    """One calibration pass for ``config`` (and ``precisions``); ``write_wxax`` then writes it or any part."""
    work = onnx.ModelProto()
    work.CopyFrom(model)
    _name_nodes(work)
    ranges: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    calibrated = work
    if config.reparam:
        sites = _reparam_sites(work, plan(work, meta, config, precisions))
        ranges = _channel_ranges(work, sites, calib, config.threads)
        calibrated, _ = reparameterize(work, ranges, config.alpha)
    the_plan = plan(calibrated, meta, config, precisions)
    layers = {layer.node.name: layer for layer in find_layers(calibrated.graph, meta)}
    hessian_inputs = [layers[n].node.input[0] for n in the_plan.layers] if config.weight_algo == "gptq" else []
    stats, hessians = _calibrate(calibrated, the_plan, hessian_inputs, calib, config.threads)
    return Calibrated(work, ranges, stats, hessians)


def write_wxax(
    calibrated: Calibrated, meta: ModelMetadata, config: WxAxConfig, precisions: dict[str, Precision] | None = None
) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """The quantized copy and the record details; ``precisions`` may be any part of the calibrated plan."""
    model = calibrated.model
    details: dict[str, Any] = {"format": "qdq", "options": {k: getattr(config, k) for k in _option_names(config)}}
    work = model
    if config.reparam:
        sites = _reparam_sites(model, plan(model, meta, config, precisions))
        work, done = reparameterize(
            model, {s: calibrated.ranges[s] for s in sites if s in calibrated.ranges}, config.alpha
        )
        details["reparameterized"] = done
    the_plan = plan(work, meta, config, precisions)
    head_bias = read_head(model)[1] if meta.head is not None else None
    out = _rewrite(work, meta, config, the_plan, calibrated.stats, calibrated.hessians, head_bias)
    details["quantized_activations"] = len(the_plan.acts)
    details["quantized_layers"] = len(the_plan.layers) + len(the_plan.convs)
    details["bits_8_layers"] = sorted(n for n, b in {**the_plan.layers, **the_plan.convs}.items() if b == 8)
    return out, details


def quantize_wxax(
    model: onnx.ModelProto,
    meta: ModelMetadata,
    config: WxAxConfig,
    calib: Any,
    precisions: dict[str, Precision] | None = None,
) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """The quantized copy of ``model`` and the scheme's record details; ``meta.head`` follows the head."""
    return write_wxax(calibrate_wxax(model, meta, config, calib, precisions), meta, config, precisions)


def _reparam_sites(model: onnx.ModelProto, the_plan: Plan) -> list[str]:
    """The post-LayerNorm sites worth reparameterizing: every reader's input is activation-quantized."""
    return [s.output for s in find_sites(model) if all((m.name, 0) in the_plan.acts for m in s.matmuls)]


def _option_names(config: WxAxConfig) -> list[str]:
    return [f for f in config.__dataclass_fields__ if f != "threads"]


def _channel_ranges(
    model: onnx.ModelProto, names: list[str], calib: Any, threads: int | None
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-channel (last axis) minima and maxima of ``names`` over the calibration set."""
    ranges: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for chunk in iter_activations(model, names, calib, threads):
        for name, act in chunk.items():
            x = act.reshape(-1, act.shape[-1])
            lo, hi = x.min(axis=0), x.max(axis=0)
            if name in ranges:
                lo, hi = np.minimum(lo, ranges[name][0]), np.maximum(hi, ranges[name][1])
            ranges[name] = (lo, hi)
    if not ranges and names:
        raise VitqbenchError("the calibration source yielded no images")
    return ranges


def _calibrate(
    model: onnx.ModelProto, the_plan: Plan, hessian_inputs: list[str], calib: Any, threads: int | None
) -> tuple[dict[str, Stats], dict[str, np.ndarray]]:
    tensors = sorted({name for name, spec in the_plan.acts.values() if spec.fixed is None and not spec.log2})
    stats = {name: Stats() for name in tensors}
    hessians: dict[str, np.ndarray] = {}
    rng = np.random.default_rng(0)
    keep = max(1, SAMPLE // max(1, len(calib) * 4))
    for chunk in iter_activations(model, tensors + hessian_inputs, calib, threads):
        for name, act in chunk.items():
            if name in stats:
                stats[name].add(act, keep, rng)
            if name in hessian_inputs:
                add_hessian(hessians, name, act)
    return stats, hessians


def _rewrite(
    model: onnx.ModelProto,
    meta: ModelMetadata,
    config: WxAxConfig,
    the_plan: Plan,
    stats: dict[str, Stats],
    hessians: dict[str, np.ndarray],
    head_bias: np.ndarray | None,
) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    names = NameMaker(graph)
    nodes = {n.name: n for n in graph.node}
    new_before: dict[str, list[onnx.NodeProto]] = {}  # node name -> nodes to insert before it
    dq_of: dict[tuple[str, int, bool, bool], str] = {}

    def activation(name: str, spec: ActSpec, reader: str) -> str:
        key = (name, spec.bits, spec.signed, spec.log2)
        if key not in dq_of:
            if spec.log2:
                made, dq_of[key] = _log2_nodes(name, spec.bits, graph, names)
            else:
                lo, hi = act_range(stats.get(name, Stats()), spec, config.act_range, config.percentile)
                made, dq_of[key] = _qdq_nodes(name, spec, lo, hi, graph, names)
            new_before.setdefault(reader, []).extend(made)
        return dq_of[key]

    for (node_name, index), (tensor, spec) in the_plan.acts.items():
        node = nodes[node_name]
        node.input[index] = activation(tensor, spec, node_name)

    layers = {layer.node.name: layer for layer in find_layers(model.graph, meta)}
    for node_name, bits in the_plan.layers.items():
        layer = layers[node_name]
        node = nodes[node_name]
        bq = _weight_quant(layer.weight, bits, config, hessians.get(layer.node.input[0]))
        weight = _weight_dq(bq, bits, axis=1, shape=layer.weight.shape, base=node_name, graph=graph, names=names)
        new_before.setdefault(node_name, []).append(weight[0])
        if node.op_type == "Gemm":  # becomes MatMul (+ Add): find_layers folded transB and alpha
            _gemm_to_matmul(node, layer, weight[1], graph, names, new_before)
        else:
            node.input[1] = weight[1]
        if layer.is_head and meta.head is not None:
            attach_head(out, meta, bq.dequantize().T, head_bias)
    for node_name, bits in the_plan.convs.items():
        node = nodes[node_name]
        inits = {i.name: i for i in graph.initializer}
        w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        bq = quantize_weight(w.reshape(w.shape[0], -1).T, w[0].size, True, False, bits)
        made, dq_name = _weight_dq(bq, bits, axis=0, shape=w.shape, base=node_name, graph=graph, names=names, conv=True)
        new_before.setdefault(node_name, []).append(made)
        node.input[1] = dq_name

    ordered = []
    for node in graph.node:
        ordered.extend(new_before.get(node.name, []))
        ordered.append(node)
    del graph.node[:]
    graph.node.extend(ordered)
    # Drop the float weights replaced here and those the reparameterization superseded; keep the head copy.
    used = {i for n in graph.node for i in n.input} | ({meta.head.weight, meta.head.bias} if meta.head else set())
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    set_opsets(out, "qdq")
    return out


def _weight_quant(weight: np.ndarray, bits: int, config: WxAxConfig, hessian: np.ndarray | None) -> BlockQuant:
    k = weight.shape[0]
    if config.weight_algo == "gptq" and hessian is not None:
        return gptq_quantize(weight, hessian, k, True, damp=config.damp, act_order=True, bits=bits)
    return quantize_weight(weight, k, True, config.weight_algo == "mse", bits)


def _weight_dq(
    bq: BlockQuant, bits: int, axis: int, shape: tuple[int, ...], base: str, graph, names, conv: bool = False
) -> tuple[onnx.NodeProto, str]:
    """Per-channel symmetric codes as an INT4 (4-bit) or INT8 (wider) initializer and its DequantizeLinear."""
    mid = 2 ** (bits - 1)
    codes = bq.codes[: bq.k].astype(np.int16) - mid  # [K, N], symmetric around 0
    scales = bq.scales.reshape(-1).astype(np.float32)
    if conv:  # [K = C*kh*kw, O] back to the Conv's [O, C, kh, kw]
        codes = codes.T.reshape(shape)
    q_name, s_name, w_name = names(base + ".wq"), names(base + ".wscale"), names(base + ".weight_dq")
    if bits == 4:
        graph.initializer.append(_int4_tensor(codes.astype(np.int8), TensorProto.INT4, q_name))
    else:
        graph.initializer.append(numpy_helper.from_array(codes.astype(np.int8), q_name))
    graph.initializer.append(numpy_helper.from_array(scales, s_name))
    return helper.make_node(
        "DequantizeLinear", [q_name, s_name], [w_name], name=names(base + "_wdq"), axis=axis
    ), w_name


def _gemm_to_matmul(node, layer, weight_name: str, graph, names, new_before) -> None:
    x, y = node.input[0], node.output[0]
    node.op_type = "MatMul"
    del node.attribute[:]
    if layer.bias is None:
        node.input[:] = [x, weight_name]
        return
    bias = names(node.name + ".bias")
    graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(layer.bias, np.float32), bias))
    product = names(node.name + ".product")
    node.input[:] = [x, weight_name]
    node.output[:] = [product]
    # Inserted after the MatMul: its reader is the next node, so list it under that one.
    add = helper.make_node("Add", [product, bias], [y], name=names(node.name + "_bias"))
    readers = [n for n in graph.node if y in n.input]
    for reader in readers[:1]:
        new_before.setdefault(reader.name, []).insert(0, add)
    if not readers:
        graph.node.append(add)


def _qdq_nodes(name: str, spec: ActSpec, lo: float, hi: float, graph, names) -> tuple[list[onnx.NodeProto], str]:
    scale, zero = qparams(lo, hi, spec.bits, spec.signed)
    base = names(name + f"_a{spec.bits}")
    s_name, z_name = base + ".scale", base + ".zero_point"
    graph.initializer.append(numpy_helper.from_array(np.array(scale, np.float32), s_name))
    made = []
    source = name
    if spec.bits == 4:
        qtype = TensorProto.INT4 if spec.signed else TensorProto.UINT4
        graph.initializer.append(_int4_tensor(np.array(zero, np.int8), qtype, z_name))
    else:
        graph.initializer.append(numpy_helper.from_array(np.array(zero, np.int8 if spec.signed else np.uint8), z_name))
        if spec.bits < 8:  # 2**bits levels inside an 8-bit container
            qmin, qmax = (-(2 ** (spec.bits - 1)), 2 ** (spec.bits - 1) - 1) if spec.signed else (0, 2**spec.bits - 1)
            lo_name, hi_name = base + ".clip_lo", base + ".clip_hi"
            graph.initializer.append(numpy_helper.from_array(np.array((qmin - zero) * scale, np.float32), lo_name))
            graph.initializer.append(numpy_helper.from_array(np.array((qmax - zero) * scale, np.float32), hi_name))
            source = base + "_clipped"
            made.append(helper.make_node("Clip", [name, lo_name, hi_name], [source], name=base + "_clip"))
    q, dq = base + "_q", base + "_dq"
    made.append(helper.make_node("QuantizeLinear", [source, s_name, z_name], [q], name=q))
    made.append(helper.make_node("DequantizeLinear", [q, s_name, z_name], [dq], name=dq))
    return made, dq


def _log2_nodes(name: str, bits: int, graph, names) -> tuple[list[onnx.NodeProto], str]:
    """``p -> 2 ** -round(-log2 p)``, 0 below ``2 ** -(2**bits - 1)``: the log2 quantizer, in float ops."""
    base = names(name + f"_log2_{bits}")
    consts = {
        "tiny": np.float32(1e-30),
        "neg_inv_ln2": np.float32(-1.0 / math.log(2.0)),
        "levels": np.float32(2**bits),
        "two": np.float32(2.0),
        "zero": np.float32(0.0),
    }
    for key, value in consts.items():
        graph.initializer.append(numpy_helper.from_array(np.array(value), f"{base}.{key}"))

    def t(suffix: str) -> str:
        return f"{base}_{suffix}"

    made = [
        helper.make_node("Max", [name, f"{base}.tiny"], [t("pos")], name=t("max")),
        helper.make_node("Log", [t("pos")], [t("ln")], name=t("log")),
        helper.make_node("Mul", [t("ln"), f"{base}.neg_inv_ln2"], [t("nlog2")], name=t("mul")),
        helper.make_node("Round", [t("nlog2")], [t("code")], name=t("round")),
        helper.make_node("Less", [t("code"), f"{base}.levels"], [t("kept")], name=t("less")),
        helper.make_node("Neg", [t("code")], [t("exp")], name=t("neg")),
        helper.make_node("Pow", [f"{base}.two", t("exp")], [t("pow2")], name=t("pow")),
        helper.make_node("Where", [t("kept"), t("pow2"), f"{base}.zero"], [t("dq")], name=t("where")),
    ]
    return made, t("dq")
