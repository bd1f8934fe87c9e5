"""Our 4-bit weight-only pass: every MatMul/Gemm with a constant weight becomes block-wise int4.

``quantize_int4`` finds the layers (qkv, proj, fc1, fc2 of every block and the classifier head),
quantizes their weights with ``rtn``, ``mse`` (clipping search) or ``gptq`` (calibration data) and
emits either ONNX Runtime's ``com.microsoft.MatMulNBits`` or standard ONNX INT4
``DequantizeLinear(block_size) -> MatMul`` (opset 21), which ONNX Runtime fuses into MatMulNBits.
The numerics live in ``int4_blockwise`` and ``int4_gptq``, the graph surgery in ``int4_graph``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import onnx
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

from vitqbench.errors import VitqbenchError
from vitqbench.metadata import ModelMetadata, attach_head, get_metadata, read_head, set_metadata
from vitqbench.progress import progress_bar
from vitqbench.quant.execution import execution_summary
from vitqbench.quant.int4_blockwise import BlockQuant, check_block_size, quantize_weight
from vitqbench.quant.int4_gptq import collect_hessians, gptq_quantize
from vitqbench.quant.int4_graph import (
    Layer,
    NameMaker,
    drop_unused,
    emit_layer,
    find_layers,
    quantize_conv_int8,
    replace_node,
    set_opsets,
)
from vitqbench.quant.schemes import QuantRecord, SchemeConfig, register_scheme

__all__ = ["Int4Config", "find_layers", "quantize_int4"]

ALGOS = ("rtn", "mse", "gptq")
FORMATS = ("matmulnbits", "qdq")
QUANTIZED_OPS = {"MatMulNBits", "DequantizeLinear", "QuantizeLinear", "QLinearMatMul", "QLinearConv"}


@register_scheme
@dataclass
class Int4Config(SchemeConfig):
    """Scheme ``w4``: our block-wise 4-bit weight-only pass.

    Defaults come from benchmarks/quant_int4.py (see the README): on a ViT trained on Fashion-MNIST,
    gptq with act-order had 3-4x lower logit error than round to nearest at every block size and the
    mse clipping search did not lower output error; on deit_small, block 128 at accuracy level 4 was
    the fastest setting (at parity with fp32 layer by layer, 1.05-1.08x on the whole model;
    `benchmarks/quant_int4.py kernels`) and the smallest file."""

    block_size: int = 128
    algo: str | None = None  # None: gptq when calibration images are given, else rtn (data-free)
    symmetric: bool = True
    format: str = "matmulnbits"
    accuracy_level: int = 4  # MatMulNBits only: 0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8 activations
    keep_head: bool = False
    patch_embed_int8: bool = False  # weight-only int8 for the Conv patch embedding (float otherwise)
    damp: float = 0.01  # gptq: fraction of the mean Hessian diagonal added to it
    act_order: bool = True  # gptq: visit input features by decreasing Hessian diagonal
    gptq_clip_search: bool = False  # gptq: choose block scales with the mse clipping search
    threads: int | None = None  # ORT threads for the gptq calibration pass
    progress: bool = True

    name: ClassVar[str] = "w4"
    summary: ClassVar[str] = "int4 block-wise weights (rtn/mse/gptq), float activations (MatMulNBits)"

    @property
    def needs_calibration(self) -> bool:
        return self.algo == "gptq"

    def quantize(
        self, model: onnx.ModelProto, meta: ModelMetadata, calib: Any, progress: bool = True
    ) -> tuple[onnx.ModelProto, QuantRecord]:
        quantized, details = quantize_int4(model, dataclasses.replace(self, progress=progress), calib)
        meta.head = get_metadata(quantized).head  # quantize_int4 wrote its effective head there
        details.update(execution_summary(quantized))
        record = QuantRecord(
            scheme=self.name,
            weight_bits=4,
            activation_bits=None,
            quantized_inputs="weights",
            execution=details.pop("execution"),
            algorithm=details.pop("algorithm"),
            details=details,
        )
        return quantized, record

    def resolved(self, has_calib: bool) -> Int4Config:
        """This config with ``algo`` chosen: gptq (the measured best) needs data, rtn does not."""
        if self.algo is not None:
            return self
        return dataclasses.replace(self, algo="gptq" if has_calib else "rtn")

    def check(self) -> None:
        check_block_size(self.block_size)
        if self.algo not in ALGOS:
            raise VitqbenchError(f"unknown 4-bit algorithm {self.algo!r}; choose one of {', '.join(ALGOS)}")
        if self.format not in FORMATS:
            raise VitqbenchError(f"unknown 4-bit format {self.format!r}; choose one of {', '.join(FORMATS)}")
        if self.accuracy_level not in range(5):
            raise VitqbenchError(f"--accuracy-level must be 0..4 (got {self.accuracy_level})")
        if not 0 < self.damp < 1:
            raise VitqbenchError(f"--damp must be in (0, 1) (got {self.damp})")


def quantize_int4(
    model: onnx.ModelProto, config: Int4Config, calib: Iterable[np.ndarray] | None = None
) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Return a 4-bit copy of ``model`` and the quantization record for its metadata.

    ``calib`` yields preprocessed float32 batches [B, C, H, W]; only ``algo="gptq"`` reads it.
    When the classifier head is quantized, the copy's metadata points at its dequantized head.
    """
    config = config.resolved(calib is not None)
    config.check()
    meta = _metadata(model)
    _refuse_quantized(model, meta)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    layers = find_layers(graph, meta)
    if not layers:
        raise VitqbenchError("the model has no MatMul/Gemm with a constant weight to quantize")
    targets = [layer for layer in layers if not (config.keep_head and layer.is_head)]
    head_bias = read_head(model)[1] if meta is not None and meta.head is not None else None

    hessians: dict[str, np.ndarray] = {}
    calib_images = 0
    if config.needs_calibration and calib is None:
        raise VitqbenchError("4-bit gptq needs calibration images: pass --calib DATA, or --algo rtn|mse")
    if config.algo == "gptq":
        hessians, calib_images = collect_hessians(model, [t.node.input[0] for t in targets], calib, config.threads)

    names = NameMaker(graph)
    replaced_weights: set[str] = set()
    columns = [TextColumn("int4: {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with progress_bar(*columns, enabled=config.progress) as bar:
        task = bar.add_task(f"{config.algo} layers", total=len(targets))
        for layer in targets:
            bq = _quantize_layer(layer, config, hessians.get(layer.node.input[0]))
            new_nodes = emit_layer(layer, bq, config.format, config.accuracy_level, graph, names)
            replace_node(graph, layer.node, new_nodes)
            replaced_weights.add(layer.weight_name)
            if layer.is_head and meta is not None and meta.head is not None:
                attach_head(out, meta, bq.dequantize().T, head_bias)
            bar.advance(task)

    float_convs: list[str] = []
    int8_convs: list[str] = []
    for node in [n for n in graph.node if n.op_type == "Conv"]:
        float_weight = node.input[1]  # quantize_conv_int8 repoints the node at its int8 copy
        if config.patch_embed_int8 and quantize_conv_int8(node, graph, names):
            int8_convs.append(node.name or node.output[0])
            replaced_weights.add(float_weight)
        else:
            float_convs.append(node.name or node.output[0])
    drop_unused(graph, replaced_weights)
    set_opsets(out, config.format)
    if meta is not None:
        set_metadata(out, meta)

    quantized = {t.name for t in targets}
    record: dict[str, Any] = {
        "algorithm": config.algo,
        "block_size": config.block_size,
        "symmetric": config.symmetric,
        "format": config.format,
        # For qdq the runtime picks the level when it fuses (ORT: session.qdq_matmulnbits_accuracy_level).
        "accuracy_level": config.accuracy_level if config.format == "matmulnbits" else None,
        "head": "int4" if any(t.is_head for t in targets) else "float" if any(x.is_head for x in layers) else None,
        "patch_embed": "int8" if int8_convs else "float",
        "quantized_nodes": [layer.name for layer in layers if layer.name in quantized],
        "float_nodes": [layer.name for layer in layers if layer.name not in quantized] + float_convs,
        "int8_nodes": int8_convs,
    }
    if config.algo == "gptq":
        record["gptq"] = {
            "damp": config.damp,
            "act_order": config.act_order,
            "clip_search": config.gptq_clip_search,
            "calib_images": calib_images,
        }
    return out, record


def _metadata(model: onnx.ModelProto) -> ModelMetadata | None:
    if not any(p.key == "vitqbench" for p in model.metadata_props):
        return None  # plain ONNX files work too; only head bookkeeping needs the metadata
    return get_metadata(model)


def _refuse_quantized(model: onnx.ModelProto, meta: ModelMetadata | None) -> None:
    ops = {n.op_type for n in model.graph.node} & QUANTIZED_OPS
    if (meta is not None and meta.quantization) or ops:
        raise VitqbenchError(
            "the model is already quantized"
            + (f" (has {', '.join(sorted(ops))})" if ops else "")
            + "; quantize its full-precision export instead"
        )


def _quantize_layer(layer: Layer, config: Int4Config, hessian: np.ndarray | None) -> BlockQuant:
    if config.algo == "gptq":
        return gptq_quantize(
            layer.weight,
            hessian,
            config.block_size,
            config.symmetric,
            damp=config.damp,
            act_order=config.act_order,
            clip_search=config.gptq_clip_search,
        )
    return quantize_weight(layer.weight, config.block_size, config.symmetric, clip_search=config.algo == "mse")
