"""Graph surgery for the 4-bit pass: find the constant-weight layers, emit MatMulNBits or INT4 QDQ.

MatMulNBits (com.microsoft) takes B [N, k_blocks, block_size / 2] uint8 with two codes per byte
(first in the low nibble), scales [N, k_blocks], optional packed zero points (default 8) and an
optional bias (input 5). The standard form is DequantizeLinear(axis=0, block_size) over an INT4
(symmetric) or UINT4 + zero point (asymmetric) [K, N] initializer, opset 21, followed by MatMul.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from vitqbench.metadata import ModelMetadata
from vitqbench.quant.int4_blockwise import BlockQuant, matmulnbits_arrays, pack_nibbles, qdq_arrays

QDQ_OPSET = 21  # DequantizeLinear with block_size and INT4/UINT4 inputs
MS_DOMAIN = "com.microsoft"


@dataclass
class Layer:
    """A MatMul/Gemm whose right operand is a constant: ``y = x @ weight (+ bias)``."""

    node: onnx.NodeProto
    weight_name: str
    weight: np.ndarray  # [K, N], float32, Gemm's transB and alpha applied
    bias: np.ndarray | None  # [N], Gemm's C times beta
    is_head: bool

    @property
    def name(self) -> str:
        return self.node.name or self.node.output[0]


def find_layers(graph: onnx.GraphProto, meta: ModelMetadata | None = None) -> list[Layer]:
    """Every MatMul/Gemm of ``graph`` whose weight is a 2-D float initializer, in graph order."""
    inits = {i.name: i for i in graph.initializer}
    head_weight = meta.head.weight if meta is not None and meta.head is not None else None
    layers = []
    for node in graph.node:
        if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2 or node.input[1] not in inits:
            continue
        init = inits[node.input[1]]
        if init.data_type != TensorProto.FLOAT or len(init.dims) != 2:
            continue
        weight = numpy_helper.to_array(init).astype(np.float32)
        bias = None
        if node.op_type == "Gemm":
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if attrs.get("transA", 0):
                continue
            if attrs.get("transB", 0):
                weight = weight.T
            weight = weight * np.float32(attrs.get("alpha", 1.0))
            if len(node.input) > 2 and node.input[2]:
                if node.input[2] not in inits:
                    continue  # a computed bias: leave this Gemm alone
                c = numpy_helper.to_array(inits[node.input[2]]).astype(np.float32)
                if c.size not in (1, weight.shape[1]):
                    continue  # a full [M, N] C is not a bias: leave this Gemm alone
                bias = np.broadcast_to(c.reshape(-1) * np.float32(attrs.get("beta", 1.0)), weight.shape[1:])
        if head_weight is not None:
            is_head = node.input[1] == head_weight
        else:  # no head in the metadata (e.g. distilled DeiT): the classifier layers are num_classes wide
            is_head = meta is not None and weight.shape[1] == meta.num_classes
        layers.append(Layer(node, node.input[1], np.ascontiguousarray(weight), bias, is_head))
    return layers


class NameMaker:
    """Fresh tensor/node names derived from a base, never clashing with the graph's own."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.used = {i.name for i in graph.initializer} | {n.name for n in graph.node}
        self.used |= {o for n in graph.node for o in n.output} | {i.name for i in graph.input}

    def __call__(self, base: str) -> str:
        name, i = base, 1
        while name in self.used:
            name, i = f"{base}_{i}", i + 1
        self.used.add(name)
        return name


