"""Mixed precision: each unit of a ViT (``units.py``) at its own precision, in one QDQ graph.

Every unit precision is the ViT-aware recipe of ``wxax.py`` at that unit's widths (``w8a8`` here is
the recipe at 8 bits, not ORT's ``quantize_static``; ``w4`` is 4-bit per-channel weights with float
activations, not the block-wise MatMulNBits pass), so one calibration serves every unit and a plan
whose units all say ``w4a4`` writes the very graph scheme ``w4a4`` writes. A plan file names the
model it was made for (its SHA-256), the granularity, each unit's precision and the recipe; its
hash names the ``mixed`` precision in every table (``mixed@1a2b3c4d``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnx

from vitqbench.errors import VitqbenchError
from vitqbench.files import write_text_atomic
from vitqbench.metadata import ModelMetadata
from vitqbench.quant.execution import execution_summary
from vitqbench.quant.int4_graph import find_layers
from vitqbench.quant.int8 import _name_nodes
from vitqbench.quant.schemes import QuantRecord, register_scheme
from vitqbench.quant.units import GRANULARITIES, Unit, find_units
from vitqbench.quant.wxax import Calibrated, Precision, WxAxConfig, calibrate_wxax, write_wxax

FP32 = "fp32"
# A unit's precision -> (weight bits, activation bits; None: float activations). None: left in float.
UNIT_PRECISIONS: dict[str, Precision | None] = {
    FP32: None,
    "w8a8": (8, 8),
    "w6a6": (6, 6),
    "w4a8": (4, 8),
    "w4": (4, None),
    "w4a4": (4, 4),
}
PLAN_FORMAT = 1
# The recipe options a plan records (the rest of WxAxConfig's fields are the plan itself or run settings).
RECIPE_OPTIONS = (
    "weight_algo",
    "act_range",
    "percentile",
    "reparam",
    "alpha",
    "softmax",
    "gelu_asym",
    "first_last_8bit",
)


def check_unit_precision(precision: str, what: str = "precision") -> str:
    if precision not in UNIT_PRECISIONS:
        raise VitqbenchError(f"unknown unit {what} {precision!r}; choose from {', '.join(UNIT_PRECISIONS)}")
    return precision


@dataclass
class MixedPlan:
    """Which precision each unit of one model gets; ``hash`` identifies it (model, units, recipe)."""

    model_sha256: str
    granularity: str
    units: dict[str, str]  # unit name -> unit precision, every unit of the model
    recipe: dict[str, Any] = field(default_factory=dict)
    model_file: str = ""
    summary: dict[str, Any] = field(default_factory=dict)  # how the plan was found (budget, estimates, check)

    @property
    def hash(self) -> str:
        core = {"model": self.model_sha256, "granularity": self.granularity, "units": self.units, "recipe": self.recipe}
        return hashlib.sha256(json.dumps(core, sort_keys=True).encode()).hexdigest()[:12]

    @property
    def label(self) -> str:
        return f"mixed@{self.hash[:8]}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "vitqbench_plan": PLAN_FORMAT,
            "hash": self.hash,
            "model": {"file": self.model_file, "sha256": self.model_sha256},
            "granularity": self.granularity,
            "units": dict(self.units),
            "recipe": dict(self.recipe),
            "summary": self.summary,
        }

    def save(self, path: Path) -> None:
        write_text_atomic(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_dict(cls, data: Any, origin: str = "plan") -> MixedPlan:
        if not isinstance(data, dict) or data.get("vitqbench_plan") != PLAN_FORMAT:
            raise VitqbenchError(f"{origin} is not a vitqbench plan (format {PLAN_FORMAT})")
        try:
            plan = cls(
                model_sha256=str(data["model"]["sha256"]),
                granularity=str(data["granularity"]),
                units={str(k): str(v) for k, v in dict(data["units"]).items()},
                recipe=dict(data.get("recipe") or {}),
                model_file=str(data["model"].get("file", "")),
                summary=dict(data.get("summary") or {}),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise VitqbenchError(f"{origin} is not a valid plan: {exc}") from exc
        if plan.granularity not in GRANULARITIES:
            raise VitqbenchError(f"{origin}: granularity {plan.granularity!r} is not one of {', '.join(GRANULARITIES)}")
        for precision in plan.units.values():
            check_unit_precision(precision)
        unknown = [k for k in plan.recipe if k not in RECIPE_OPTIONS]
        if unknown:
            raise VitqbenchError(f"{origin}: unknown recipe option(s) {', '.join(unknown)}")
        return plan

    @classmethod
    def load(cls, path: Path) -> MixedPlan:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise VitqbenchError(f"cannot read plan {path}: {exc}") from exc
        return cls.from_dict(data, origin=str(path))

    def check_parent(self, sha256: str, file: str) -> None:
        """Refuse a plan made for another model file (``sha256`` of ``file``), in one line."""
        if sha256 != self.model_sha256:
            raise VitqbenchError(
                f"the plan was made for another model ({self.model_file or 'unnamed'}, sha256 "
                f"{self.model_sha256[:12]}), not {file} (sha256 {sha256[:12]})"
            )

    def scheme(self, **run_options: Any) -> MixedConfig:
        return MixedConfig(
            **self.recipe,
            units=dict(self.units),
            granularity=self.granularity,
            model_sha256=self.model_sha256,
            **run_options,
        )


def plan_from_metadata(meta: ModelMetadata) -> MixedPlan:
    """The plan a ``mixed`` model was quantized with, read back from its metadata."""
    record = meta.quantization or {}
    if record.get("scheme") != MixedConfig.name:
        raise VitqbenchError(f"{meta.display_name} is {meta.precision}, not a mixed-precision model")
    options = record.get("options") or {}
    return MixedPlan(
        model_sha256=record["parent"]["sha256"],
        granularity=record["granularity"],
        units=dict(record["units"]),
        recipe={k: options[k] for k in RECIPE_OPTIONS if k in options},
        model_file=record["parent"].get("file", ""),
    )


@register_scheme
@dataclass
class MixedConfig(WxAxConfig):
    """Scheme ``mixed``: ``units`` maps each unit (``units.py``) to a unit precision; absent units stay fp32."""

    units: dict[str, str] = field(default_factory=dict)
    granularity: str = "block"
    model_sha256: str = ""  # the file the plan was made for ("": any)

    name: ClassVar[str] = "mixed"
    summary: ClassVar[str] = "a precision per unit (layer or block) from a plan: vitqbench quantize --plan"

    def check(self) -> None:
        super().check()
        if self.granularity not in GRANULARITIES:
            raise VitqbenchError(f"mixed: granularity {self.granularity!r} is not one of {', '.join(GRANULARITIES)}")
        if not any(p != FP32 for p in self.units.values()):
            raise VitqbenchError("mixed: no unit is quantized; give a plan (vitqbench quantize --plan PLAN.json)")
        if self.quantize_ops != "matmul":
            raise VitqbenchError("mixed: only quantize_ops matmul (the residual stream stays float)")
        for precision in self.units.values():
            check_unit_precision(precision)

    def check_input(self, model: onnx.ModelProto, meta: ModelMetadata, sha256: str, file: str) -> None:
        """The plan's model (by hash) and every unit it names in that graph, before any calibration."""
        if self.model_sha256:
            self.plan().check_parent(sha256, file)
        self.node_precisions(named_copy(model), meta)

    def plan(self) -> MixedPlan:
        return MixedPlan(self.model_sha256, self.granularity, dict(self.units), self.recipe())

    def node_precisions(self, model: onnx.ModelProto, meta: ModelMetadata) -> dict[str, Precision]:
        """Node name -> widths for ``model`` (nodes named), refusing a unit the graph does not have."""
        return node_precisions(find_units(model, meta, self.granularity), self.units)

    def quantize(
        self, model: onnx.ModelProto, meta: ModelMetadata, calib: Any, progress: bool = True
    ) -> tuple[onnx.ModelProto, QuantRecord]:
        named = named_copy(model)
        precisions = self.node_precisions(named, meta)
        calibrated = calibrate_wxax(named, meta, self, calib, precisions)
        return self.write(calibrated, meta, precisions)

    def write(
        self, calibrated: Calibrated, meta: ModelMetadata, precisions: dict[str, Precision]
    ) -> tuple[onnx.ModelProto, QuantRecord]:
        quantized, details = write_wxax(calibrated, meta, self, precisions)
        details.update(execution_summary(quantized))
        details["options"] = {k: v for k, v in details["options"].items() if k in RECIPE_OPTIONS}
        details.update(granularity=self.granularity, units=dict(self.units))
        if self.model_sha256:
            details["plan_hash"] = self.plan().hash
        widths = list(precisions.values())
        acts = [a for _, a in widths if a is not None]
        record = QuantRecord(
            scheme=self.name,
            weight_bits=min((w for w, _ in widths), default=32),
            activation_bits=min(acts) if acts and len(acts) == len(widths) else None,
            quantized_inputs=self.quantize_ops,
            execution=details.pop("execution"),
            algorithm=f"vitqbench_qdq_{self.weight_algo}",
            details=details,
        )
        return quantized, record

    def recipe(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in RECIPE_OPTIONS}


