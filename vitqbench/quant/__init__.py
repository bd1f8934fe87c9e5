"""Quantization: one entry point for the 8-bit (ORT static QDQ) and 4-bit (our block-wise) paths.

``quantize_model`` owns what both share: reading and checking the input's metadata, building the
calibration set from the model's own preprocessing, writing the quantization record and saving
atomically. The paths themselves live in ``int8.py`` and ``int4.py``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import onnx

from vitqbench.errors import VitqbenchError
from vitqbench.files import atomic_path, check_output_file, sha256_file
from vitqbench.metadata import ModelMetadata, get_metadata, load_onnx, set_metadata
from vitqbench.quant.calibration import CalibConfig, calibration_set
from vitqbench.quant.int8 import DEFAULT_EXCLUDE, Int8Config, quantize_int8

__all__ = ["BITS", "DEFAULT_EXCLUDE", "CalibConfig", "Int8Config", "quantize_model"]

BITS = (8, 4)


def _check_outputs(model: onnx.ModelProto, meta: ModelMetadata) -> None:
    names = {o.name for o in model.graph.output}
    missing = [n for n in meta.outputs.values() if n not in names]
    if missing:
        raise VitqbenchError(f"quantization lost the model output(s) {', '.join(missing)}")


def quantize_model(
    in_path: str | Path,
    out_path: str | Path,
    bits: int,
    *,
    int8: Int8Config | None = None,
    int4: Any | None = None,
    calib: CalibConfig | None = None,
    progress: bool = True,
) -> ModelMetadata:
    """Quantize the vitqbench ONNX file ``in_path`` to ``bits`` and write ``out_path``; return its metadata.

    8-bit needs ``calib``; 4-bit uses it only for algorithms that need data (gptq). ``int4`` is an
    ``vitqbench.quant.int4.Int4Config`` (its defaults when None).
    """
    in_path, out_path = Path(in_path), check_output_file(out_path)
    if bits not in BITS:
        raise VitqbenchError(f"--bits must be 8 or 4 (got {bits})")
    if out_path.resolve() == in_path.resolve():
        raise VitqbenchError("the output would overwrite the input; choose another -o path")
    model = load_onnx(in_path)
    meta = get_metadata(model, origin=str(in_path))
    if meta.quantization:
        raise VitqbenchError(
            f"{in_path} is already quantized ({meta.precision}); quantize its full-precision parent instead"
        )
    if bits == 4:
        from vitqbench.quant.int4 import Int4Config

        int4 = dataclasses.replace(int4 or Int4Config(), progress=progress).resolved(calib is not None)
    # Only 8-bit and gptq read images; a --calib given to the other 4-bit algorithms is not used.
    used_calib = bits == 8 or int4.algo == "gptq"
    if used_calib and calib is None:
        what = "8-bit quantization" if bits == 8 else "--algo gptq"
        raise VitqbenchError(f"{what} needs calibration images: pass --calib DATA")
    # The int8 path draws its own bar over calibration; gptq iterates with the data part's bar.
    calib_set = calibration_set(calib, meta.data_config, progress=progress and bits == 4) if used_calib else None

    if bits == 8:
        quantized, record = quantize_int8(model, meta, int8 or Int8Config(), calib_set, progress=progress)
    else:
        from vitqbench.quant.int4 import quantize_int4

        quantized, record = quantize_int4(model, int4, calib_set)
        # The int4 pass writes its effective head into the model's own metadata (attach_head).
        meta = _metadata_or(quantized, meta)

    meta.quantization = {
        **dict(record),
        "bits": bits,
        "calibration": calib_set.record() if calib_set is not None else None,
        "seed": calib.seed if calib_set is not None else None,
        "parent": {"file": in_path.name, "sha256": sha256_file(in_path), "display_name": meta.display_name},
    }  # no timings: the same inputs give the same bytes, so eval's cache (keyed on the file hash) holds
    # The 4-bit qdq format needs a newer opset than the export's.
    meta.opset = next((o.version for o in quantized.opset_import if o.domain in ("", "ai.onnx")), meta.opset)
    _check_outputs(quantized, meta)
    set_metadata(quantized, meta)
    with atomic_path(out_path, suffix=".onnx") as tmp:
        onnx.save(quantized, str(tmp))
    return meta


def _metadata_or(model: onnx.ModelProto, fallback: ModelMetadata) -> ModelMetadata:
    try:
        return get_metadata(model)
    except VitqbenchError:
        return fallback
