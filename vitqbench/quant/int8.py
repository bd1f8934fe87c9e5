"""8-bit static quantization (W8A8): ORT ``quant_pre_process`` then ``quantize_static`` in QDQ form."""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import io
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnx
import onnxruntime
from onnx import numpy_helper
from onnxruntime.quantization import (
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_static,
)
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

from vitqbench.errors import VitqbenchError, first_line
from vitqbench.metadata import ModelMetadata, attach_head
from vitqbench.progress import progress_bar
from vitqbench.quant.calibration import BatchReader, CalibrationSet
from vitqbench.quant.execution import execution_summary
from vitqbench.quant.schemes import QUANTIZE_OPS, QuantRecord, SchemeConfig, register_scheme

CALIB_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
ACTIVATION_TYPES = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
# Structural groups usable with --exclude besides op types and node-name globs (see `exclusion_groups`).
GROUPS = ("head", "patch_embed", "attention", "post_gelu")
# Nothing stays float by default: on a ViT trained on Fashion-MNIST no exclusion (head, patch_embed,
# attention, Softmax, post_gelu, LayerNormalization, Add) moved logit error beyond noise (0.051 +- 0.001
# relative L2) while post_gelu doubled the file; see benchmarks/quant_int8_fidelity.py.
DEFAULT_EXCLUDE: tuple[str, ...] = ()
# Histogram calibrators also copy every activation of a window to numpy before binning it.
HISTOGRAM_BATCH = 4


# --quantize-ops matmul: the linear layers (qkv, proj, fc1, fc2, head), the two attention matmuls and
# the patch embedding (a linear layer over patches); the residual stream, LayerNorm, Softmax and GELU stay float.
MATMUL_OPS = ["MatMul", "Gemm", "Conv"]


@register_scheme
@dataclass
class Int8Config(SchemeConfig):
    """Scheme ``w8a8``: ORT static QDQ, int8 per-channel weights, 8-bit activations from calibration.

    ``exclude`` holds op types, node-name globs or names from ``GROUPS``.

    Excluding a node keeps its weights and arithmetic in float; an activation it reads can still
    arrive 8-bit rounded when the node producing it is quantized (exclude that producer too).
    """

    calib_method: str = "minmax"
    per_channel: bool = True
    activation_type: str = "uint8"
    symmetric_activations: bool = False
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE
    percentile: float = 99.999
    quantize_ops: str = "matmul"
    # 7-bit weights, so u8s8 integer GEMMs on CPUs without VNNI (AVX2's vpmaddubsw) cannot saturate:
    # measured on a trained ViT, top-1 agreement 99.2 % -> 99.8 % on AVX2, no loss where nothing saturates.
    reduce_range: bool = True

    name: ClassVar[str] = "w8a8"
    summary: ClassVar[str] = "int8 weights, uint8 static activations (ORT QDQ, calibrated)"

    def __post_init__(self) -> None:
        if self.quantize_ops not in QUANTIZE_OPS:
            raise VitqbenchError(f"unknown --quantize-ops {self.quantize_ops!r}; choose {'|'.join(QUANTIZE_OPS)}")
        if self.calib_method not in CALIB_METHODS:
            raise VitqbenchError(f"unknown calibration method {self.calib_method!r}; choose {'|'.join(CALIB_METHODS)}")
        if self.activation_type not in ACTIVATION_TYPES:
            raise VitqbenchError(
                f"unknown activation type {self.activation_type!r}; choose {'|'.join(ACTIVATION_TYPES)}"
            )
        if not 0.0 < self.percentile <= 100.0:
            raise VitqbenchError(f"percentile must be in (0, 100] (got {self.percentile})")
        self.exclude = tuple(p for p in self.exclude if p.lower() != "none")

    def quantize(
        self, model: onnx.ModelProto, meta: ModelMetadata, calib: CalibrationSet, progress: bool = True
    ) -> tuple[onnx.ModelProto, QuantRecord]:
        # This path draws its own bar over calibration (ORT reads the batches), not the data part's.
        calib = dataclasses.replace(calib, progress=False)
        quantized, details = quantize_int8(model, meta, self, calib, progress=progress)
        details.update(execution_summary(quantized))
        record = QuantRecord(
            scheme=self.name,
            weight_bits=8,
            activation_bits=8,
            quantized_inputs=self.quantize_ops,
            execution=details.pop("execution"),
            algorithm="ort_static_qdq",
            details=details,
        )
        return quantized, record


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output}


