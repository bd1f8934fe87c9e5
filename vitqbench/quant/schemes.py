"""The scheme registry: every precision is a small config dataclass registered by name.

A scheme's fields are its options; ``needs_calibration`` says whether it reads images (the one
place that rule lives); ``quantize`` turns a float ONNX model into a quantized copy and a
``QuantRecord``. ``create_scheme("w4", algo="rtn")`` builds one, naming the valid schemes and
options when asked for something else, as the OOD score registry does. A new scheme is one
module with one ``@register_scheme`` class, imported by the package's ``__init__``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import onnx

from vitqbench.errors import VitqbenchError
from vitqbench.metadata import ModelMetadata

SCHEMES: dict[str, type[SchemeConfig]] = {}
# The older --bits spelling of two schemes.
BITS_ALIASES = {8: "w8a8", 4: "w4"}
EXECUTIONS = ("integer-kernels", "emulated", "float16")
QUANTIZE_OPS = ("matmul", "all")


@dataclass
class QuantRecord:
    """What a scheme did, as the model's metadata and every result table report it.

    ``quantized_inputs`` names which op inputs were quantized (``matmul``: MatMul/Gemm/Conv inputs,
    the field's definition; ``all``: every op ORT quantizes; ``weights``: weights only).
    ``execution`` is read from the graph ONNX Runtime actually runs (see ``execution.py``).
    """

    scheme: str
    weight_bits: int
    activation_bits: int | None  # None: activations stay float (weight-only schemes)
    quantized_inputs: str
    execution: str
    algorithm: str
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.details,
            "scheme": self.scheme,
            "bits": self.weight_bits,  # the record's older key, read by caches and reports
            "weight_bits": self.weight_bits,
            "activation_bits": self.activation_bits,
            "quantized_inputs": self.quantized_inputs,
            "execution": self.execution,
            "algorithm": self.algorithm,
        }


@dataclass
class SchemeConfig:
    """Base of every scheme config; subclasses are dataclasses whose fields are the scheme's options."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""

    @property
    def needs_calibration(self) -> bool:
        return True

    def resolved(self, has_calib: bool) -> SchemeConfig:
        """This config with defaults that depend on whether calibration images were given filled in."""
        return self

    def check(self) -> None:
        """Raise one line for option values the scheme cannot use."""

    def check_input(self, model: onnx.ModelProto, meta: ModelMetadata, sha256: str, file: str) -> None:
        """Raise one line when the config cannot apply to this input (a mixed plan made for another
        model, or naming units its graph lacks); called before any calibration."""

    def quantize(
        self, model: onnx.ModelProto, meta: ModelMetadata, calib: Any, progress: bool = True
    ) -> tuple[onnx.ModelProto, QuantRecord]:
        raise NotImplementedError


def register_scheme(cls: type[SchemeConfig]) -> type[SchemeConfig]:
    """Class decorator: make a scheme available to ``create_scheme`` under ``cls.name``."""
    if not cls.name:
        raise TypeError(f"{cls.__name__} needs a class attribute `name`")
    SCHEMES[cls.name] = cls
    return cls


def scheme_names() -> list[str]:
    return list(SCHEMES)


def scheme_options(name: str) -> list[str]:
    return [f.name for f in dataclasses.fields(scheme_class(name)) if f.init and not f.name.startswith("_")]


def scheme_class(name: str) -> type[SchemeConfig]:
    if name not in SCHEMES:
        raise VitqbenchError(f"unknown scheme {name!r}; choose from {', '.join(SCHEMES)}")
    return SCHEMES[name]


def create_scheme(name: str, **options: Any) -> SchemeConfig:
    """A scheme config by registry name, e.g. ``create_scheme("w4a4", act_range="mse")``."""
    cls = scheme_class(name)
    known = scheme_options(name)
    unknown = [k for k in options if k not in known]
    if unknown:
        raise VitqbenchError(
            f"option(s) {', '.join(unknown)} do not apply to scheme {name!r}"
            f" (its options: {', '.join(known) or 'none'})"
        )
    return cls(**options)
