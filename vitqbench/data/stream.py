"""Streaming batches: parallel decoding, the decode cache, and normalization on the fly.

The decode cache holds, per (dataset key, geometry), the uint8 output of timm's resize + crop for every
item as one memory-mapped ``.npy`` [N, H, W, C] plus a ``.json`` sidecar listing the skipped items,
under ``cache_dir/decoded/`` (default ``$VITQBENCH_CACHE`` or ~/.cache/vitqbench). Mean and std are
not part of the key: they are applied on the fly. A pass over the whole dataset fills its cache; a pass
over ``indices`` reads the whole dataset's cache if there is one, else fills a cache of its own for that
subset (keyed as ``dataset.subset(indices)``). The ``.npy`` is written to a temporary file and renamed
once every item is decoded, then the sidecar the same way; a cache counts only when the sidecar exists,
so an interrupted pass leaves nothing that could be read back.

Skipped items: an unreadable image is found while decoding. Its row in the cache stays zero, the sidecar
records it, and every pass (decoding or cached) leaves it out of the batches and lists it in
``Dataset.skipped``. ``Batch.indices`` always index the dataset as loaded, skipped items included, so
``dataset.labels[batch.indices] == batch.labels`` and the skipped indices are the ones never yielded.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import PIL
from PIL import Image

from vitqbench.data.builtin import noise_image
from vitqbench.data.dataset import Dataset
from vitqbench.data.preprocess import Geometry, Normalization, normalize, prepare_image
from vitqbench.errors import DiskFull, VitqbenchError
from vitqbench.files import UNREADABLE, atomic_path, default_cache_dir, remove_stale_temps, write_text_atomic
from vitqbench.metadata import DataConfig

log = logging.getLogger("vitqbench.data")

CACHE_FORMAT = 1
IN_PROCESS_BELOW = 48  # starting worker processes costs more than decoding this many images


@dataclass
class Batch:
    images: np.ndarray  # float32 [B, C, H, W], normalized like timm's eval transform
    labels: np.ndarray | None  # int64 [B]
    indices: np.ndarray  # int64 [B], positions in the dataset


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# ---- decoding (runs in worker processes) -------------------------------------------------------


def _decode_one(source: Any, geometry: Geometry) -> np.ndarray:
    if isinstance(source, str):
        with Image.open(source) as img:
            return prepare_image(img, geometry)
    if isinstance(source, tuple):  # a noise recipe: ("noise", kind, seed, index)
        source = noise_image(*source[1:])
    return prepare_image(Image.fromarray(np.asarray(source)), geometry)


def decode_chunk(sources: Sequence[Any], geometry: Geometry) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """Decode and resize/crop ``sources``; unreadable ones leave a zero row and an error entry."""
    out = np.zeros((len(sources), *geometry.shape), dtype=np.uint8)
    errors = []
    for j, source in enumerate(sources):
        try:
            out[j] = _decode_one(source, geometry)
        except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError... on bad files
            errors.append((j, f"{type(exc).__name__}: {exc}"))
    return out, errors


# ---- streaming ---------------------------------------------------------------------------------


def _worker_init(parent: int, parent_started: float) -> None:
    """Ctrl-C is the parent's to handle (each worker would print a traceback), and a worker outlives
    no parent: killed with SIGKILL, the parent cannot shut its pool down."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, args=(parent, parent_started), daemon=True).start()


def _exit_with_parent(parent: int, parent_started: float, every: float = 0.5) -> None:
    import psutil

    while True:
        time.sleep(every)
        try:
            proc = psutil.Process(parent)
            alive = proc.create_time() == parent_started and proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            alive = False
        if not alive:
            os._exit(1)


def _pool(workers: int) -> ProcessPoolExecutor:
    import psutil

    init = {"initializer": _worker_init, "initargs": (os.getpid(), psutil.Process().create_time())}
    main_file = getattr(sys.modules["__main__"], "__file__", None)
    if main_file and not os.path.isfile(main_file):  # e.g. a script read from stdin: nothing to re-import
        return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork"), **init)
    # forkserver, not fork: the caller may hold ONNX Runtime / torch threads that a fork would copy
    # mid-flight. Preloading __main__ once in the server spares every worker re-importing the script.
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["__main__", __name__])
    _start_forkserver()
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx, **init)


def _ready() -> None:
    """A task that only proves its worker is up."""