def _is_gelu_output(name: str, producers: dict[str, onnx.NodeProto], depth: int = 4) -> bool:
    """Whether ``name`` comes out of a GELU: a Gelu op, or the Erf/Tanh formula a few nodes back.

    The exporter writes ``x * (0.5 * (1 + erf(x / sqrt(2))))``: Erf sits four nodes above the output.
    """
    frontier = [name]
    for _ in range(depth):
        nodes = [producers[n] for n in frontier if n in producers]
        if any(n.op_type in ("Gelu", "FastGelu", "BiasGelu", "Erf", "Tanh") for n in nodes):
            return True
        frontier = [i for n in nodes if n.op_type in ("Mul", "Add", "Div") for i in n.input]
    return False


def exclusion_groups(model: onnx.ModelProto, meta: ModelMetadata) -> dict[str, list[str]]:
    """Node names of the structural groups of a ViT graph, found from the graph itself.

    ``head``: the node reading the classifier weight; ``patch_embed``: the Conv(s);
    ``attention``: MatMuls of two activations (q @ k^T and softmax @ v);
    ``post_gelu``: the MatMul/Gemm fed by a GELU (fc2), whose input is the post-GELU outlier case.
    """
    graph = model.graph
    constants = {init.name for init in graph.initializer}
    constants |= {out for n in graph.node if n.op_type == "Constant" for out in n.output}
    producers = _producers(graph)
    groups: dict[str, list[str]] = {g: [] for g in GROUPS}
    head_inputs = {meta.head.weight, meta.head.bias} - {None} if meta.head else set()
    for node in graph.node:
        if head_inputs & set(node.input):  # the MatMul and, for MatMul+Add heads, the bias Add
            groups["head"].append(node.name)
        if node.op_type == "Conv":
            groups["patch_embed"].append(node.name)
        if node.op_type in ("MatMul", "Gemm"):
            if node.op_type == "MatMul" and not any(i in constants for i in node.input):
                groups["attention"].append(node.name)
            elif _is_gelu_output(node.input[0], producers):
                groups["post_gelu"].append(node.name)
    return groups


def resolve_exclusions(model: onnx.ModelProto, meta: ModelMetadata, patterns: tuple[str, ...]) -> list[str]:
    """Turn ``--exclude`` patterns into node names; a pattern that matches nothing is an error."""
    groups = exclusion_groups(model, meta)
    op_types = sorted({n.op_type for n in model.graph.node})
    names: list[str] = []
    for pattern in patterns:
        if pattern in groups:
            matched = groups[pattern]
        elif pattern in op_types:
            matched = [n.name for n in model.graph.node if n.op_type == pattern]
        else:
            matched = [n.name for n in model.graph.node if fnmatch.fnmatchcase(n.name, pattern)]
        if not matched:
            raise VitqbenchError(
                f"--exclude {pattern!r} matches no group ({', '.join(GROUPS)}), op type or node name "
                f"in the model (op types present: {', '.join(op_types)})"
            )
        names.extend(m for m in matched if m not in names)
    return names


def _name_nodes(model: onnx.ModelProto) -> None:
    """Give unnamed nodes stable names: exclusion lists and the head lookup go by node name."""
    taken = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)


