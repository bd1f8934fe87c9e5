"""timm -> ONNX export with `logits` and `features` outputs, verified against PyTorch."""

from vitqbench.export.model import BuiltModel, build_model, data_config_for, load_state_dict
from vitqbench.export.onnx_export import (
    DEFAULT_OPSET,
    DEFAULT_TOLERANCE,
    ExportResult,
    Verification,
    export_model,
)

__all__ = [
    "DEFAULT_OPSET",
    "DEFAULT_TOLERANCE",
    "BuiltModel",
    "ExportResult",
    "Verification",
    "build_model",
    "data_config_for",
    "export_model",
    "load_state_dict",
]
