"""The model-metadata contract: one versioned JSON document in every ONNX file vitqbench writes.

Any command can take any vitqbench ONNX file and know how to feed it (``data_config``), what it
outputs (``outputs``), where its classifier head lives (``head``) and how it was made (``source``,
``quantization``), without importing timm.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from vitqbench.errors import VitqbenchError, first_line
from vitqbench.files import sha256_file

METADATA_KEY = "vitqbench"
SCHEMA_VERSION = 1
LOGITS = "logits"
FEATURES = "features"
ATTN_CLS = "attn_cls"  # --attention: per block, the class token's attention over tokens, mean over heads [B, depth, N]
ATTN_ENTROPY = "attn_entropy"  # per block and head, the mean over queries of each row's entropy [B, depth, heads]
# The class token's attention rollout (Abnar & Zuidema 2020) through every block [B, N]; ``attention``
# in the metadata says which leading tokens are not patches and the patch grid the others form.
ATTN_ROLLOUT = "attn_rollout"
INPUT = "pixel_values"


# timm's interpolation names (torchvision's pil_modes_mapping) and crop modes
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")
CROP_MODES = ("center", "squash", "border")
MAX_INPUT_SIDE = 8192
# timm's configs use 0.75-1.0 (above 1 pads); below 0.1 the resize before the crop explodes in size
CROP_PCT_RANGE = (0.1, 2.0)


def check_choice(value: str, choices: tuple[str, ...], what: str) -> None:
    if value not in choices:
        raise VitqbenchError(f"unknown {what} {value!r} (one of {', '.join(choices)})")


def numbers_field(d: dict[str, Any], name: str) -> tuple[float, ...]:
    """A list of numbers from JSON or timm (not a string: ``tuple("0.5")`` would be characters)."""
    value = d.get(name)
    ok = isinstance(value, (list, tuple)) and value
    if not ok or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise VitqbenchError(f"data_config.{name} must be a list of numbers, got {value!r:.80}")
    return tuple(float(v) for v in value)


@dataclass
class DataConfig:
    """timm's eval data config (``resolve_data_config`` keys), enough to reproduce its transform.

    Every instance is valid (checked on construction): whether it comes from export flags, timm, a
    training checkpoint's header or a file's metadata, a bad value is one line naming the field.
    """

    input_size: tuple[int, int, int]  # (C, H, W)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bicubic"
    crop_pct: float = 0.875
    crop_mode: str = "center"

    def __post_init__(self) -> None:
        size = self.input_size
        if len(size) != 3 or not all(float(v).is_integer() and 1 <= v <= MAX_INPUT_SIDE for v in size):
            raise VitqbenchError(f"data_config.input_size must be 3 whole numbers in 1..{MAX_INPUT_SIDE}, got {size}")
        channels = int(size[0])
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) != channels:
                raise VitqbenchError(f"data_config.{name} has {len(values)} values for a {channels}-channel input")
            if not all(math.isfinite(v) for v in values):
                raise VitqbenchError(f"data_config.{name} must be finite, got {values}")
        if not all(v > 0 for v in self.std):
            raise VitqbenchError(f"data_config.std must be positive, got {self.std}")
        low, high = CROP_PCT_RANGE
        if not (math.isfinite(self.crop_pct) and low <= self.crop_pct <= high):
            raise VitqbenchError(f"data_config.crop_pct must be in [{low}, {high}], got {self.crop_pct}")
        check_choice(self.interpolation, INTERPOLATIONS, "data_config.interpolation")
        check_choice(self.crop_mode, CROP_MODES, "data_config.crop_mode")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataConfig:
        if not isinstance(d, dict):
            raise VitqbenchError(f"data_config must be an object, got {type(d).__name__}")
        crop_pct = d.get("crop_pct")
        if crop_pct is not None and (isinstance(crop_pct, bool) or not isinstance(crop_pct, (int, float))):
            raise VitqbenchError(f"data_config.crop_pct must be a number, got {crop_pct!r:.80}")
        for name in ("interpolation", "crop_mode"):
            if name in d and not isinstance(d[name], str):
                raise VitqbenchError(f"data_config.{name} must be a string, got {d[name]!r:.80}")
        return cls(
            input_size=tuple(int(v) if float(v).is_integer() else v for v in numbers_field(d, "input_size")),
            mean=numbers_field(d, "mean"),
            std=numbers_field(d, "std"),
            interpolation=d.get("interpolation", "bicubic"),
            crop_pct=0.875 if crop_pct is None else float(crop_pct),
            crop_mode=d.get("crop_mode", "center"),
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
    optimization: dict[str, Any] | None = None  # ORT's saved optimized graph (level, ORT version); None: as written
    # export --attention: {"prefix_tokens": class/distillation tokens before the patches, "grid": [rows, cols]}
    attention: dict[str, Any] | None = None
    schema_version: int = SCHEMA_VERSION

    @property
    def precision(self) -> str:
        """A short label: ``fp32`` or the quantization scheme (``w8a8``, ``w4a4``, ...)."""
        if not self.quantization:
            return "fp32"
        if self.quantization.get("scheme") == "mixed":  # a plan's precisions: named by its hash
            return f"mixed@{self.quantization.get('plan_hash', '')[:8]}"
        return self.quantization.get("scheme") or f"int{self.quantization['bits']}"

    @property
    def execution(self) -> str | None:
        """How ONNX Runtime runs a quantized model: ``integer-kernels``, ``emulated`` or ``float16`` (None: fp32)."""
        if not self.quantization:
            return None
        return self.quantization.get("execution", "integer-kernels")

    @property
    def display_name(self) -> str:
        return self.timm_name + (f".{self.timm_tag}" if self.timm_tag else "")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelMetadata:
        """Parse and check the document; any malformed field is one line naming it."""
        try:
            d = json.loads(text)
        except (json.JSONDecodeError, TypeError) as exc:
            raise VitqbenchError(f"not valid JSON ({exc})") from None
        if not isinstance(d, dict):
            raise VitqbenchError(f"a JSON {type(d).__name__}, not an object")
        version = d.get("schema_version")
        if version != SCHEMA_VERSION:
            raise VitqbenchError(f"unsupported vitqbench metadata version {version!r} (this is {SCHEMA_VERSION})")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise VitqbenchError(f"unknown field(s) {', '.join(unknown)}")
        for name, kind, required in _FIELDS:
            value = d.get(name)
            if value is None and not required:
                continue
            if isinstance(value, bool) or not isinstance(value, kind):
                shown = "missing" if name not in d else f"a {type(value).__name__}"
                raise VitqbenchError(f"field {name} must be {_KIND_NAMES[kind]}, got {shown}")
        for name in ("num_classes", "feature_dim"):
            if d[name] < 1:
                raise VitqbenchError(f"field {name} must be positive, got {d[name]}")
        if not all(isinstance(d.get("outputs", {}).get(k, ""), str) for k in (LOGITS, FEATURES)):
            raise VitqbenchError("field outputs must map logits and features to output names")
        names = d.get("class_names")
        if names is not None and not all(isinstance(n, str) for n in names):
            raise VitqbenchError("field class_names must be a list of strings")
        if d.get("attention") is not None:
            attention_layout(d["attention"])  # a bad layout is one line here, not a wrong plot later
        d["data_config"] = DataConfig.from_dict(d["data_config"])
        d["head"] = _head(d["head"]) if d.get("head") else None
        return cls(**d)


_FIELDS = (  # (name, JSON type, required) of the metadata document
    ("timm_name", str, True),
    ("timm_tag", str, False),
    ("model_kwargs", dict, True),
    ("source", dict, True),
    ("num_classes", int, True),
    ("feature_dim", int, True),
    ("data_config", dict, True),
    ("head", dict, False),
    ("class_names", list, False),
    ("input_name", str, False),
    ("outputs", dict, False),
    ("opset", int, False),
    ("quantization", dict, False),
    ("optimization", dict, False),
    ("attention", dict, False),
)
_KIND_NAMES = {str: "a string", dict: "an object", int: "a whole number", list: "a list"}


def attention_layout(attention: dict[str, Any] | None) -> tuple[int, tuple[int, int]] | None:
    """``(prefix_tokens, (rows, cols))`` of an ``export --attention`` model's tokens, None if not recorded."""
    if attention is None:
        return None
    prefix, grid = attention.get("prefix_tokens"), attention.get("grid")
    whole = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
    if not (whole(prefix) and prefix >= 0 and isinstance(grid, list) and len(grid) == 2):
        raise VitqbenchError("field attention must hold prefix_tokens (a whole number) and grid [rows, cols]")
    if not all(whole(v) and v >= 1 for v in grid):
        raise VitqbenchError(f"field attention.grid must be two positive whole numbers, got {grid}")
    return prefix, (grid[0], grid[1])