def named_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    _name_nodes(out)
    return out


def node_precisions(units: list[Unit], assignment: dict[str, str]) -> dict[str, Precision]:
    known = {u.name for u in units}
    missing = [name for name in assignment if name not in known]
    if missing:
        raise VitqbenchError(
            f"unit(s) {', '.join(missing[:5])} are not in this model's graph (its units: "
            f"{', '.join(sorted(known)[:6])}{', ...' if len(known) > 6 else ''})"
        )
    out: dict[str, Precision] = {}
    for unit in units:
        widths = UNIT_PRECISIONS[assignment.get(unit.name, FP32)]
        if widths is not None:
            out.update(dict.fromkeys(unit.nodes, widths))
    return out


def unit_weight_bytes(
    model: onnx.ModelProto, meta: ModelMetadata, units: list[Unit], first_last_8bit: bool = True
) -> dict[str, dict[str, int]]:
    """Bytes each unit's weights take at each unit precision, as our QDQ files store them.

    4-bit codes pack two per byte, 6- and 8-bit codes take a byte, fp32 four; each output channel
    adds a float32 scale. With ``first_last_8bit`` the patch embedding and head are 8-bit whenever
    quantized. Attention matmuls hold no weights (0 bytes at every precision).
    """
    graph = model.graph
    layers = {layer.node.name: layer for layer in find_layers(graph, meta)}
    inits = {i.name: i for i in graph.initializer}
    shapes: dict[str, tuple[int, int, bool]] = {}  # node -> (inputs, outputs, edge)
    for node in graph.node:
        if node.name in layers:
            k, n = layers[node.name].weight.shape
            shapes[node.name] = (k, n, layers[node.name].is_head)
        elif node.op_type == "Conv" and len(node.input) > 1 and node.input[1] in inits:
            dims = list(inits[node.input[1]].dims)
            shapes[node.name] = (int(np.prod(dims[1:])), dims[0], True)
    out: dict[str, dict[str, int]] = {}
    for unit in units:
        sizes = {}
        for precision, widths in UNIT_PRECISIONS.items():
            total = 0
            for name in unit.nodes:
                if name not in shapes:
                    continue
                k, n, edge = shapes[name]
                if widths is None:
                    total += 4 * k * n
                    continue
                bits = 8 if edge and first_last_8bit else widths[0]
                total += (k * n + 1) // 2 + 4 * n if bits == 4 else k * n + 4 * n
            sizes[precision] = total
        out[unit.name] = sizes
    return out
