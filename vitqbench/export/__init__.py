"""timm -> ONNX export with `logits` and `features` outputs, verified against PyTorch.

Public API: ``export_model``, ``ExportResult``, ``Verification``, ``build_model``, ``BuiltModel``,
``data_config_for``, ``load_state_dict``. Imported lazily so that commands which never export
(bench, eval, --help) do not pay for importing torch and timm.
"""

from __future__ import annotations

from typing import Any

DEFAULT_OPSET = 18  # the dynamo exporter's minimum
DEFAULT_TOLERANCE = 1e-3  # max |ORT - PyTorch| accepted by verification, logits and features

_EXPORTS = {
    "export_model": "vitqbench.export.onnx_export",
    "ExportResult": "vitqbench.export.onnx_export",
    "Verification": "vitqbench.export.onnx_export",
    "build_model": "vitqbench.export.model",
    "BuiltModel": "vitqbench.export.model",
    "data_config_for": "vitqbench.export.model",
    "load_state_dict": "vitqbench.export.model",
}

__all__ = ["DEFAULT_OPSET", "DEFAULT_TOLERANCE", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_EXPORTS[name]), name)
