"""``vitqbench sweep``: a declarative study, models x precisions x datasets, from a TOML file.

Every cell is export (timm -> ONNX), quantize, eval and optionally bench; a model file that
already exists with matching metadata (and, for quantized files, the same recipe and parent) is
reused, and eval's cache does the rest, so a re-run or an interrupted run recomputes only what
is new. One combined report covers every cell; each quantized model's deltas are against the
full-precision model of its own family, which is evaluated even when [[precisions]] omits it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
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
    """Export and quantize what is missing (file cells, on the study's executor), then evaluate every model file."""
    from vitqbench.evaluate.cache import resolve_cache_dir
    from vitqbench.evaluate.cells import CellContext
    from vitqbench.evaluate.executor import make_executor

    if options.data_root is not None and not options.data_root.is_dir():
        raise VitqbenchError(f"--data-root {options.data_root} is not a folder")
    if (config.tune if options.tune is None else options.tune) and not (config.val_id and config.val_ood):
        raise VitqbenchError("tune needs val_id = DATA and val_ood = DATA in the sweep's [data]")
    models_dir = check_output_dir(options.out) / "models"
    _check_id_set(config, options)
    new_dirs = [d for d in (options.out, models_dir) if not d.exists()]  # removed again if nothing comes of it
    models_dir.mkdir(parents=True, exist_ok=True)
    cache_root = resolve_cache_dir(options.cache_dir)
    # One executor for the whole study: with Ray, eval's cells join the cluster these file cells started.
    executor = make_executor(options.executor, CellContext(), cache_root, options.ray_address, options.threads)
    try:
        cells = plan_files(config, options, models_dir, cache_root)
        files = [r for r in executor.run(cells) if r is not None]
        failures = _file_failures(files)
        made = [r for r in files if r.ok]
        if not made:
            for folder in reversed(new_dirs):  # a failed run leaves no empty folders behind
                with contextlib.suppress(OSError):
                    folder.rmdir()
            reasons = "; ".join(f.describe() for f in failures)
            raise VitqbenchError("no model could be exported or quantized: " + reasons)
        results = run_eval(_eval_config(config, options, made, cache_root, keep_outputs))
    finally:
        executor.close()
    results.failures[:0] = failures
    results.settings["sweep"] = {"name": config.name, "config": asdict(config)}
    return results


@dataclass
class FileResult:
    """What became of an export or quantize cell: the model file (label, path), or why there is none."""

    key: str
    label: str
    path: Path
    baseline: str | None = None  # the label of its family's fp32 model
    failure: Failure | None = None
    unavailable: str | None = None  # a pretrained name whose weights cannot be had (reported as one list)

    @property
    def ok(self) -> bool:
        return self.failure is None


@dataclass
class ExportCell:
    """timm -> ONNX for one [[models]] entry; an existing file with matching metadata is kept."""

    key: str
    model: SweepModel
    path: Path
    pretrained: bool
    attention: bool = False  # export --attention
    requires: tuple[str, ...] = ()
    threads: int | None = 1

    def failed(self, exc: BaseException, stage: str = "export") -> FileResult:
        return FileResult(self.key, self.model.slug, self.path, failure=Failure.of(self.model.slug, None, stage, exc))

    def run(self, ctx: Any) -> FileResult:
        from vitqbench.export.model import WeightsUnavailable

        label = f"{self.model.slug}.{FP32}"
        try:
            _ensure_export(self.model, self.path, self.pretrained, self.attention)
        except WeightsUnavailable as exc:
            return dataclasses.replace(self.failed(exc), unavailable=self.model.name)
        except VitqbenchError as exc:
            return self.failed(exc)
        return FileResult(self.key, label, self.path, baseline=label)


@dataclass
class QuantizeCell:
    """One precision of one exported model; a file with the same recipe and parent is kept."""

    key: str
    label: str
    baseline: str  # the label of its family's fp32 model
    fp32: Path
    path: Path
    precision: SweepPrecision
    calib: DataRef | None  # resolved spec, and the folder an image list's paths start at
    calib_size: int
    seed: int
    cache_root: Path
    target: ExecutionTarget
    progress: bool
    requires: tuple[str, ...] = ()
    threads: int | None = None

    def failed(self, exc: BaseException, stage: str = "quantize") -> FileResult:
        return FileResult(self.key, self.label, self.path, failure=Failure.of(self.label, None, stage, exc))

    def run(self, ctx: Any) -> FileResult:
        try:
            _ensure_quantized(self, ctx)
        except VitqbenchError as exc:
            return self.failed(exc)
        return FileResult(self.key, self.label, self.path, baseline=self.baseline)


def plan_files(
    config: SweepConfig, options: SweepOptions, models_dir: Path, cache_root: Path
) -> list[ExportCell | QuantizeCell]:
    """Per model: its export cell, then one quantize cell per precision that requires it (plan order)."""
    calib = _calib_source(config, options)
    cells: list[ExportCell | QuantizeCell] = []
    for model in config.models:
        fp32 = models_dir / f"{model.slug}.{FP32}.onnx"
        pretrained = options.pretrained and model.pretrained and model.checkpoint is None
        key = _key("export", asdict(model), pretrained, config.attention, str(fp32))
        export = ExportCell(key, model, fp32, pretrained, config.attention)
        cells.append(export)
        for precision in config.precisions:
            label = f"{model.slug}.{safe_name(precision.name)}"
            if precision.scheme is None:
                continue  # the exported model itself
            recipe = (export.key, asdict(precision), calib and asdict(calib), config.calib_size, config.seed)
            cells.append(
                QuantizeCell(
                    key=_key("quantize", *recipe, options.target.tag, label),
                    label=label,
                    baseline=f"{model.slug}.{FP32}",
                    fp32=fp32,
                    path=models_dir / f"{label}.onnx",
                    precision=precision,
                    calib=calib,
                    calib_size=config.calib_size,
                    seed=config.seed,
                    cache_root=cache_root,
                    target=options.target,
                    progress=options.progress and options.executor == "inprocess",
                    requires=(export.key,),
                    threads=options.threads,
                )
            )
    return cells


def _key(kind: str, *parts: Any) -> str:
    text = json.dumps(parts, sort_keys=True, default=str)
    return f"{kind}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def _file_failures(files: list[FileResult]) -> list[Failure]:
    """Each failed file cell's failure; pretrained weights that cannot be had, as one line for all."""
    from vitqbench.export.model import hub_reachable

    failures = [r.failure for r in files if r.failure is not None and r.unavailable is None]
    unavailable = [r.unavailable for r in files if r.unavailable is not None]
    if unavailable:
        reason = "no network" if not hub_reachable() else "offline or not published"
        message = (
            f"pretrained weights unavailable for {len(unavailable)} model(s) ({reason}): {', '.join(unavailable)}; "
            "give `checkpoint = PATH` in [[models]], or --no-pretrained"
        )
        failures.insert(0, Failure(None, None, "export", message))
    return failures


def _eval_config(
    config: SweepConfig, options: SweepOptions, made: list[FileResult], cache_root: Path, keep_outputs: bool
) -> EvalConfig:
    """The one eval run over every model file the sweep made, each quantized model against its family's fp32."""
    return EvalConfig(  # plan order: each family's fp32 first (a quantize cell runs only after its export)
        models=[r.path for r in made],
        labels=[r.label for r in made],
        baseline_of={r.label: r.baseline for r in made},
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
        attention=config.attention,
        val_id=_resolve(config.val_id, options.data_root) if config.val_id else None,
        val_ood=_resolve(config.val_ood, options.data_root) if config.val_ood else None,
        keep_outputs=keep_outputs,
        executor=options.executor,
        ray_address=options.ray_address,
    )


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


def _calib_source(config: SweepConfig, options: SweepOptions) -> DataRef | None:
    """The calibration DATA (resolved) and, for an image list, the folder its paths start at."""
    ref = config.calib or config.fit
    if ref is None:
        return None
    root = (options.data_root or Path(".")) / ref.root if ref.root else None
    return DataRef(_resolve(ref, options.data_root), str(root) if root else None)


def _ensure_export(model: SweepModel, path: Path, pretrained: bool, attention: bool) -> None:
    from vitqbench.export import export_model

    checkpoint = Path(model.checkpoint).expanduser() if model.checkpoint else None
    if path.is_file() and _export_matches(path, model, pretrained, checkpoint, attention):
        return
    export_model(
        model.name,
        path,
        pretrained=pretrained,
        checkpoint=checkpoint,
        model_kwargs=dict(model.kwargs),
        seed=model.seed,
        attention=attention,
    )


def _export_matches(
    path: Path, model: SweepModel, pretrained: bool, checkpoint: Path | None, attention: bool
) -> bool:
    from vitqbench.metadata import ATTN_ROLLOUT, read_metadata

    try:
        meta = read_metadata(path)
    except VitqbenchError:
        return False
    if (ATTN_ROLLOUT in meta.outputs) != attention:  # an attention export older than the rollout is redone
        return False
    arch, _, tag = model.name.partition(".")
    if meta.timm_name != arch or (tag and meta.timm_tag != tag) or meta.quantization:
        return False
    source = meta.source or {}
    if "train" in source:  # a `vitqbench train` checkpoint's own kwargs, with the sweep's on top
        if any(_plain(meta.model_kwargs.get(k)) != _plain(v) for k, v in model.kwargs.items()):
            return False
    elif _plain(meta.model_kwargs) != _plain(model.kwargs):
        return False
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


def _ensure_quantized(cell: QuantizeCell, ctx: Any) -> None:
    from vitqbench.evaluate.cells import DataSource
    from vitqbench.quant import CalibConfig, create_scheme, quantize_model

    precision, calib = cell.precision, cell.calib
    scheme = create_scheme(precision.scheme, **tuple_lists(precision.options)).resolved(calib is not None)
    scheme.check()
    calib_root = Path(calib.root) if calib and calib.root else None
    calib_config = (
        CalibConfig(
            data=calib.spec,
            size=cell.calib_size,
            seed=cell.seed,
            cache_dir=cell.cache_root,
            data_root=calib_root,
            target=cell.target,
        )
        if calib and scheme.needs_calibration
        else None
    )
    parent_sha = sha256_file(cell.fp32)
    recipe = {
        "scheme": precision.scheme,
        "options": precision.options,
        "calib": calib.spec if calib_config else None,
        "calib_root": str(calib_root.resolve()) if calib_config and calib_root else None,
        # The content key: an edited folder or image list is a new calibration set.
        "calib_key": ctx.dataset(DataSource(calib.spec, calib_root, False, cell.seed)).key if calib_config else None,
        "calib_size": cell.calib_size,
        "calib_target": cell.target.tag if calib_config else None,
        "seed": cell.seed,
        "parent_sha256": parent_sha,
    }
    sidecar = cell.path.with_name(cell.path.name + ".recipe.json")
    if cell.path.is_file() and sidecar.is_file() and _quantized_matches(cell.path, sidecar, recipe, parent_sha):
        return
    quantize_model(cell.fp32, cell.path, scheme, calib=calib_config, progress=cell.progress)
    write_text_atomic(sidecar, json.dumps({**recipe, "sha256": sha256_file(cell.path)}, indent=2, sort_keys=True))


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