def emit_layer(
    layer: Layer, bq: BlockQuant, fmt: str, accuracy_level: int, graph: onnx.GraphProto, names: NameMaker
) -> list[onnx.NodeProto]:
    """Initializers (added to ``graph``) and nodes that compute ``layer`` with its 4-bit weight ``bq``."""
    base = layer.name + "_int4"
    x, y = layer.node.input[0], layer.node.output[0]
    k, n = layer.weight.shape
    bias_name = ""
    if layer.bias is not None:
        bias_name = names(base + ".bias")
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(layer.bias, np.float32), bias_name))

    if fmt == "matmulnbits":
        b, scales, zero_points = matmulnbits_arrays(bq)
        inputs = [x, names(base + ".B"), names(base + ".scales"), ""]
        graph.initializer.append(numpy_helper.from_array(b, inputs[1]))
        graph.initializer.append(numpy_helper.from_array(scales, inputs[2]))
        if zero_points is not None:
            inputs[3] = names(base + ".zero_points")
            graph.initializer.append(numpy_helper.from_array(zero_points, inputs[3]))
        if bias_name:
            inputs += ["", bias_name]  # input 4 (g_idx) is deprecated; 5 is the bias
        while inputs[-1] == "":
            inputs.pop()
        attrs = {"K": k, "N": n, "bits": 4, "block_size": bq.block_size}
        if accuracy_level:
            attrs["accuracy_level"] = accuracy_level
        return [helper.make_node("MatMulNBits", inputs, [y], name=names(base), domain=MS_DOMAIN, **attrs)]

    values, scales, zero_points = qdq_arrays(bq)
    qtype = TensorProto.INT4 if zero_points is None else TensorProto.UINT4
    dq_inputs = [names(base + ".q"), names(base + ".scales")]
    graph.initializer.append(_int4_tensor(values, qtype, dq_inputs[0]))
    graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(scales, np.float32), dq_inputs[1]))
    if zero_points is not None:
        dq_inputs.append(names(base + ".zero_points"))
        graph.initializer.append(_int4_tensor(zero_points, TensorProto.UINT4, dq_inputs[2]))
    weight = names(base + ".weight")
    nodes = [
        helper.make_node(
            "DequantizeLinear",
            dq_inputs,
            [weight],
            name=names(base + "_dq"),
            axis=0,
            block_size=bq.block_size,
        )
    ]
    if not bias_name:
        return nodes + [helper.make_node("MatMul", [x, weight], [y], name=names(base + "_matmul"))]
    product = names(base + ".product")
    return nodes + [
        helper.make_node("MatMul", [x, weight], [product], name=names(base + "_matmul")),
        helper.make_node("Add", [product, bias_name], [y], name=names(base + "_bias")),
    ]


def _int4_tensor(values: np.ndarray, qtype: int, name: str) -> onnx.TensorProto:
    """An INT4/UINT4 initializer: row-major values, two per byte, first in the low nibble."""
    packed = pack_nibbles(values.astype(np.int8).reshape(-1).view(np.uint8))
    return helper.make_tensor(name, qtype, list(values.shape), packed.tobytes(), raw=True)


def quantize_conv_int8(node: onnx.NodeProto, graph: onnx.GraphProto, names: NameMaker) -> bool:
    """Replace a Conv's constant weight by per-output-channel symmetric int8 + DequantizeLinear."""
    inits = {i.name: i for i in graph.initializer}
    if len(node.input) < 2 or node.input[1] not in inits:
        return False
    weight = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
    absmax = np.abs(weight.reshape(weight.shape[0], -1)).max(axis=1)
    scale = np.where(absmax > 0, absmax / 127.0, 1.0).astype(np.float32)
    shape = (-1,) + (1,) * (weight.ndim - 1)
    q = np.clip(np.round(weight / scale.reshape(shape)), -127, 127).astype(np.int8)
    base = (node.name or node.output[0]) + "_int8"
    q_name, s_name, w_name = names(base + ".q"), names(base + ".scales"), names(base + ".weight")
    graph.initializer.extend([numpy_helper.from_array(q, q_name), numpy_helper.from_array(scale, s_name)])
    dq = helper.make_node("DequantizeLinear", [q_name, s_name], [w_name], name=names(base + "_dq"), axis=0)
    node.input[1] = w_name
    position = list(graph.node).index(node)
    graph.node.insert(position, dq)
    return True


def replace_node(graph: onnx.GraphProto, old: onnx.NodeProto, new: list[onnx.NodeProto]) -> None:
    position = list(graph.node).index(old)
    del graph.node[position]
    for offset, node in enumerate(new):
        graph.node.insert(position + offset, node)


def drop_unused(graph: onnx.GraphProto, candidates: set[str]) -> None:
    """Remove the replaced float weights that no node reads any more (shared ones stay)."""
    used = {name for node in graph.node for name in node.input}
    used |= {o.name for o in graph.output}
    dead = {name for name in candidates if name not in used}
    kept = [i for i in graph.initializer if i.name not in dead]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    inputs = [i for i in graph.input if i.name not in dead]
    del graph.input[:]
    graph.input.extend(inputs)


def set_opsets(model: onnx.ModelProto, fmt: str) -> None:
    versions = {o.domain: o for o in model.opset_import}
    default = versions.get("") or versions.get("ai.onnx")
    if fmt == "qdq" and default is not None and default.version < QDQ_OPSET:
        # Ops a timm ViT uses did not change meaning between opset 18 and 21; only types were added.
        default.version = QDQ_OPSET
        model.ir_version = max(model.ir_version, 10)  # INT4 tensors need IR 10
    if fmt == "matmulnbits" and MS_DOMAIN not in versions:
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
