"""Decode throughput: the first (uncached) pass and the cached second pass, at 224x224.

    python benchmarks/data_throughput.py [--images 512] [--batch-size 64] [--workers N] [--workdir DIR]
    python benchmarks/data_throughput.py --stores [--images 1024]

``--stores`` compares decode-cache formats on the same decoded 224x224 images: raw uint8 (what the
cache stores: one memory-mapped .npy) against lossless compressed stores (PNG at zlib level 1 and 6,
WebP lossless), each as bytes per image and as a cached pass: read the store, decode it if compressed
(a thread per core: Pillow's decoders release the GIL), normalize into float32 batches. It also times
encoding, the extra cost a compressed store adds to the first pass.

Writes real JPEG files (ImageNet-like 500x375 crops of scikit-learn's sample photos, quality 90),
then times ``iter_batches`` with DeiT's config (bicubic, crop_pct 0.875): pass 1 decodes with all
workers and fills a fresh decode cache, pass 2 reads the cache and normalizes on the fly; both yield
the float32 batches a model would get. CPU use is the CPU seconds of this process and every
descendant (the decode workers) divided by wall time, sampled while the pass runs. For scale it also
times timm's own transform (PIL + torchvision, one process) on the same files.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

from vitqbench.data import iter_batches, load_dataset
from vitqbench.metadata import DataConfig

DEIT = DataConfig(input_size=(3, 224, 224), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), crop_pct=0.875)


def write_jpegs(folder: Path, count: int) -> None:
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        photo = photos[i % len(photos)]
        top, left = rng.integers(0, photo.shape[0] - 300), rng.integers(0, photo.shape[1] - 400)
        crop = Image.fromarray(photo[top : top + 300, left : left + 400]).resize((500, 375))
        crop.save(folder / f"{i:05d}.jpg", quality=90)


class CpuMeter:
    """CPU seconds of this process and all its descendants over a block (workers come and go)."""

    def __init__(self, interval: float = 0.05):
        self.interval = interval
        self.seen: dict[int, float] = {}
        self.me = psutil.Process()
        self._stop = threading.Event()

    def _sample(self) -> None:
        for proc in [self.me, *self.me.children(recursive=True)]:
            try:
                t = proc.cpu_times()
                self.seen[proc.pid] = t.user + t.system
            except psutil.Error:
                pass

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self):
        self._sample()
        self.start = dict(self.seen)
        self.wall = time.perf_counter()
        self.system = psutil.cpu_times()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._sample()
        self._stop.set()
        self._thread.join()
        self.wall = time.perf_counter() - self.wall
        system = psutil.cpu_times()
        busy = (system.user + system.system) - (self.system.user + self.system.system)
        self.machine_busy = busy / self.wall  # cores busy on the whole (shared) machine
        self.per_process = {pid: v - self.start.get(pid, 0.0) for pid, v in self.seen.items()}
        self.cores = sum(self.per_process.values()) / self.wall


def one_pass(dataset, cache_dir: Path, batch_size: int, workers: int | None) -> tuple[int, CpuMeter]:
    count = 0
    with CpuMeter() as meter:
        for batch in iter_batches(
            dataset, DEIT, batch_size=batch_size, cache_dir=cache_dir, progress=False, workers=workers
        ):
            count += len(batch.indices)
    return count, meter


def timm_reference(files: list[str]) -> tuple[float, CpuMeter]:
    import torch
    from timm.data import create_transform

    torch.set_num_threads(1)  # as in a DataLoader worker
    transform = create_transform(**DEIT.__dict__, is_training=False)
    transform(Image.open(files[0]).convert("RGB"))  # first-call overheads out of the timing
    with CpuMeter() as meter:
        for path in files:
            with Image.open(path) as img:
                transform(img.convert("RGB"))
    return len(files) / meter.wall, meter


def report(label: str, count: int, meter: CpuMeter, extra: str = "") -> None:
    print(
        f"{label:32s} {count / meter.wall:7.0f} images/s{extra}; {meter.cores:.2f} cores used "
        f"-> {count / (meter.cores * meter.wall):6.0f} images per CPU-second "
        f"(whole machine busy: {meter.machine_busy:.2f} cores)"
    )


STORES = {  # name -> Pillow save options; None: raw uint8
    "raw uint8 (.npy)": None,
    "png level 1": {"format": "PNG", "compress_level": 1},
    "png level 6": {"format": "PNG", "compress_level": 6},
    "webp lossless": {"format": "WEBP", "lossless": True, "quality": 0, "method": 0},
}


def _encode(image: np.ndarray, options: dict) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, **options)
    return buffer.getvalue()


def _decode(blob: bytes) -> np.ndarray:
    import io

    with Image.open(io.BytesIO(blob)) as img:
        return np.asarray(img)


def compare_stores(dataset, cache_dir: Path, batch_size: int, repeats: int) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from vitqbench.data import decoded_images
    from vitqbench.data.preprocess import Normalization, normalize
    from vitqbench.data.stream import default_workers

    images = np.ascontiguousarray(decoded_images(dataset, DEIT, cache_dir=cache_dir, progress=False))
    norm = Normalization.from_config(DEIT)
    n = len(images)
    print(f"\ndecode-cache stores, {n} images 224x224x3 ({default_workers()} threads):")
    print(f"{'store':20s} {'KiB/image':>10s} {'x raw':>6s} {'encode img/s':>13s} {'cached pass img/s':>18s}")
    with ThreadPoolExecutor(default_workers()) as pool:
        for name, options in STORES.items():
            if options is not None and options["format"] == "WEBP":
                from PIL import features

                if not features.check("webp"):
                    print(f"{name:20s} (Pillow built without WebP)")
                    continue
            start = time.perf_counter()
            blobs = None if options is None else list(pool.map(lambda im, o=options: _encode(im, o), images))
            encode = n / (time.perf_counter() - start) if blobs is not None else float("nan")
            size = images[0].nbytes if blobs is None else float(np.mean([len(b) for b in blobs]))
            walls = []
            for _ in range(repeats):
                start = time.perf_counter()
                for lo in range(0, n, batch_size):
                    out = np.empty((min(batch_size, n - lo), 3, 224, 224), np.float32)
                    part = images[lo : lo + batch_size] if blobs is None else np.stack(
                        list(pool.map(_decode, blobs[lo : lo + batch_size]))
                    )
                    normalize(part, norm, out)
                walls.append(time.perf_counter() - start)
            cached = n / float(np.median(walls))
            print(f"{name:20s} {size / 1024:10.1f} {size / images[0].nbytes:6.2f} {encode:13.0f} {cached:18.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=None, help="decode processes (default: all cores)")
    parser.add_argument("--repeats", type=int, default=5, help="cached passes to time")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the JPEGs here (default: temp)")
    parser.add_argument("--stores", action="store_true", help="compare raw and compressed decode-cache stores")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = (args.workdir or Path(tmp)) / f"jpegs-{args.images}"
        if not folder.is_dir():
            write_jpegs(folder, args.images)
        cache_dir = Path(tmp) / "cache"  # always fresh: pass 1 must decode
        dataset = load_dataset(str(folder))
        print(f"{len(dataset)} JPEG files 500x375 -> 3x224x224 (DeiT: bicubic, crop_pct 0.875)")
        print(f"machine: {psutil.cpu_count()} logical CPUs, load average {psutil.getloadavg()[0]:.1f}")
        if args.stores:
            compare_stores(dataset, cache_dir, args.batch_size, args.repeats)
            return

        n, first = one_pass(dataset, cache_dir, args.batch_size, args.workers)
        report("pass 1 (decode + fill cache)", n, first)
        split = sorted((round(s, 2) for s in first.per_process.values() if s > 0.01), reverse=True)
        print(f"  CPU seconds per process in pass 1 (main, workers, forkserver): {split}")
        passes = [one_pass(load_dataset(str(folder)), cache_dir, args.batch_size, args.workers)]
        passes += [one_pass(load_dataset(str(folder)), cache_dir, args.batch_size, args.workers)
                   for _ in range(args.repeats - 1)]  # fmt: skip
        passes.sort(key=lambda p: p[1].wall)
        n, median = passes[len(passes) // 2]
        best = passes[0][0] / passes[0][1].wall
        report("pass 2 (cached, normalized)", n, median, f" (median of {len(passes)}, best {best:.0f})")
        cpu = sum(m.cores * m.wall for _, m in passes)  # all passes together: CPU times tick at 10 ms
        print(f"  all {len(passes)} cached passes: {sum(k for k, _ in passes) / cpu:.0f} images per CPU-second")
        sample = dataset.paths[: min(64, len(dataset))]
        rate, meter = timm_reference(sample)
        report(f"timm transform, 1 process ({len(sample)})", len(sample), meter)


if __name__ == "__main__":
    main()
