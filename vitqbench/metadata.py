"""The model-metadata contract: one versioned JSON document in every ONNX file vitqbench writes.

Any command can take any vitqbench ONNX file and know how to feed it (``data_config``), what it
outputs (``outputs``), where its classifier head lives (``head``) and how it was made (``source``,
``quantization``), without importing timm.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from vitqbench.errors import VitqbenchError
from vitqbench.files import sha256_file

METADATA_KEY = "vitqbench"
SCHEMA_VERSION = 1
LOGITS = "logits"
FEATURES = "features"
INPUT = "pixel_values"


@dataclass
class DataConfig:
    """timm's eval data config (``resolve_data_config`` keys), enough to reproduce its transform."""

    input_size: tuple[int, int, int]  # (C, H, W)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bicubic"
    crop_pct: float = 0.875
    crop_mode: str = "center"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataConfig:
        return cls(
            input_size=tuple(int(v) for v in d["input_size"]),
            mean=tuple(float(v) for v in d["mean"]),
            std=tuple(float(v) for v in d["std"]),
            interpolation=str(d.get("interpolation", "bicubic")),
            crop_pct=float(d.get("crop_pct", 0.875)),
            crop_mode=str(d.get("crop_mode", "center")),
        )


@dataclass
class HeadRef:
    """Names of the float initializers holding the classifier head, ``logits = features @ W.T + b``.

    ``weight`` is stored as [num_classes, D] when ``layout == "out_in"`` (PyTorch's nn.Linear) and
    [D, num_classes] when ``"in_out"`` (what a MatMul consumes).
    """

    weight: str
    bias: str | None
    layout: str = "out_in"


@dataclass
class ModelMetadata:
    timm_name: str
    timm_tag: str | None
    model_kwargs: dict[str, Any]
    source: dict[str, Any]  # {"kind": "pretrained"|"checkpoint"|"random", "path", "sha256", "seed"}
    num_classes: int
    feature_dim: int
    data_config: DataConfig
    head: HeadRef | None
    class_names: list[str] | None = None
    input_name: str = INPUT
    outputs: dict[str, str] = field(default_factory=lambda: {"logits": LOGITS, "features": FEATURES})
    opset: int | None = None
    quantization: dict[str, Any] | None = None  # None for a full-precision model
    schema_version: int = SCHEMA_VERSION

    @property
    def precision(self) -> str:
        """A short label: ``fp32``, ``int8`` or ``int4``."""
        if not self.quantization:
            return "fp32"
        return f"int{self.quantization['bits']}"

    @property
    def display_name(self) -> str:
        return self.timm_name + (f".{self.timm_tag}" if self.timm_tag else "")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelMetadata:
        d = json.loads(text)
        version = d.get("schema_version")
        if version != SCHEMA_VERSION:
            raise VitqbenchError(f"unsupported vitqbench metadata version {version!r} (this is {SCHEMA_VERSION})")
        d["data_config"] = DataConfig.from_dict(d["data_config"])
        d["head"] = HeadRef(**d["head"]) if d.get("head") else None
        return cls(**d)


def set_metadata(model: onnx.ModelProto, meta: ModelMetadata) -> None:
    """Write ``meta`` into ``model.metadata_props``, replacing any earlier vitqbench entry."""
    kept = [p for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    entry = model.metadata_props.add()
    entry.key = METADATA_KEY
    entry.value = meta.to_json()


def get_metadata(model: onnx.ModelProto, origin: str = "model") -> ModelMetadata:
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            return ModelMetadata.from_json(prop.value)
    raise VitqbenchError(
        f"{origin} has no vitqbench metadata; export it with `vitqbench export MODEL -o OUT.onnx` first"
    )


def load_onnx(path: str | Path, load_weights: bool = True) -> onnx.ModelProto:
    """Load an ONNX file, turning a missing or corrupt file into one clear error."""
    path = Path(path)
    if not path.is_file():
        raise VitqbenchError(f"no such file: {path}")
    try:
        model = onnx.load(str(path), load_external_data=load_weights)
    except Exception as exc:  # protobuf raises several unrelated types on garbage input
        raise VitqbenchError(f"{path} is not a readable ONNX model ({type(exc).__name__})") from exc
    if not model.graph.node:  # an empty file parses as an empty model
        raise VitqbenchError(f"{path} is not an ONNX model (no graph)")
    return model


def model_files(path: str | Path, model: onnx.ModelProto | None = None) -> list[Path]:
    """The ONNX file and the external-data files its initializers name (weights saved beside it)."""
    path = Path(path)
    model = model if model is not None else load_onnx(path, load_weights=False)
    locations = {
        entry.value for init in model.graph.initializer for entry in init.external_data if entry.key == "location"
    }
    return [path, *(path.parent / name for name in sorted(locations))]


def model_size_bytes(path: str | Path, model: onnx.ModelProto | None = None) -> int:
    """Bytes on disk of the model and its external-data files."""
    return sum(f.stat().st_size for f in model_files(path, model) if f.is_file())


def model_sha256(path: str | Path) -> str:
    """A content hash of the model with its external-data files: changed weights give a new hash."""
    files = model_files(path)
    if len(files) == 1:
        return sha256_file(files[0])
    digest = hashlib.sha256()
    for file in files:
        if not file.is_file():
            raise VitqbenchError(f"{path}: external-data file {file} is missing")
        digest.update(f"{file.name}:{sha256_file(file)}\n".encode())
    return digest.hexdigest()


def read_metadata(path: str | Path) -> ModelMetadata:
    """The metadata of a vitqbench ONNX file (weights are not loaded)."""
    return get_metadata(load_onnx(path, load_weights=False), origin=str(path))


def initializer_array(model: onnx.ModelProto, name: str) -> np.ndarray:
    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    raise VitqbenchError(f"initializer {name!r} named in the metadata is missing from the model")


def read_head(path_or_model: str | Path | onnx.ModelProto) -> tuple[np.ndarray, np.ndarray]:
    """The classifier head as float arrays ``(W [num_classes, D], b [num_classes])``."""
    model = path_or_model if isinstance(path_or_model, onnx.ModelProto) else load_onnx(path_or_model)
    meta = get_metadata(model)
    if meta.head is None:
        raise VitqbenchError("the model's metadata names no classifier head (scores that read the head need one)")
    weight = initializer_array(model, meta.head.weight).astype(np.float32)
    if meta.head.layout == "in_out":
        weight = weight.T
    if meta.head.bias is None:
        bias = np.zeros(weight.shape[0], dtype=np.float32)
    else:
        bias = initializer_array(model, meta.head.bias).astype(np.float32)
    return np.ascontiguousarray(weight), bias


HEAD_WEIGHT = "vitqbench.head.weight"
HEAD_BIAS = "vitqbench.head.bias"


def attach_head(model: onnx.ModelProto, meta: ModelMetadata, weight: np.ndarray, bias: np.ndarray) -> None:
    """Store a float copy of the head (as the model computes it) and point ``meta.head`` at it.

    Quantizers call this when they replace the head's float initializer, so that feature scores
    (ViM, ReAct) of a quantized model use that model's own effective head.
    """
    names = {HEAD_WEIGHT, HEAD_BIAS}
    kept = [init for init in model.graph.initializer if init.name not in names]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    model.graph.initializer.append(numpy_helper.from_array(np.asarray(weight, np.float32), HEAD_WEIGHT))
    model.graph.initializer.append(numpy_helper.from_array(np.asarray(bias, np.float32), HEAD_BIAS))
    meta.head = HeadRef(weight=HEAD_WEIGHT, bias=HEAD_BIAS, layout="out_in")
