"""Calibration images for quantization: a seeded subset of a DATA spec, streamed in batches.

The images are preprocessed by the data part with the model's own data config, i.e. exactly as
eval feeds them, and are never held in memory all at once whatever ``--calib-size`` is.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader

from vitqbench.errors import VitqbenchError, check_seed
from vitqbench.metadata import DataConfig
from vitqbench.runtime import CPU, ExecutionTarget


@dataclass
class CalibConfig:
    """Where calibration images come from and how many to use."""

    data: str
    size: int = 256
    seed: int = 0
    # ORT's calibration session keeps a whole window's activations alive: DeiT-S peaks at 2.8 GB RSS
    # with batches of 4 and 7.8 GB with 16 (measured), whatever the number of images.
    batch_size: int = 4
    cache_dir: Path | None = None
    data_root: Path | None = None  # where an image list's relative paths start (default: the list's folder)
    strict: bool = False  # an unreadable image fails calibration (default: skipped, and recorded)
    target: ExecutionTarget = CPU  # where the float model runs to collect activation statistics


@dataclass
class CalibrationSet:
    """A fixed, seeded subset of a dataset; iterating yields float32 [B, C, H, W] batches (re-iterable)."""

    config: CalibConfig
    data_config: DataConfig
    dataset: Any
    indices: np.ndarray
    progress: bool = False

    def __len__(self) -> int:
        """Number of batches in one pass."""
        return -(-len(self.indices) // self.config.batch_size)

    def __iter__(self) -> Iterator[np.ndarray]:
        from vitqbench.data import iter_batches

        for batch in iter_batches(
            self.dataset,
            self.data_config,
            batch_size=self.config.batch_size,
            cache_dir=self.config.cache_dir,
            progress=self.progress,
            indices=self.indices,
        ):
            yield np.ascontiguousarray(batch.images, dtype=np.float32)

    def rebatched(self, batch_size: int) -> CalibrationSet:
        """The same images in batches of at most ``batch_size``."""
        config = replace(self.config, batch_size=min(batch_size, self.config.batch_size))
        return replace(self, config=config)

    def readable(self) -> CalibrationSet:
        """The same subset without the images that fail to decode (one pass, which fills the decode cache)."""
        for _ in self:
            pass
        reasons = getattr(self.dataset, "skipped_reasons", {})
        kept = np.array([i for i in self.indices if int(i) not in reasons], dtype=self.indices.dtype)
        if len(kept) == 0:
            raise VitqbenchError(f"no calibration image of {self.config.data!r} could be read")
        return replace(self, indices=kept)

    def skipped(self) -> list[str]:
        """Paths of drawn images that could not be decoded (known once the set has been iterated)."""
        reasons = getattr(self.dataset, "skipped_reasons", {})
        return [str(self.dataset.paths[i]) for i in self.indices if int(i) in reasons]

    def record(self) -> dict[str, Any]:
        """What goes into the quantization record: enough to rebuild the same subset."""
        skipped = self.skipped()
        return {
            "data": self.config.data,
            "data_root": str(self.config.data_root) if self.config.data_root else None,
            "dataset": getattr(self.dataset, "name", None),
            "dataset_key": getattr(self.dataset, "key", None),
            "available": len(self.dataset),
            "drawn": int(len(self.indices)),
            "size": int(len(self.indices)) - len(skipped),  # images the quantizer actually saw
            "skipped": skipped,
            "seed": self.config.seed,
            "target": self.config.target.tag,
        }


def calibration_set(config: CalibConfig, data_config: DataConfig, progress: bool = False) -> CalibrationSet:
    """Load ``config.data`` and draw the seeded subset, failing early with one line on bad input."""
    check_seed(config.seed)
    if config.size < 1:
        raise VitqbenchError(f"--calib-size must be at least 1 (got {config.size})")
    if config.batch_size < 1:
        raise VitqbenchError(f"calibration batch size must be at least 1 (got {config.batch_size})")
    from vitqbench.data import load_dataset

    dataset = load_dataset(config.data, data_root=config.data_root, strict=config.strict, seed=config.seed)
    found = len(dataset)
    if found == 0:
        raise VitqbenchError(f"calibration set {config.data!r} holds no images")
    if found < config.size:
        raise VitqbenchError(
            f"calibration set {config.data!r} has {found} images, fewer than --calib-size {config.size}; "
            f"pass --calib-size {found} or a larger set"
        )
    rng = np.random.default_rng(config.seed)
    # Sorted so the decode cache is read front to back.
    indices = np.sort(rng.choice(found, size=config.size, replace=False))
    return CalibrationSet(config, data_config, dataset, indices, progress)


class BatchReader(CalibrationDataReader):
    """ORT's data-reader protocol over a calibration set, one batch per ``set_range`` window.

    ``quantize_static`` with ``CalibStridedMinMax`` calls ``set_range`` then ``collect_data`` per
    window; histogram calibrators fold each window into their histograms and drop the activations,
    which is what keeps entropy/percentile calibration memory bounded.
    """

    def __init__(self, batches: CalibrationSet, input_name: str, on_batch=None) -> None:
        self._n = len(batches)
        self._it = iter(batches)
        self._input_name = input_name
        self._budget = self._n
        self._on_batch = on_batch

    def __len__(self) -> int:
        return self._n

    def set_range(self, start_index: int, end_index: int) -> None:
        self._budget = end_index - start_index

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._budget <= 0:
            return None
        batch = next(self._it, None)
        if batch is None:
            return None
        self._budget -= 1
        if self._on_batch is not None:
            self._on_batch(len(batch))
        return {self._input_name: batch}


CHUNK = 8  # images per ORT run while probing activations: every probed tensor of a chunk is alive at once


def iter_activations(
    model: onnx.ModelProto, names: Iterable[str], calib: Iterable[np.ndarray], threads: int | None = None
) -> Iterator[dict[str, np.ndarray]]:
    """Run the float ``model`` over ``calib`` (streamed) and yield the named tensors, one chunk at a time.

    The model runs where a ``CalibrationSet`` was told to (its config's target); plain batch lists run on CPU.
    """
    from vitqbench.runtime import session_options

    target = calib.config.target if isinstance(calib, CalibrationSet) else CPU

    names = list(dict.fromkeys(names))
    if not names:  # session.run([]) would return every output
        return
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    existing = {o.name for o in probe.graph.output}
    for name in names:
        if name not in existing:
            probe.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(
        probe.SerializeToString(), sess_options=session_options(threads), providers=target.providers
    )
    del probe
    input_name = session.get_inputs()[0].name
    for batch in calib:
        batch = np.ascontiguousarray(getattr(batch, "images", batch), dtype=np.float32)
        for start in range(0, batch.shape[0], CHUNK):
            outputs = session.run(names, {input_name: batch[start : start + CHUNK]})
            yield dict(zip(names, outputs, strict=True))
