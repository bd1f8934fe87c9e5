"""How ONNX Runtime actually runs a quantized graph: read from the graph it optimizes, not assumed.

ORT fuses ``DequantizeLinear -> MatMul`` patterns into integer kernels (QLinearMatMul,
MatMulIntegerToFloat, MatMulNBits, ...) only for the types its CPU kernels take. Anything it cannot
fuse stays a float MatMul fed by dequantized values: exact integer rounding, float arithmetic
(emulated). We let ORT optimize the model, save the optimized graph and count both kinds.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort

# CPU kernels that compute with integer (or packed int4) operands.
INTEGER_OPS = {
    "QLinearMatMul",
    "QLinearConv",
    "QGemm",
    "MatMulInteger",
    "ConvInteger",
    "MatMulIntegerToFloat",
    "DynamicQuantizeMatMul",
    "MatMulNBits",
    "QAttention",
}
LINEAR_OPS = {"MatMul", "Gemm", "Conv", "FusedMatMul", "FusedGemm", "FusedConv"}


def optimized_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    """The graph ORT's CPU provider runs after its (extended) optimizations."""
    with tempfile.TemporaryDirectory(prefix="vitqbench-exec-") as tmp:
        path = Path(tmp) / "optimized.onnx"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(path)
        options.log_severity_level = 3
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return onnx.load(str(path))


def execution_summary(model: onnx.ModelProto) -> dict[str, Any]:
    """``execution`` (integer-kernels | emulated) and the node counts it was read from.

    A linear op is emulated when one of its inputs comes out of a DequantizeLinear (or a
    QuantizeLinear -> DequantizeLinear pair ORT left in place) after optimization.
    """
    graph = optimized_graph(model).graph
    producers = {out: node for node in graph.node for out in node.output}
    ops = Counter(n.op_type for n in graph.node)
    emulated = [
        n.name
        for n in graph.node
        if n.op_type in LINEAR_OPS
        and any(producers.get(i) is not None and producers[i].op_type == "DequantizeLinear" for i in n.input)
    ]
    integer = {op: count for op, count in sorted(ops.items()) if op in INTEGER_OPS}
    return {
        "execution": "emulated" if emulated else "integer-kernels",
        "integer_kernels": integer,
        "emulated_nodes": len(emulated),
        "float_linear_nodes": sum(ops[op] for op in LINEAR_OPS) - len(emulated),
    }
