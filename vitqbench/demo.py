"""The whole study offline on real small data: train, export, quantize (w8a8, w4, w4a4), eval, bench.

ID data is real and ships with a dependency (scikit-learn's handwritten digits, or Debian's
Fashion-MNIST). The model is trained on six classes; the four held-out classes are the near-OOD set,
real photo patches (and the other built-in set) are far-OOD, and Gaussian noise is a synthetic
sanity check, marked as such in every report.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.console import Console

from vitqbench.app import finish_run
from vitqbench.data.builtin import fashion_mnist_dir
from vitqbench.errors import VitqbenchError, check_seed
from vitqbench.evaluate import EvalConfig, EvalResults
from vitqbench.export import export_model
from vitqbench.files import check_output_dir, default_cache_dir, output_folder
from vitqbench.quant import create_scheme, quantize_model, scheme_options
from vitqbench.quant.calibration import CalibConfig
from vitqbench.train import DEFAULT_KWARGS, TrainConfig, train_model

# Static 8-bit, 4-bit weight-only (GPTQ) and the paper's 4-bit regime (weights and activations).
DEMO_SCHEMES = ("w8a8", "w4", "w4a4")


@dataclass
class DemoData:
    train: str
    id: str
    ood: dict[str, str]
    model_kwargs: dict = field(default_factory=dict)
    ood_groups: dict[str, str] = field(default_factory=dict)  # noise is synthetic by itself


def _fashion_available() -> bool:
    folder = fashion_mnist_dir()
    return folder.is_dir() and any(folder.glob("t10k-images*"))


def demo_data(dataset: str, ood_size: int) -> DemoData:
    """The ID/OOD split of the demo: train on classes 0-5, hold out 6-9 as near-OOD."""
    fashion = _fashion_available()
    if dataset == "digits":
        far = {"photos": "photos"}
        if fashion:
            far["fashion-mnist"] = f"fashion-mnist:n={ood_size}"
        return DemoData(
            train="digits:train:0-5",
            id="digits:test:0-5",
            ood={"digits-6-9": "digits:6-9", **far, "noise": f"noise:gaussian:n={ood_size}"},
            model_kwargs={"img_size": 16},  # 8x8 digits: 16x16 input in 4x4 patches, 16 tokens
            ood_groups={"digits-6-9": "near", **{name: "far" for name in far}},
        )
    if dataset == "fashion-mnist":
        if not fashion:
            raise VitqbenchError(
                f"Fashion-MNIST files not found in {fashion_mnist_dir()}; install Debian's "
                "dataset-fashion-mnist or set VITQBENCH_FASHION_MNIST, or use --dataset digits"
            )
        return DemoData(
            train="fashion-mnist:train:0-5:n=3000",
            id=f"fashion-mnist:test:0-5:n={ood_size}",
            ood={
                "fashion-6-9": f"fashion-mnist:test:6-9:n={ood_size}",
                "digits": "digits",
                "photos": "photos",
                "noise": f"noise:gaussian:n={ood_size}",
            },
            ood_groups={"fashion-6-9": "near", "digits": "far", "photos": "far"},
        )
    raise VitqbenchError(f"unknown demo dataset {dataset!r}; choose digits or fashion-mnist")


# Float results depend on how many threads split the work (torch's training reductions above all):
# a fixed count makes the demo's numbers the same on any machine with the same library versions.
DEMO_THREADS = 2


@dataclass
class DemoConfig:
    out: Path = Path("vitqbench-demo")
    dataset: str = "digits"
    epochs: int | None = None  # None: TrainConfig's default
    ood_size: int = 500
    calib_size: int = 256
    bench_iters: int = 50
    scores: str | None = None  # None: every score eval can run
    seed: int = 0
    cache_dir: Path | None = None
    threads: int = DEMO_THREADS  # torch and ONNX Runtime threads for training, quantization and eval
    extra_train: dict = field(default_factory=dict)  # TrainConfig overrides (tests shrink the run)


def _checkpoint(config: DemoConfig, data: DemoData, console: Console) -> Path:
    """Train, or reuse the checkpoint an earlier demo trained with the same settings."""
    options = {"model_kwargs": data.model_kwargs, **config.extra_train}
    train = TrainConfig(data=data.train, seed=config.seed, threads=config.threads, **options)
    if config.epochs is not None:
        train.epochs = config.epochs
    described = {**asdict(train), "default_kwargs": DEFAULT_KWARGS}  # a changed default must not reuse
    key = hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]
    path = (config.cache_dir or default_cache_dir()) / "demo" / f"{config.dataset}-{key}.safetensors"
    if path.is_file():
        console.print(f"reusing the trained checkpoint {path}")
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    result = train_model(train, path, cache_dir=config.cache_dir)
    console.print(
        f"trained in {result.seconds:.0f} s on {result.num_train} images; "
        f"held-out accuracy {result.val_accuracy:.3f} ({result.num_val} images)"
    )
    return path


def run_demo(config: DemoConfig, console: Console | None = None) -> EvalResults:
    """Train, export, quantize and evaluate into ``config.out``, which stays locked for the whole run."""
    check_output_dir(config.out)
    check_seed(config.seed)
    if config.epochs is not None and config.epochs < 1:
        raise VitqbenchError(f"--epochs must be at least 1 (got {config.epochs})")
    data = demo_data(config.dataset, config.ood_size)
    with output_folder(config.out):
        return _run_demo(config, data, console or Console(emoji=False))


def _run_demo(config: DemoConfig, data: DemoData, console: Console) -> EvalResults:
    start = time.perf_counter()
    models = config.out / "models"
    models.mkdir(parents=True, exist_ok=True)

    console.rule(f"[1/4] train a small ViT on {data.train}")
    checkpoint = _checkpoint(config, data, console)

    console.rule("[2/4] export to ONNX (verified against PyTorch)")
    fp32 = models / "fp32.onnx"
    check = export_model(str(checkpoint), fp32, seed=config.seed).verification
    console.print(f"{fp32}: max |delta logits| vs PyTorch {check.max_abs_logits:.1e}")

    console.rule(f"[3/4] quantize: {', '.join(DEMO_SCHEMES)} (calibrated)")
    calib = CalibConfig(data=data.train, size=config.calib_size, seed=config.seed, cache_dir=config.cache_dir)
    for scheme in DEMO_SCHEMES:
        path = models / f"{scheme}.onnx"
        options = {"threads": config.threads} if "threads" in scheme_options(scheme) else {}
        record = quantize_model(fp32, path, create_scheme(scheme, **options), calib=calib).quantization or {}
        console.print(
            f"{path}: {record.get('algorithm', '?')}, {record.get('execution')}, {path.stat().st_size / 2**20:.2f} MiB"
        )

    console.rule("[4/4] eval: ID accuracy, OOD detection, latency")
    eval_config = EvalConfig(
        models=[fp32, *(models / f"{scheme}.onnx" for scheme in DEMO_SCHEMES)],
        id=data.id,
        id_name=data.id,
        ood=data.ood,
        ood_groups=data.ood_groups,
        fit=data.train,
        scores=config.scores,
        cache_dir=config.cache_dir,
        threads=config.threads,
        bench=config.bench_iters > 0,
        bench_options={"iters": config.bench_iters, "warmup": 5, "batches": (1,)},
        seed=config.seed,
    )
    results = finish_run(eval_config, config.out, console=console)
    console.print(f"demo finished in {time.perf_counter() - start:.0f} s")
    return results