def _head(d: dict[str, Any]) -> HeadRef:
    bias = d.get("bias")
    if not isinstance(d.get("weight"), str) or not isinstance(bias, (str, type(None))):
        raise VitqbenchError("field head must name its weight (and bias) initializers as strings")
    layout = d.get("layout", "out_in")
    check_choice(layout, ("out_in", "in_out"), "head.layout")
    return HeadRef(weight=d["weight"], bias=bias, layout=layout)


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
            try:
                return ModelMetadata.from_json(prop.value)
            except VitqbenchError as exc:
                raise VitqbenchError(f"{origin}: bad vitqbench metadata: {exc}") from None
    raise VitqbenchError(
        f"{origin} has no vitqbench metadata; export it with `vitqbench export MODEL -o OUT.onnx` first"
    )


def load_onnx(path: str | Path, load_weights: bool = True) -> onnx.ModelProto:
    """Load an ONNX file, turning a missing or corrupt file into one clear error."""
    path = Path(path)
    if not path.is_file():
        raise VitqbenchError(f"no such file: {path}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises several unrelated types on garbage input
        raise VitqbenchError(f"{path} is not a readable ONNX model ({type(exc).__name__})") from exc
    if not model.graph.node:  # an empty file parses as an empty model
        raise VitqbenchError(f"{path} is not an ONNX model (no graph)")
    if load_weights and len(model_files(path, model)) > 1:
        try:
            onnx.load_external_data_for_model(model, str(path.parent))
        except Exception as exc:
            raise VitqbenchError(f"{path}: cannot read its external data ({first_line(exc)})") from exc
    if load_weights:
        _check_initializers(path, model)
    return model


# Fields holding one value per element (float16 and the small integer types pack theirs otherwise).
_ONE_PER_ELEMENT = {"float_data", "double_data", "int64_data", "uint64_data"}


def _check_initializers(path: Path, model: onnx.ModelProto) -> None:
    """Each weight's shape must match the values it holds: a damaged file is one line, not a numpy error."""
    for init in model.graph.initializer:
        dims = list(init.dims)
        if any(d < 0 for d in dims):
            raise VitqbenchError(f"{path}: initializer {init.name!r} has a negative dimension {dims}; damaged file")
        if init.data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED) or init.external_data:
            continue
        count = math.prod(dims)
        dtype = helper.tensor_dtype_to_np_dtype(init.data_type)
        if init.HasField("raw_data"):
            bits = 4 if init.data_type in _FOUR_BIT else 8 * dtype.itemsize
            held, want = len(init.raw_data), (count * bits + 7) // 8
        else:
            field = helper.tensor_dtype_to_field(init.data_type)
            if field not in _ONE_PER_ELEMENT:
                continue
            held, want = len(getattr(init, field)), count
        if held != want:
            raise VitqbenchError(
                f"{path}: initializer {init.name!r} of shape {dims} holds {held} of the {want} values or bytes "
                "it needs; the file is damaged"
            )


_FOUR_BIT = {onnx.TensorProto.INT4, onnx.TensorProto.UINT4} | (
    {onnx.TensorProto.FLOAT4E2M1} if hasattr(onnx.TensorProto, "FLOAT4E2M1") else set()
)


def model_files(path: str | Path, model: onnx.ModelProto | None = None) -> list[Path]:
    """The ONNX file and the external-data files its initializers name (weights saved beside it).

    As ONNX Runtime requires, each must lie inside the model's folder: a relative location without
    "..", not a link out. Checked before anything opens, hashes or sizes them.
    """
    path = Path(path)
    model = model if model is not None else load_onnx(path, load_weights=False)
    tensors = [*model.graph.initializer]
    tensors += [attr.t for node in model.graph.node for attr in node.attribute if attr.HasField("t")]
    locations = sorted({e.value for t in tensors for e in t.external_data if e.key == "location"})
    folder = Path(os.path.realpath(path.parent))
    for name in locations:
        escapes = Path(name).is_absolute() or ".." in Path(name).parts
        if escapes or not Path(os.path.realpath(path.parent / name)).is_relative_to(folder):
            raise VitqbenchError(f"{path}: external data {name!r} lies outside the model's folder; refused")
    return [path, *(path.parent / name for name in locations)]


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