def _constant_value(model: onnx.ModelProto, name: str) -> np.ndarray | None:
    """The float value of ``name`` if it is an initializer or a DequantizeLinear of initializers."""
    inits = {i.name: i for i in model.graph.initializer}
    if name in inits:
        return numpy_helper.to_array(inits[name]).astype(np.float32)
    node = _producers(model.graph).get(name)
    if node is None or node.op_type != "DequantizeLinear" or not all(i in inits for i in node.input if i):
        return None
    q, scale, *rest = (numpy_helper.to_array(inits[i]) for i in node.input if i)
    zero = rest[0].astype(np.float32) if rest else np.float32(0)
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
    if scale.ndim == 1 and q.ndim > 1:  # per-channel: broadcast scale and zero point along `axis`
        shape = [1] * q.ndim
        shape[axis] = -1
        scale = scale.reshape(shape)
        zero = np.reshape(zero, shape) if np.ndim(zero) else zero
    return ((q.astype(np.float32) - zero) * scale.astype(np.float32)).astype(np.float32)


HeadInputs = dict[str, tuple[str, int]]  # "weight"/"bias" -> (reading node's name, input index)


def head_inputs(model: onnx.ModelProto, meta: ModelMetadata) -> HeadInputs:
    """Where the graph reads the head's weight and bias (one Gemm, or a MatMul then an Add)."""
    if meta.head is None:
        return {}
    refs = {"weight": meta.head.weight, "bias": meta.head.bias}
    found: HeadInputs = {}
    for node in model.graph.node:
        for index, name in enumerate(node.input):
            for key, ref in refs.items():
                if ref is not None and name == ref and key not in found:
                    found[key] = (node.name, index)
    return found


def effective_head(
    model: onnx.ModelProto, inputs: HeadInputs, meta: ModelMetadata
) -> tuple[np.ndarray, np.ndarray] | None:
    """The head ``(W [C, D], b [C])`` as the quantized model computes it, or None if it stayed float."""
    assert meta.head is not None and "weight" in inputs
    nodes = {n.name: n for n in model.graph.node}
    current = {}
    for key, (node_name, index) in inputs.items():
        if node_name not in nodes:
            raise VitqbenchError(f"head node {node_name!r} disappeared during quantization")
        current[key] = nodes[node_name].input[index]
    if current["weight"] == meta.head.weight and current.get("bias") == meta.head.bias:
        return None
    weight = _constant_value(model, current["weight"])
    bias = _constant_value(model, current["bias"]) if "bias" in current else None
    if weight is None or ("bias" in current and bias is None):
        raise VitqbenchError("cannot read the quantized classifier head back from the int8 model")
    if meta.head.layout == "in_out":
        weight = weight.T
    if bias is None:
        bias = np.zeros(weight.shape[0], np.float32)
    return weight, bias.reshape(-1)


def keep_outputs_float(model: onnx.ModelProto, names: list[str]) -> list[str]:
    """Let graph outputs leave before the Q -> DQ that ``quantize_static`` puts on them.

    Rounding logits and features to 256 levels buys no speed but costs precision in every score;
    nodes that read the output inside the graph (the head reads ``features``) keep their Q/DQ input.
    Returns the outputs that were un-rounded.
    """
    producers = _producers(model.graph)
    freed = []
    for name in names:
        dq = producers.get(name)
        q = producers.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear":
            continue
        source = q.input[0]
        readers = [n for n in model.graph.node if name in n.input]
        if readers:
            dq.output[0] = f"{name}_dequantized"
            for node in readers:
                node.input[:] = [dq.output[0] if i == name else i for i in node.input]
        else:
            model.graph.node.remove(dq)
            if not any(q.output[0] in n.input for n in model.graph.node):
                model.graph.node.remove(q)
        for node in model.graph.node:
            node.output[:] = [name if o == source else o for o in node.output]
            node.input[:] = [name if i == source else i for i in node.input]
        freed.append(name)
    return freed


@contextlib.contextmanager
def _one_line_errors(step: str) -> Any:
    """ORT's quantization tools raise many unrelated exception types with long messages."""
    try:
        yield
    except VitqbenchError:  # e.g. an unreadable calibration image, already one line
        raise
    except Exception as exc:
        raise VitqbenchError(f"ONNX Runtime's {step} failed: {first_line(exc)}") from exc