def _wait_started(pool: ProcessPoolExecutor, workers: int) -> None:
    """Every worker up before a Ctrl-C may end this process.

    A worker still unpickling its start-up state when the parent exits dies with a
    FileNotFoundError traceback (its semaphore is gone); so a Ctrl-C is held back until all
    ``workers`` have started (``workers`` tasks at once make the pool spawn that many), then raised.
    """
    interrupted: list[int] = []
    holds = threading.current_thread() is threading.main_thread()  # only the main thread may set handlers
    previous = signal.signal(signal.SIGINT, lambda signum, frame: interrupted.append(signum)) if holds else None
    try:
        for future in [pool.submit(_ready) for _ in range(workers)]:
            future.result()
    finally:
        if holds:
            signal.signal(signal.SIGINT, previous)
    if interrupted:  # as the process would have: the handler it had (the CLI's one-line exit), else the default
        if callable(previous):
            previous(signal.SIGINT, None)
        raise KeyboardInterrupt


def _start_forkserver() -> None:
    """Start the fork server with Ctrl-C ignored (inherited across its exec).

    The server ignores SIGINT only once its preload imports are done; a Ctrl-C to the process group
    in those first seconds would print its KeyboardInterrupt traceback beside our one line.
    """
    from multiprocessing import forkserver

    if threading.current_thread() is not threading.main_thread():
        forkserver.ensure_running()
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        forkserver.ensure_running()
    finally:
        signal.signal(signal.SIGINT, previous)


