"""``vitqbench sweep``: a declarative study, models x precisions x datasets, from a TOML file.

Every cell is export (timm -> ONNX), quantize, eval and optionally bench; a model file that
already exists with matching metadata (and, for quantized files, the same recipe and parent) is
reused, and eval's cache does the rest, so a re-run or an interrupted run recomputes only what
is new. One combined report covers every cell; each quantized model's deltas are against the
full-precision model of its own family, which is evaluated even when [[precisions]] omits it.
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vitqbench.errors import VitqbenchError
from vitqbench.evaluate.run import EvalConfig, run_eval
from vitqbench.evaluate.sweep_config import (
    FP32,
    DataRef,
    SweepConfig,
    SweepModel,
    SweepPrecision,
    load_sweep_config,
    parse_sweep,
    preset_names,
    preset_text,
    sweep_text,
    tuple_lists,
)
from vitqbench.files import check_output_dir, safe_name, sha256_file, write_text_atomic
from vitqbench.results import EvalResults, Failure
from vitqbench.runtime import CPU, ExecutionTarget

__all__ = [
    "DataRef",
    "SweepConfig",
    "SweepModel",
    "SweepOptions",
    "SweepPrecision",
    "load_sweep_config",
    "parse_sweep",
    "preset_names",
    "preset_text",
    "run_sweep",
    "sweep_text",
]

# --------------------------------------------------------------------------------------------- running
@dataclass
class SweepOptions:
    out: Path
    data_root: Path | None = None
    cache_dir: Path | None = None
    target: ExecutionTarget = CPU
    threads: int | None = None
    batch_size: int | None = None  # overrides the study's
    pretrained: bool = True  # False: random init everywhere (offline stand-ins)
    bench: bool | None = None  # overrides the study's
    progress: bool = True
    fpr_convention: str = "openood"  # which FPR@95 tables lead with
    decode_cache: bool = True
    tune: bool | None = None  # overrides the study's
    executor: str = "inprocess"  # or "ray"
    ray_address: str | None = None


def run_sweep(config: SweepConfig, options: SweepOptions, keep_outputs: bool = False) -> EvalResults:
    """Export and quantize what is missing, then evaluate every model file in one eval run."""
    from vitqbench.data import load_dataset
    from vitqbench.evaluate.cache import resolve_cache_dir
    from vitqbench.export.model import WeightsUnavailable, hub_reachable

    if options.data_root is not None and not options.data_root.is_dir():
        raise VitqbenchError(f"--data-root {options.data_root} is not a folder")
    if (config.tune if options.tune is None else options.tune) and not (config.val_id and config.val_ood):
        raise VitqbenchError("tune needs val_id = DATA and val_ood = DATA in the sweep's [data]")
    models_dir = check_output_dir(options.out) / "models"
    _check_id_set(config, options)
    new_dirs = [d for d in (options.out, models_dir) if not d.exists()]  # removed again if nothing comes of it
    models_dir.mkdir(parents=True, exist_ok=True)
    cache_root = resolve_cache_dir(options.cache_dir)
    failures: list[Failure] = []
    paths: list[Path] = []
    labels: list[str] = []
    baseline_of: dict[str, str] = {}
    calib, calib_root = _calib_source(config, options)
    # The calibration set's content key, read once per run and only if a precision calibrates.
    calib_key = functools.cache(lambda: load_dataset(calib, data_root=calib_root, seed=config.seed).key)
    unavailable: list[str] = []  # pretrained weights that cannot be had: reported as one list
    for model in config.models:
        fp32 = models_dir / f"{model.slug}.{FP32}.onnx"
        try:
            _ensure_export(model, fp32, options.pretrained, options.progress)
        except WeightsUnavailable:
            unavailable.append(model.name)
            continue
        except VitqbenchError as exc:
            failures.append(Failure(f"{model.slug}", None, "export", str(exc)))
            continue
        family = []
        for precision in config.precisions:
            label = f"{model.slug}.{safe_name(precision.name)}"
            path = fp32 if precision.scheme is None else models_dir / f"{label}.onnx"
            if precision.scheme is not None:
                try:
                    _ensure_quantized(
                        fp32, path, precision, calib, calib_root, calib_key, config, cache_root, options
                    )
                except VitqbenchError as exc:
                    failures.append(Failure(label, None, "quantize", str(exc)))
                    continue
            family.append(label)
            paths.append(path)
            labels.append(label)
        baseline_of.update({label: f"{model.slug}.{FP32}" for label in family})
    if unavailable:
        reason = "no network" if not hub_reachable() else "offline or not published"
        message = (
            f"pretrained weights unavailable for {len(unavailable)} model(s) ({reason}): {', '.join(unavailable)}; "
            "give `checkpoint = PATH` in [[models]], or --no-pretrained"
        )
        failures.insert(0, Failure(None, None, "export", message))
    if not paths:
        for folder in reversed(new_dirs):  # a failed run leaves no empty folders behind
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise VitqbenchError("no model could be exported or quantized: " + "; ".join(f.describe() for f in failures))
    eval_config = EvalConfig(
        models=paths,
        labels=labels,
        baseline_of=baseline_of,
        id=_resolve(config.id, options.data_root),
        id_name=config.id_name,
        ood={name: _resolve(ref, options.data_root) for name, ref in config.ood.items()},
        ood_groups={name: ref.group for name, ref in config.ood.items() if ref.group},
        fit=_resolve(config.fit, options.data_root) if config.fit else None,
        scores=config.scores,
        target=options.target,
        threads=options.threads,
        batch_size=options.batch_size or config.batch_size,
        cache_dir=cache_root,
        data_root=options.data_root,
        data_roots=_roots(config, options.data_root),
        bench=config.bench if options.bench is None else options.bench,
        bench_options=config.bench_options,
        seed=config.seed,
        progress=options.progress,
        fpr_convention=options.fpr_convention,
        decode_cache=options.decode_cache,
        tune=config.tune if options.tune is None else options.tune,
        val_id=_resolve(config.val_id, options.data_root) if config.val_id else None,
        val_ood=_resolve(config.val_ood, options.data_root) if config.val_ood else None,
        keep_outputs=keep_outputs,
        executor=options.executor,
        ray_address=options.ray_address,
    )
    results = run_eval(eval_config)
    results.failures[:0] = failures
    results.settings["sweep"] = {"name": config.name, "config": asdict(config)}
    return results


def _check_id_set(config: SweepConfig, options: SweepOptions) -> None:
    """Without the ID set nothing can be measured: fail before exporting and quantizing every model."""
    from vitqbench.data import load_dataset

    spec = _resolve(config.id, options.data_root)
    try:
        load_dataset(spec, data_root=_roots(config, options.data_root).get("id"), seed=config.seed)
    except VitqbenchError as exc:
        where = f" (--data-root {options.data_root})" if options.data_root else ""
        raise VitqbenchError(f"ID set {spec}{where}: {exc}") from exc


def _resolve(ref: DataRef, data_root: Path | None) -> str:
    """A relative path spec is taken under ``--data-root`` when it exists there."""
    if data_root is None:
        return ref.spec
    head = ref.spec.split(":")[0]
    if not Path(head).is_absolute() and (data_root / head).exists():
        return str(data_root / ref.spec)
    return ref.spec


def _roots(config: SweepConfig, data_root: Path | None) -> dict[str, Path]:
    base = data_root or Path(".")
    refs = {"id": config.id, "fit": config.fit, "val-id": config.val_id, "val-ood": config.val_ood, **config.ood}
    return {name: base / ref.root for name, ref in refs.items() if ref is not None and ref.root}


def _calib_source(config: SweepConfig, options: SweepOptions) -> tuple[str | None, Path | None]:
    """The calibration DATA for int8 (and gptq) and, for an image list, where its paths start."""
    ref = config.calib or config.fit
    if ref is None:
        return None, None
    root = (options.data_root or Path(".")) / ref.root if ref.root else None
    return _resolve(ref, options.data_root), root


def _ensure_export(model: SweepModel, path: Path, pretrained: bool, progress: bool) -> None:
    from vitqbench.export import export_model

    pretrained = pretrained and model.pretrained and model.checkpoint is None
    checkpoint = Path(model.checkpoint).expanduser() if model.checkpoint else None
    if path.is_file() and _export_matches(path, model, pretrained, checkpoint):
        return
    export_model(
        model.name,
        path,
        pretrained=pretrained,
        checkpoint=checkpoint,
        model_kwargs=dict(model.kwargs),
        seed=model.seed,
    )


def _export_matches(path: Path, model: SweepModel, pretrained: bool, checkpoint: Path | None) -> bool:
    from vitqbench.metadata import read_metadata

    try:
        meta = read_metadata(path)
    except VitqbenchError:
        return False
    arch, _, tag = model.name.partition(".")
    if meta.timm_name != arch or (tag and meta.timm_tag != tag) or meta.quantization:
        return False
    if _plain(meta.model_kwargs) != _plain(model.kwargs):
        return False
    source = meta.source or {}
    if checkpoint is not None:
        return (
            source.get("kind") == "checkpoint"
            and checkpoint.is_file()
            and source.get("sha256") == sha256_file(checkpoint)
        )
    if pretrained:
        return source.get("kind") == "pretrained"
    return source.get("kind") == "random" and source.get("seed") == model.seed


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True))


def _ensure_quantized(
    fp32: Path,
    path: Path,
    precision: SweepPrecision,
    calib: str | None,
    calib_root: Path | None,
    calib_key: Callable[[], str],
    config: SweepConfig,
    cache_root: Path,
    options: SweepOptions,
) -> None:
    from vitqbench.quant import CalibConfig, create_scheme, quantize_model

    scheme = create_scheme(precision.scheme, **tuple_lists(precision.options)).resolved(calib is not None)
    scheme.check()
    calib_config = (
        CalibConfig(
            data=calib,
            size=config.calib_size,
            seed=config.seed,
            cache_dir=cache_root,
            data_root=calib_root,
            target=options.target,
        )
        if calib and scheme.needs_calibration
        else None
    )
    parent_sha = sha256_file(fp32)
    recipe = {
        "scheme": precision.scheme,
        "options": precision.options,
        "calib": calib if calib_config else None,
        "calib_root": str(calib_root.resolve()) if calib_config and calib_root else None,
        # The content key: an edited folder or image list is a new calibration set.
        "calib_key": calib_key() if calib_config else None,
        "calib_size": config.calib_size,
        "calib_target": options.target.tag if calib_config else None,
        "seed": config.seed,
        "parent_sha256": parent_sha,
    }
    sidecar = path.with_name(path.name + ".recipe.json")
    if path.is_file() and sidecar.is_file() and _quantized_matches(path, sidecar, recipe, parent_sha):
        return
    quantize_model(fp32, path, scheme, calib=calib_config, progress=options.progress)
    write_text_atomic(sidecar, json.dumps({**recipe, "sha256": sha256_file(path)}, indent=2, sort_keys=True))


def _quantized_matches(path: Path, sidecar: Path, recipe: dict[str, Any], parent_sha: str) -> bool:
    from vitqbench.metadata import read_metadata

    try:
        meta = read_metadata(path)
        saved = json.loads(sidecar.read_text())
    except (VitqbenchError, ValueError, OSError):
        return False
    q = meta.quantization or {}
    parent = (q.get("parent") or {}).get("sha256")
    return (
        q.get("scheme") == recipe["scheme"]
        and parent == parent_sha
        and {k: saved.get(k) for k in recipe} == _plain(recipe)
        and saved.get("sha256") == sha256_file(path)
    )


