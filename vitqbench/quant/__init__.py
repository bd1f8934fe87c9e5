"""Quantization: one entry point for every scheme (see ``schemes.py`` for the registry).

``quantize_model`` owns what every scheme shares: reading and checking the input's metadata,
building the calibration set from the model's own preprocessing when the scheme needs one, writing
the quantization record and saving atomically. The schemes themselves live in their own modules.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx

from vitqbench.errors import VitqbenchError
from vitqbench.files import atomic_path, check_output_file, sha256_file
from vitqbench.metadata import ModelMetadata, get_metadata, load_onnx, set_metadata

# The registry: importing a scheme module registers its scheme(s). A new scheme adds its module here.
from vitqbench.quant import dynamic, fp16, int4, int8, mixed, wxax  # noqa: F401
from vitqbench.quant.calibration import CalibConfig, calibration_set
from vitqbench.quant.int8 import DEFAULT_EXCLUDE, Int8Config
from vitqbench.quant.schemes import (
    BITS_ALIASES,
    SCHEMES,
    QuantRecord,
    SchemeConfig,
    create_scheme,
    register_scheme,
    scheme_names,
    scheme_options,
)

__all__ = [
    "BITS_ALIASES",
    "DEFAULT_EXCLUDE",
    "SCHEMES",
    "CalibConfig",
    "Int8Config",
    "QuantRecord",
    "SchemeConfig",
    "create_scheme",
    "quantize_model",
    "save_quantized",
    "register_scheme",
    "scheme_names",
    "scheme_options",
]


def _check_outputs(model: onnx.ModelProto, meta: ModelMetadata) -> None:
    names = {o.name for o in model.graph.output}
    missing = [n for n in meta.outputs.values() if n not in names]
    if missing:
        raise VitqbenchError(f"quantization lost the model output(s) {', '.join(missing)}")


def quantize_model(
    in_path: str | Path,
    out_path: str | Path,
    scheme: SchemeConfig | str,
    calib: CalibConfig | None = None,
    *,
    progress: bool = True,
) -> ModelMetadata:
    """Quantize the vitqbench ONNX file ``in_path`` with ``scheme`` and write ``out_path``; return its metadata.

    ``scheme`` is a registered scheme config (or its name, for its defaults). ``calib`` is read
    only when the scheme needs calibration images; a scheme that needs them fails without.
    """
    in_path, out_path = Path(in_path), check_output_file(out_path)
    config = create_scheme(scheme) if isinstance(scheme, str) else scheme
    config = config.resolved(calib is not None)
    config.check()
    if out_path.resolve() == in_path.resolve():
        raise VitqbenchError("the output would overwrite the input; choose another -o path")
    if config.needs_calibration and calib is None:
        raise VitqbenchError(f"scheme {config.name} needs calibration images: pass --calib DATA")
    model = load_onnx(in_path)
    meta = get_metadata(model, origin=str(in_path))
    if meta.quantization:
        raise VitqbenchError(
            f"{in_path} is already quantized ({meta.precision}); quantize its full-precision parent instead"
        )
    parent_sha256 = sha256_file(in_path)
    config.check_input(model, meta, parent_sha256, in_path.name)
    calib_set = calibration_set(calib, meta.data_config, progress=progress) if config.needs_calibration else None
    # A scheme that replaces the head points ``meta.head`` at the head it computes with (attach_head).
    quantized, record = config.quantize(model, meta, calib_set, progress=progress)
    return save_quantized(in_path, out_path, meta, quantized, record, calib_set, parent_sha256)


def save_quantized(
    in_path: Path,
    out_path: Path,
    meta: ModelMetadata,
    quantized: onnx.ModelProto,
    record: QuantRecord,
    calib_set: Any,
    parent_sha256: str | None = None,
) -> ModelMetadata:
    """Write ``quantized`` atomically with ``meta`` (the parent's, its head already pointed) and the record.

    ``parent_sha256``: the input file's hash when the caller has it (else it is read here)."""
    meta.quantization = {
        **record.as_dict(),
        "calibration": calib_set.record() if calib_set is not None else None,
        "seed": calib_set.config.seed if calib_set is not None else None,
        "parent": {
            "file": in_path.name,
            "sha256": parent_sha256 or sha256_file(in_path),
            "display_name": meta.display_name,
        },
    }  # no timings: the same inputs give the same bytes, so eval's cache (keyed on the file hash) holds
    # The 4-bit qdq format needs a newer opset than the export's.
    meta.opset = next((o.version for o in quantized.opset_import if o.domain in ("", "ai.onnx")), meta.opset)
    _check_outputs(quantized, meta)
    set_metadata(quantized, meta)
    with atomic_path(out_path, suffix=".onnx") as tmp:
        onnx.save(quantized, str(tmp))
    return meta
