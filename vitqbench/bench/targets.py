"""What `bench` measures: ONNX files checked in the parent (so workers only load), and the torch row."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from vitqbench.errors import VitqbenchError
from vitqbench.metadata import METADATA_KEY, get_metadata, load_onnx, model_size_bytes

_FLOAT_TYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16"}


@dataclass(frozen=True)
class Target:
    label: str
    kind: str  # "onnx" or "torch"
    input_name: str
    input_shape: tuple[int, int, int]  # (C, H, W)
    dtype: str
    path: Path | None = None
    fixed_batch: int | None = None  # the ONNX input's batch dimension when it is not dynamic
    model_mb: float | None = None
    precision: str | None = None
    execution: str | None = None
    timm_name: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    num_classes: int | None = None

    def check_batch(self, batch: int) -> None:
        if self.fixed_batch is not None and batch != self.fixed_batch:
            raise VitqbenchError(
                f"{self.label} has a fixed batch size of {self.fixed_batch}; cannot run batch {batch}"
            )


def _dims(value_info: onnx.ValueInfoProto) -> list[int | None]:
    return [d.dim_value if d.HasField("dim_value") else None for d in value_info.type.tensor_type.shape.dim]


def inspect_onnx(path: str | Path) -> Target:
    """Check that ``path`` is an ONNX model with one NCHW float image input and describe it."""
    path = Path(path)
    model = load_onnx(path, load_weights=False)
    weights = {init.name for init in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in weights]
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs) or "none"
        raise VitqbenchError(f"{path} must have exactly one image input; it has {len(inputs)} ({names})")
    (inp,) = inputs
    has_meta = any(p.key == METADATA_KEY for p in model.metadata_props)
    meta = get_metadata(model, str(path)) if has_meta else None
    elem = inp.type.tensor_type.elem_type
    dtype = _FLOAT_TYPES.get(elem)
    dims = _dims(inp)
    if dtype is None or len(dims) != 4:
        got = onnx.TensorProto.DataType.Name(elem).lower() if elem else "non-tensor"
        raise VitqbenchError(
            f"{path}: input {inp.name!r} is not an image tensor (got {got} of rank {len(dims)}; "
            "need float [batch, channels, height, width])"
        )
    chw = [d or None for d in dims[1:]]
    if meta is not None:
        chw = [d or m for d, m in zip(chw, meta.data_config.input_size, strict=True)]
    if any(d is None for d in chw):
        raise VitqbenchError(f"{path}: input {inp.name!r} has no fixed channels/height/width and no metadata")
    if not 1 <= chw[0] <= 4:
        raise VitqbenchError(f"{path}: input {inp.name!r} is not an NCHW image tensor ({chw[0]} channels)")
    return Target(
        label=path.name,
        kind="onnx",
        path=path,
        input_name=inp.name,
        input_shape=(int(chw[0]), int(chw[1]), int(chw[2])),
        dtype=dtype,
        fixed_batch=dims[0] or None,
        model_mb=model_size_bytes(path, model) / 2**20,
        precision=meta.precision if meta else None,
        execution=meta.execution if meta else None,
        timm_name=meta.timm_name if meta else None,
        model_kwargs=dict(meta.model_kwargs) if meta else {},
        num_classes=meta.num_classes if meta else None,
    )


def torch_target(reference: Target) -> Target:
    """The PyTorch eager row: the reference ONNX model's timm architecture, random init."""
    if reference.timm_name is None:
        raise VitqbenchError(f"--torch needs vitqbench metadata (timm name) in {reference.path}")
    return dataclasses.replace(
        reference,
        label=f"torch:{reference.timm_name}",
        kind="torch",
        path=None,
        fixed_batch=None,
        model_mb=None,
        precision="fp32",
        execution="float",
        dtype="float32",
    )


def label_targets(targets: list[Target]) -> list[Target]:
    """File names as labels, or the full paths where two files share a name."""
    names = [t.label for t in targets]
    return [dataclasses.replace(t, label=str(t.path)) if names.count(t.label) > 1 else t for t in targets]
