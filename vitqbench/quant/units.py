"""A ViT graph's quantizable units, named like timm's modules, found from the graph's structure.

The exporter's node names (``node_MatMul_12``) say nothing about where a node sits, so units are
read from the graph: the patch embedding is the Conv, each transformer block spans two
LayerNormalizations (``norm1`` before attention, ``norm2`` before the MLP), and what follows the
final norm is the head. Granularity ``layer`` gives every quantizable node its own unit
(``blocks.3.attn.qkv``, ``blocks.3.attn.matmul_qk``, ``blocks.3.mlp.fc2``, ...); ``block`` groups
them per transformer block (``patch_embed``, ``blocks.0`` ... ``blocks.N``, ``head``).
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from vitqbench.errors import VitqbenchError
from vitqbench.metadata import ModelMetadata
from vitqbench.quant.int4_graph import find_layers

GRANULARITIES = ("layer", "block")
PATCH_EMBED, HEAD = "patch_embed", "head"
# The quantizable nodes of one timm block, in graph order: four linear layers, two attention matmuls.
BLOCK_LAYERS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
BLOCK_MATMULS = ("attn.matmul_qk", "attn.matmul_av")


@dataclass(frozen=True)
class Unit:
    name: str
    nodes: tuple[str, ...]  # node names (as ``quant.int8._name_nodes`` names them)


def find_units(model: onnx.ModelProto, meta: ModelMetadata, granularity: str = "block") -> list[Unit]:
    """The units of ``model`` (whose nodes must be named) at ``granularity``, in graph order."""
    if granularity not in GRANULARITIES:
        raise VitqbenchError(f"unknown granularity {granularity!r}; choose {' or '.join(GRANULARITIES)}")
    graph = model.graph
    layers = {layer.node.name for layer in find_layers(graph, meta)}
    constants = {i.name for i in graph.initializer}
    norms = [n for n in graph.node if n.op_type == "LayerNormalization"]
    depth = (len(norms) - 1) // 2
    if depth < 1:
        raise VitqbenchError("no transformer blocks found (expected two LayerNormalizations per block)")
    seen_norms = 0
    groups: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        if node.op_type == "LayerNormalization":
            seen_norms += 1
            continue
        quantizable = node.name in layers or (
            node.op_type == "Conv" and len(node.input) > 1 and node.input[1] in constants
        )
        if not quantizable and node.op_type == "MatMul" and seen_norms:
            quantizable = True  # an attention matmul: both inputs are activations
        if not quantizable:
            continue
        if seen_norms == 0:
            group = PATCH_EMBED
        elif seen_norms > 2 * depth:
            group = HEAD
        else:
            group = f"blocks.{(seen_norms - 1) // 2}"
        groups.setdefault(group, []).append(node)
    if granularity == "block":
        return [Unit(group, tuple(n.name for n in nodes)) for group, nodes in groups.items()]
    return [unit for group, nodes in groups.items() for unit in _layer_units(group, nodes, layers)]


def _layer_units(group: str, nodes: list[onnx.NodeProto], layers: set[str]) -> list[Unit]:
    """One unit per node, named after timm's modules where the block has the standard shape."""
    if not group.startswith("blocks."):
        if len(nodes) == 1:
            return [Unit(group, (nodes[0].name,))]
        return [Unit(f"{group}.{i}", (n.name,)) for i, n in enumerate(nodes)]
    linear = [n for n in nodes if n.name in layers]
    matmuls = [n for n in nodes if n.name not in layers]
    if len(linear) == len(BLOCK_LAYERS) and len(matmuls) == len(BLOCK_MATMULS):
        named = dict(zip((n.name for n in linear), BLOCK_LAYERS, strict=True))
        named.update(zip((n.name for n in matmuls), BLOCK_MATMULS, strict=True))
        return [Unit(f"{group}.{named[n.name]}", (n.name,)) for n in nodes]
    return [Unit(f"{group}.{n.op_type.lower()}{i}", (n.name,)) for i, n in enumerate(nodes)]