def _decoded_chunks(
    dataset: Dataset, order: np.ndarray, geometry: Geometry, workers: int
) -> Iterator[tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]]:
    """(indices, uint8 images, errors) chunk by chunk, in order; at most 2 chunks per worker in flight."""
    sources = dataset.sources
    if workers <= 1 or len(order) < IN_PROCESS_BELOW:
        for start in range(0, len(order), 16):
            idx = order[start : start + 16]
            yield (idx, *decode_chunk([sources[i] for i in idx], geometry))
        return
    size = int(max(1, min(16, len(order) // (workers * 4))))
    chunks = (order[s : s + size] for s in range(0, len(order), size))
    pool = _pool(workers)
    pending: deque[tuple[np.ndarray, Future]] = deque()
    try:
        _wait_started(pool, workers)
        for idx in chunks:
            pending.append((idx, pool.submit(decode_chunk, [sources[i] for i in idx], geometry)))
            if len(pending) >= 2 * workers:
                idx0, future = pending.popleft()
                yield (idx0, *future.result())
        while pending:
            idx0, future = pending.popleft()
            yield (idx0, *future.result())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _record_skip(dataset: Dataset, index: int, reason: str) -> None:
    path = dataset.paths[index]
    if dataset.strict:
        raise VitqbenchError(f"cannot read image {path} ({reason})")
    if index not in dataset.skipped_reasons:
        log.warning("warning: skipping unreadable image %s (%s)", path, reason)
    dataset.skipped_reasons[index] = reason


def _decode_pieces(
    dataset: Dataset, order: np.ndarray, geometry: Geometry, workers: int, sink: np.ndarray | None, advance
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for idx, images, errors in _decoded_chunks(dataset, order, geometry, workers):
        for j, reason in errors:
            _record_skip(dataset, int(idx[j]), reason)
        if sink is not None:
            sink[idx[0] : idx[-1] + 1] = images  # a cache is only written for a whole dataset, in order
        advance(len(idx))
        if errors:
            keep = np.ones(len(idx), dtype=bool)
            keep[[j for j, _ in errors]] = False
            idx, images = idx[keep], images[keep]
        if len(idx):
            yield idx, images


def _cached_pieces(
    dataset: Dataset, cached: np.ndarray, order: np.ndarray, batch_size: int, advance
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    skipped = dataset.skipped_reasons
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        if skipped:
            idx = idx[[int(i) not in skipped for i in idx]]
        advance(len(order[start : start + batch_size]))
        if not len(idx):
            continue
        if idx[-1] - idx[0] + 1 == len(idx) and np.all(np.diff(idx) == 1):
            yield idx, cached[idx[0] : idx[-1] + 1]  # a view: no copy out of the page cache
        else:
            yield idx, cached[idx]


@lru_cache(maxsize=1)
def _normalize_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=default_workers(), thread_name_prefix="vitqbench-normalize")


def _normalize_into(out: np.ndarray, held: list[tuple[np.ndarray, np.ndarray]], norm: Normalization) -> None:
    """Normalize the held pieces into ``out``, in slices over all cores (numpy ufuncs release the GIL)."""
    jobs, offset = [], 0
    for _, images in held:
        for start in range(0, len(images), 4):
            part = images[start : start + 4]
            jobs.append((part, out[offset : offset + len(part)]))
            offset += len(part)
    if len(jobs) == 1 or default_workers() == 1:
        for part, target in jobs:
            normalize(part, norm, target)
        return
    for _ in _normalize_pool().map(lambda job: normalize(job[0], norm, job[1]), jobs):
        pass


def _batches(
    pieces: Iterator[tuple[np.ndarray, np.ndarray]], dataset: Dataset, norm: Normalization, batch_size: int
) -> Iterator[Batch]:
    held: list[tuple[np.ndarray, np.ndarray]] = []
    count = 0

    def emit() -> Batch:
        idx = np.concatenate([i for i, _ in held]).astype(np.int64)
        h, w, c = held[0][1].shape[1:]
        out = np.empty((len(idx), c, h, w), dtype=np.float32)
        _normalize_into(out, held, norm)
        labels = None if dataset.labels is None else dataset.labels[idx]
        return Batch(images=out, labels=labels, indices=idx)

    for idx, images in pieces:
        start = 0
        while start < len(idx):
            take = min(batch_size - count, len(idx) - start)
            held.append((idx[start : start + take], images[start : start + take]))
            count += take
            start += take
            if count == batch_size:
                yield emit()
                held, count = [], 0
    if count:
        yield emit()


# ---- the decode cache --------------------------------------------------------------------------


def _cache_files(dataset: Dataset, geometry: Geometry, cache_dir: Path | None) -> tuple[Path, Path]:
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder = root / "decoded"
    # Pillow's version is part of the key: another decoder or resampler gives other pixels.
    text = f"{CACHE_FORMAT}\0{PIL.__version__}\0{dataset.key}\0{asdict(geometry)}"
    name = hashlib.sha256(text.encode()).hexdigest()[:32]
    return folder / f"{name}.npy", folder / f"{name}.json"


def _open_cache(dataset: Dataset, geometry: Geometry, files: tuple[Path, Path]) -> np.ndarray | None:
    """The cached images (read-only memmap), restoring the skip list; None on a miss or a bad entry."""
    npy, sidecar = files
    try:
        info = json.loads(sidecar.read_text())
        cached = np.load(npy, mmap_mode="r")
    except UNREADABLE:  # damaged, foreign or zero-length: decoded again
        return None
    if not isinstance(info, dict) or not isinstance(info.get("skipped"), list):
        return None
    if info.get("key") != dataset.key or cached.shape != (len(dataset), *geometry.shape):
        return None
    for index, reason in info["skipped"]:
        _record_skip(dataset, int(index), reason)
    for path in files:  # used now: `vitqbench cache clear --older-than` keeps it
        with suppress(OSError):
            os.utime(path)
    return cached


@contextmanager
def _cache_writer(dataset: Dataset, geometry: Geometry, files: tuple[Path, Path]) -> Iterator[np.ndarray]:
    npy, sidecar = files
    try:
        npy.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise VitqbenchError(f"cannot create cache directory {npy.parent}: {exc.strerror}") from exc
    remove_stale_temps(npy.parent)  # what killed runs left behind
    with atomic_path(npy, suffix=".npy") as tmp:
        shape = (len(dataset), *geometry.shape)
        sink = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        _preallocate(tmp)
        yield sink
        # no msync: it would wait for the disk; the page cache already serves the renamed file
        del sink
    info = {
        "format": CACHE_FORMAT,
        "key": dataset.key,
        "spec": dataset.spec,
        "geometry": asdict(geometry),
        "skipped": [[i, reason] for i, reason in sorted(dataset.skipped_reasons.items())],
    }
    write_text_atomic(sidecar, json.dumps(info))


def _preallocate(path: Path) -> None:
    """Reserve the memory-mapped file's blocks now: on a full disk, writing into a sparse map ends the
    process with SIGBUS ("Bus error"); here it is one clear error and the temporary file goes."""
    size = path.stat().st_size
    with open(path, "r+b") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, size)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                return  # a file system without fallocate: nothing reserved, nothing lost
            free = shutil.disk_usage(path.parent).free
            raise DiskFull(
                f"not enough space for the decode cache in {path.parent}: {size / 2**20:.1f} MiB needed, "
                f"{free / 2**20:.1f} MiB free ({exc.strerror}); free space, point --cache-dir or "
                "VITQBENCH_CACHE elsewhere, or use --no-decode-cache"
            ) from exc


@contextmanager
def _progress(enabled: bool, total: int, description: str):
    if not enabled:
        yield lambda n: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    from vitqbench.progress import progress_bar

    with progress_bar(*columns) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


def _order(dataset: Dataset, indices: Sequence[int] | np.ndarray | None) -> np.ndarray:
    if indices is None:
        return np.arange(len(dataset), dtype=np.int64)
    order = np.asarray(indices, dtype=np.int64).reshape(-1)
    if len(order) and (order.min() < 0 or order.max() >= len(dataset)):
        raise VitqbenchError(f"indices out of range for dataset {dataset.spec} of {len(dataset)} images")
    return order


def _in_parent(
    pieces: Iterator[tuple[np.ndarray, np.ndarray]], view: Dataset, order: np.ndarray, dataset: Dataset
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Pieces of a subset ``view`` (= dataset.subset(order)) renumbered, and its skips, in ``dataset``."""
    for idx, images in pieces:
        for i, reason in view.skipped_reasons.items():
            dataset.skipped_reasons[int(order[i])] = reason
        yield order[idx], images
    for i, reason in view.skipped_reasons.items():
        dataset.skipped_reasons[int(order[i])] = reason


def iter_batches(
    dataset: Dataset,
    data_config: DataConfig,
    batch_size: int = 64,
    cache_dir: Path | None = None,
    progress: bool = True,
    indices: Sequence[int] | np.ndarray | None = None,
    *,
    cache: bool = True,
    workers: int | None = None,
) -> Iterator[Batch]:
    """Normalized float32 batches of ``dataset`` (or of ``indices``, in that order), skipping unreadable
    images; full batches except the last. Decoding runs on ``workers`` processes (default: all cores).

    With ``cache``, a pass reads the whole dataset's decode cache when there is one; otherwise it
    decodes and fills the cache of what it covers: the whole dataset, or the ``indices`` subset (cached
    under that subset's own key, so a re-iterated calibration subset is decoded once).
    """
    if batch_size <= 0:
        raise VitqbenchError("batch size must be positive")
    geometry = Geometry.from_config(data_config)
    norm = Normalization.from_config(data_config)
    order = _order(dataset, indices)
    if not len(order):
        return
    cached = _open_cache(dataset, geometry, _cache_files(dataset, geometry, cache_dir)) if cache else None
    view = dataset if indices is None or cached is not None else dataset.subset(order)
    if view is not dataset and cache:
        cached = _open_cache(view, geometry, _cache_files(view, geometry, cache_dir))
    workers = workers or default_workers()
    label = f"{'reading' if cached is not None else 'decoding'} {dataset.name}"
    files = _cache_files(view, geometry, cache_dir)
    writer = _cache_writer(view, geometry, files) if cache and cached is None else nullcontext()
    with _progress(progress, len(order), label) as advance, writer as sink:
        view_order = order if view is dataset else np.arange(len(view))
        if cached is not None:
            pieces = _cached_pieces(view, cached, view_order, batch_size, advance)
        else:
            pieces = _decode_pieces(view, view_order, geometry, workers, sink, advance)
        if view is not dataset:
            pieces = _in_parent(pieces, view, order, dataset)
        yield from _batches(pieces, dataset, norm, batch_size)


def decoded_images(
    dataset: Dataset,
    data_config: DataConfig,
    cache_dir: Path | None = None,
    progress: bool = True,
    *,
    workers: int | None = None,
) -> np.ndarray:
    """The decode cache itself: read-only uint8 [N, H, W, C] (memory-mapped), decoding it if needed.

    Rows of skipped items are zero; ``dataset.skipped`` / ``dataset.kept_indices()`` say which.
    """
    geometry = Geometry.from_config(data_config)
    files = _cache_files(dataset, geometry, cache_dir)
    cached = _open_cache(dataset, geometry, files)
    if cached is not None:
        return cached
    order = _order(dataset, None)
    with _progress(progress, len(order), f"decoding {dataset.name}") as advance:
        with _cache_writer(dataset, geometry, files) as sink:
            for _ in _decode_pieces(dataset, order, geometry, workers or default_workers(), sink, advance):
                pass
    cached = _open_cache(dataset, geometry, files)
    if cached is None:
        raise VitqbenchError(f"the decode cache under {files[0].parent} could not be read back")
    return cached