@contextlib.contextmanager
def _quiet() -> Any:
    """Silence ORT's quantization prints and warnings (histogram chatter per batch, unused initializers)."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    onnxruntime.set_default_logger_severity(3)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)  # ORT's own severity stays at errors only, as vitqbench.runtime sets it


def quantize_int8(
    model: onnx.ModelProto,
    meta: ModelMetadata,
    config: Int8Config,
    calib: CalibrationSet,
    progress: bool = True,
) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Quantize weights (int8) and activations (``config.activation_type``) with static calibration.

    ``meta`` is updated in place when the head is quantized (``attach_head``), so feature scores use
    the head the int8 model actually computes with.
    """
    with tempfile.TemporaryDirectory(prefix="vitqbench-int8-") as tmp:
        pre_path, out_path = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        with _quiet(), _one_line_errors("quant_pre_process"):
            quant_pre_process(model, str(pre_path))
        pre = onnx.load(str(pre_path))
        _name_nodes(pre)
        onnx.save(pre, str(pre_path))
        excluded = resolve_exclusions(pre, meta, config.exclude)
        head_refs = head_inputs(pre, meta)
        if meta.head is not None and "weight" not in head_refs:
            raise VitqbenchError(f"the classifier head {meta.head.weight!r} is gone after quant_pre_process")
        extra = {
            "ActivationSymmetric": config.symmetric_activations,
            # One window per batch: bounded memory for histogram calibrators (see BatchReader).
            "CalibStridedMinMax": 1,
            "CalibPercentile": config.percentile,
        }
        if config.calib_method != "minmax":
            # Histogram calibrators fail on an empty window, so the window count must match the images
            # that decode; minmax takes empty windows, and keeps its single pass.
            calib = calib.readable().rebatched(HISTOGRAM_BATCH)
        with _progress(progress, len(calib.indices)) as advance, _quiet(), _one_line_errors("quantize_static"):
            quantize_static(
                str(pre_path),
                str(out_path),
                BatchReader(calib, meta.input_name, on_batch=advance),
                quant_format=QuantFormat.QDQ,
                per_channel=config.per_channel,
                activation_type=ACTIVATION_TYPES[config.activation_type],
                weight_type=QuantType.QInt8,
                reduce_range=config.reduce_range,
                nodes_to_exclude=excluded,
                op_types_to_quantize=MATMUL_OPS if config.quantize_ops == "matmul" else None,
                calibrate_method=CALIB_METHODS[config.calib_method],
                calibration_providers=[name for name, _ in calib.config.target.providers],
                extra_options=extra,
            )
        quantized = onnx.load(str(out_path))
    float_outputs = keep_outputs_float(quantized, list(meta.outputs.values()))
    head = effective_head(quantized, head_refs, meta) if head_refs else None
    if head is not None:
        attach_head(quantized, meta, *head)
    ops = [n.op_type for n in quantized.graph.node]
    record = {
        "format": "qdq",
        "weight_type": "int8",
        "activation_type": config.activation_type,
        "per_channel": config.per_channel,
        "symmetric_activations": config.symmetric_activations,
        "reduce_range": config.reduce_range,
        "calib_method": config.calib_method,
        **({"percentile": config.percentile} if config.calib_method == "percentile" else {}),
        "exclude": list(config.exclude),
        "float_nodes": excluded,
        "head_quantized": head is not None,
        "float_outputs": float_outputs,
        "quantize_linear_nodes": ops.count("QuantizeLinear"),
        "dequantize_linear_nodes": ops.count("DequantizeLinear"),
        "onnxruntime": onnxruntime.__version__,
    }
    return quantized, record


@contextlib.contextmanager
def _progress(enabled: bool, total: int) -> Any:
    """A rich bar on stderr (stdout is silenced around ORT), counting calibration images."""
    if not enabled:
        yield lambda n: None
        return
    bar = progress_bar(TextColumn("calibrating"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with bar:
        task = bar.add_task("calibrating", total=total)
        yield lambda n: bar.advance(task, n)
