"""Post-LayerNorm channel reparameterization: per-channel activation ranges folded into the graph.

A ViT's post-LayerNorm activations have a few channels with ranges far wider than the rest, so a
per-tensor 4-bit quantizer wastes its 16 levels. Following RepQ-ViT's scale reparameterization
(Li et al., ICCV 2023), every channel ``c`` of ``X = LN(x) * gamma + beta`` is moved and scaled,

    X'_c = (X_c + d_c) / r_c         (gamma' = gamma / r, beta' = (beta + d) / r)

and the Linear layers reading ``X`` absorb the inverse, so the float model computes the same:

    y = X W + b = X' (diag(r) W) + (b - d W).

``r_c = range_c ** alpha / max|W_c| ** (1 - alpha)`` (normalized): ``alpha = 1`` equalizes every
channel's range (RepQ-ViT), smaller ``alpha`` migrates only part of it into the weights
(SmoothQuant's migration strength). ``d`` centres every channel on a common midpoint. The result is
a plain float graph: any quantizer (ours, ORT's) then sees per-tensor-friendly activations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from vitqbench.quant.int4_graph import NameMaker


@dataclass
class Site:
    """A LayerNormalization whose output feeds only MatMuls with a constant weight."""

    norm: onnx.NodeProto
    matmuls: list[onnx.NodeProto]

    @property
    def output(self) -> str:
        return self.norm.output[0]


def find_sites(model: onnx.ModelProto) -> list[Site]:
    graph = model.graph
    inits = {i.name for i in graph.initializer}
    outputs = {o.name for o in graph.output}
    sites = []
    for node in graph.node:
        if node.op_type != "LayerNormalization" or len(node.input) < 3 or node.output[0] in outputs:
            continue
        if not all(i in inits for i in node.input[1:3]):
            continue
        readers = [n for n in graph.node if node.output[0] in n.input]
        if readers and all(
            n.op_type == "MatMul" and n.input[0] == node.output[0] and n.input[1] in inits for n in readers
        ):
            sites.append(Site(node, readers))
    return sites


def channel_factors(
    lo: np.ndarray, hi: np.ndarray, weight_absmax: np.ndarray, alpha: float
) -> tuple[np.ndarray, np.ndarray]:
    """``(r, d)`` for channels observed in ``[lo, hi]`` whose weight rows peak at ``weight_absmax``."""
    span = np.maximum(hi - lo, 1e-8)
    r = span**alpha / np.maximum(weight_absmax, 1e-8) ** (1.0 - alpha)
    r = r / np.exp(np.mean(np.log(r)))  # geometric mean 1: a global factor is absorbed by any scale
    mid = (hi + lo) / 2
    centre = np.mean(mid / r)
    d = r * centre - mid
    return r.astype(np.float32), d.astype(np.float32)


def reparameterize(
    model: onnx.ModelProto, ranges: dict[str, tuple[np.ndarray, np.ndarray]], alpha: float = 1.0
) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of ``model`` with every site in ``ranges`` (LN output -> per-channel (lo, hi)) rescaled.

    Modified initializers are written under new names (exports share identical constants between
    layers). Returns the copy and the LayerNorm node names that were reparameterized.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    inits = {i.name: i for i in graph.initializer}
    names = NameMaker(graph)
    done = []

    def value(name: str) -> np.ndarray:
        return numpy_helper.to_array(inits[name]).astype(np.float32)

    def add(array: np.ndarray, base: str) -> str:
        name = names(base)
        init = numpy_helper.from_array(np.ascontiguousarray(array, np.float32), name)
        graph.initializer.append(init)
        inits[name] = init
        return name

    for site in find_sites(out):
        if site.output not in ranges:
            continue
        lo, hi = (np.asarray(v, np.float32) for v in ranges[site.output])
        weights = [value(m.input[1]) for m in site.matmuls]
        w_absmax = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)
        r, d = channel_factors(lo, hi, w_absmax, alpha)
        norm = site.norm
        base = norm.name or norm.output[0]
        gamma, beta = value(norm.input[1]), value(norm.input[2])
        norm.input[1] = add(gamma / r, base + ".reparam_scale")
        norm.input[2] = add((beta + d) / r, base + ".reparam_bias")
        for matmul, weight in zip(site.matmuls, weights, strict=True):
            matmul.input[1] = add(weight * r[:, None], (matmul.name or matmul.output[0]) + ".reparam_weight")
            _shift_bias(graph, matmul, -(d @ weight), inits, add, names)
        done.append(norm.name or norm.output[0])
    return out, done


def _shift_bias(graph: onnx.GraphProto, matmul: onnx.NodeProto, delta: np.ndarray, inits, add, names) -> None:
    """Add ``delta`` [N] to the bias the exporter writes after ``matmul`` (an Add of a constant), or insert one."""
    product = matmul.output[0]
    readers = [n for n in graph.node if product in n.input]
    if len(readers) == 1 and readers[0].op_type == "Add":
        add_node = readers[0]
        other = 1 - list(add_node.input).index(product)
        bias = add_node.input[other]
        if bias in inits and numpy_helper.to_array(inits[bias]).size == delta.size:
            current = numpy_helper.to_array(inits[bias]).astype(np.float32).reshape(-1)
            add_node.input[other] = add(current + delta, (add_node.name or product) + ".reparam_bias")
            return
    shifted = names(product + "_reparam")
    for node in readers:
        node.input[:] = [shifted if i == product else i for i in node.input]
    position = list(graph.node).index(matmul) + 1
    graph.node.insert(position, helper.make_node("Add", [product, add(delta, product + ".reparam_shift")], [shifted]))
