"""The deployment artifact: ONNX Runtime's optimized graph of a vitqbench model, saved with its metadata.

ORT optimizes every graph when a session starts (constant folding, fusions, QDQ -> integer kernels).
Saving the result (``SessionOptions.optimized_model_filepath``) spares that work at every start and
freezes what ran. A graph optimized at level ``all`` may hold layouts for this CPU and this ORT
version (ORT says so), so the record names both; ``extended`` stays portable across x86 CPUs.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import onnx
import onnxruntime as ort

from vitqbench.errors import VitqbenchError, first_line
from vitqbench.files import atomic_path, check_output_file, sha256_file
from vitqbench.metadata import ModelMetadata, attach_head, get_metadata, load_onnx, read_head, set_metadata
from vitqbench.runtime import CPU, ExecutionTarget, cpu_model, execution_target, session_options

LEVELS = {
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def optimize_model(
    in_path: str | Path, out_path: str | Path, level: str = "extended", target: ExecutionTarget = CPU
) -> ModelMetadata:
    """Write ORT's ``level`` optimization of ``in_path`` (for ``target``) to ``out_path``; return its metadata."""
    in_path, out_path = Path(in_path), check_output_file(out_path)
    if level not in LEVELS:
        raise VitqbenchError(f"unknown --level {level!r}; choose {'|'.join(LEVELS)}")
    if out_path.resolve() == in_path.resolve():
        raise VitqbenchError("the output would overwrite the input; choose another -o path")
    target = execution_target(target).check_available()
    if target.runtime != "onnxruntime":
        raise VitqbenchError(f"optimize saves ONNX Runtime's graph; --provider {target.name} has none to save")
    source = load_onnx(in_path)
    meta = get_metadata(source, origin=str(in_path))
    if meta.optimization:
        raise VitqbenchError(f"{in_path} is already an optimized graph ({meta.optimization['level']})")
    head = read_head(source) if meta.head is not None else None
    with tempfile.TemporaryDirectory(dir=out_path.parent) as tmp:
        optimized_path = Path(tmp) / "optimized.onnx"
        options = session_options(threads=1)
        options.graph_optimization_level = LEVELS[level]
        options.optimized_model_filepath = str(optimized_path)
        try:
            ort.InferenceSession(str(in_path), sess_options=options, providers=target.providers)
        except Exception as exc:  # ORT's own classes, multi-line messages naming the op
            raise VitqbenchError(f"ONNX Runtime cannot optimize {in_path}: {first_line(exc)}") from exc
        optimized = onnx.load(str(optimized_path))
    missing = sorted(set(meta.outputs.values()) - {o.name for o in optimized.graph.output})
    if missing:
        raise VitqbenchError(f"the optimized graph lost output(s) {', '.join(missing)}")
    if head is not None:  # ORT drops initializers no node reads, our head copy among them
        attach_head(optimized, meta, *head)
    meta.optimization = {
        "level": level,
        "provider": target.name,
        "onnxruntime": ort.__version__,
        "cpu": cpu_model() if level == "all" else None,  # level all may hold layouts for this CPU only
        "parent": {"file": in_path.name, "sha256": sha256_file(in_path)},
    }
    set_metadata(optimized, meta)
    with atomic_path(out_path, suffix=".onnx") as tmp_out:
        onnx.save(optimized, str(tmp_out))
    return meta
