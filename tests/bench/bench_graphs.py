"""Tiny hand-built ONNX graphs for bench's failure paths (no metadata, built in milliseconds)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _save(path: Path, nodes, inputs, outputs, inits=()) -> Path:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.save(model, str(path))
    return path


def fails_at_run(path: Path) -> Path:
    """Loads fine, but reshaping 3*32*32 values into rows of 7 fails inside session.run."""
    shape = numpy_helper.from_array(np.array([-1, 7], dtype=np.int64), "shape")
    return _save(
        path,
        [helper.make_node("Reshape", ["pixel_values", "shape"], ["logits"])],
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)],
        [shape],
    )


def token_input(path: Path) -> Path:
    """A text-like model: int64 token ids, not an image."""
    return _save(
        path,
        [helper.make_node("Cast", ["ids"], ["out"], to=TensorProto.FLOAT)],
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 16])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 16])],
    )


def fixed_batch(path: Path, batch: int = 1) -> Path:
    return _save(
        path,
        [helper.make_node("Identity", ["x"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3, 8, 8])],
    )


def two_inputs(path: Path) -> Path:
    return _save(
        path,
        [helper.make_node("Add", ["a", "b"], ["y"])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 3, 8, 8]) for n in ("a", "b")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3, 8, 8])],
    )
