"""Scheme ``fp16``: float16 weights and arithmetic (onnxconverter-common), inputs and outputs float32.

On ORT's CPU provider most float16 ops have no kernel and ORT wraps them in Casts back to float32
(its InsertCastTransformer); the record counts what the optimized graph runs in float16.
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar

import onnx
from onnxconverter_common import float16

from vitqbench.metadata import ModelMetadata
from vitqbench.quant.execution import optimized_graph
from vitqbench.quant.int8 import _one_line_errors, _quiet
from vitqbench.quant.schemes import QuantRecord, SchemeConfig, register_scheme


@register_scheme
@dataclass
class Fp16Config(SchemeConfig):
    name: ClassVar[str] = "fp16"
    summary: ClassVar[str] = "float16 weights and activations, float32 inputs and outputs"

    @property
    def needs_calibration(self) -> bool:
        return False

    def quantize(
        self, model: onnx.ModelProto, meta: ModelMetadata, calib: Any = None, progress: bool = True
    ) -> tuple[onnx.ModelProto, QuantRecord]:
        with _quiet(), _one_line_errors("float16 conversion"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # one line per weight below float16's smallest normal
            half = float16.convert_float_to_float16(_outputs_not_read(model), keep_io_types=True)
        casts = sum(n.op_type == "Cast" for n in half.graph.node)
        runs = optimized_graph(half).graph
        details = {
            "format": "float16",
            "converter": "onnxconverter_common.float16 (keep_io_types)",
            "cast_nodes": casts,
            # ORT's CPU provider falls back to float32 for ops without a float16 kernel, adding Casts.
            "cast_nodes_after_optimization": sum(n.op_type == "Cast" for n in runs.node),
            "ops_after_optimization": dict(sorted(Counter(n.op_type for n in runs.node).items())),
        }
        record = QuantRecord(
            scheme=self.name,
            weight_bits=16,
            activation_bits=16,
            quantized_inputs="all",
            execution="float16",
            algorithm="float16",
            details=details,
        )
        return half, record


def _outputs_not_read(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy where no graph output is also read inside the graph (the head reads ``features``).

    The converter casts float32 outputs back in place, so a node reading such an output would get
    float32 beside float16 inputs; an Identity gives the output its own name.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    for output in graph.output:
        readers = [n for n in graph.node if output.name in n.input]
        if not readers:
            continue
        inner = output.name + "_inner"
        for node in graph.node:
            node.output[:] = [inner if o == output.name else o for o in node.output]
            node.input[:] = [inner if i == output.name else i for i in node.input]
        graph.node.append(onnx.helper.make_node("Identity", [inner], [output.name], name=output.name + "_output"))
    return out
