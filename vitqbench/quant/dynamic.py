"""Scheme ``w8a8-dynamic``: ORT ``quantize_dynamic``, int8 per-channel weights, activations per batch.

No calibration: every MatMul input is quantized at run time (DynamicQuantizeLinear) and multiplied
with MatMulInteger. On a ViT trained on Fashion-MNIST this was the closest 8-bit scheme to fp32.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnx
from onnx import numpy_helper
from onnxruntime.quantization import QuantType, quant_pre_process, quantize_dynamic

from vitqbench.errors import VitqbenchError
from vitqbench.metadata import ModelMetadata, attach_head
from vitqbench.quant.execution import execution_summary
from vitqbench.quant.int8 import _one_line_errors, _quiet
from vitqbench.quant.schemes import QuantRecord, SchemeConfig, register_scheme

DYNAMIC_OPS = ["MatMul", "Conv"]  # the linear layers, both attention matmuls and the patch embedding


@register_scheme
@dataclass
class DynamicConfig(SchemeConfig):
    per_channel: bool = True

    name: ClassVar[str] = "w8a8-dynamic"
    summary: ClassVar[str] = "int8 weights, int8 activations quantized per batch at run time (MatMulInteger)"

    @property
    def needs_calibration(self) -> bool:
        return False

    def quantize(
        self, model: onnx.ModelProto, meta: ModelMetadata, calib: Any = None, progress: bool = True
    ) -> tuple[onnx.ModelProto, QuantRecord]:
        with tempfile.TemporaryDirectory(prefix="vitqbench-dyn-") as tmp:
            pre, out = Path(tmp) / "pre.onnx", Path(tmp) / "dyn.onnx"
            with _quiet(), _one_line_errors("quantize_dynamic"):
                quant_pre_process(model, str(pre))
                quantize_dynamic(
                    str(pre),
                    str(out),
                    op_types_to_quantize=DYNAMIC_OPS,
                    per_channel=self.per_channel,
                    weight_type=QuantType.QInt8,
                )
            quantized = onnx.load(str(out))
        head = _dynamic_head(quantized, meta)
        if head is not None:
            attach_head(quantized, meta, *head)
        details = {"format": "dynamic", "per_channel": self.per_channel, "head_quantized": head is not None}
        details.update(execution_summary(quantized))
        record = QuantRecord(
            scheme=self.name,
            weight_bits=8,
            activation_bits=8,
            quantized_inputs="matmul",
            execution=details.pop("execution"),
            algorithm="ort_dynamic",
            details=details,
        )
        return quantized, record


def _dynamic_head(model: onnx.ModelProto, meta: ModelMetadata) -> tuple[np.ndarray, np.ndarray] | None:
    """The head ``(W [C, D], b [C])`` the dynamic model multiplies by, from ORT's ``*_quantized`` weights."""
    if meta.head is None:
        return None
    inits = {i.name: i for i in model.graph.initializer}
    layout = meta.head.layout
    stem = meta.head.weight
    if f"{stem}_Transposed_quantized" in inits:  # ORT turned Gemm(transB=1) into MatMul of W^T
        stem, layout = f"{stem}_Transposed", "in_out" if layout == "out_in" else "out_in"
    names = [f"{stem}_{part}" for part in ("quantized", "scale", "zero_point")]
    if names[0] not in inits:
        return None  # the head stayed float
    if not all(n in inits for n in names):
        raise VitqbenchError("cannot read the quantized classifier head back from the dynamic model")
    q, scale, zero = (numpy_helper.to_array(inits[n]).astype(np.float32) for n in names)
    axis = 1 if layout == "in_out" else 0  # ORT's per-channel axis is the output channel
    shape = [1, 1]
    shape[axis] = -1
    weight = (q - zero.reshape(shape)) * scale.reshape(shape)
    if layout == "in_out":
        weight = weight.T
    bias = numpy_helper.to_array(inits[meta.head.bias]).astype(np.float32) if meta.head.bias in inits else None
    return weight, bias if bias is not None else np.zeros(weight.shape[0], np.float32)
