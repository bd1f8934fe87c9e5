"""The eval matrix: every model over every dataset once, then scores, metrics and deltas.

One ONNX Runtime session is alive at a time (models outer, datasets inner), so no idle session's
spinning threads compete with the running one. A session is only created when some cell of that
model is missing from the cache, so a repeated run touches no model at all.
"""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np

from vitqbench.errors import DiskFull, Interrupted, VitqbenchError, check_seed, first_line
from vitqbench.evaluate.cache import OutputCache, Outputs, outputs_key, resolve_cache_dir
from vitqbench.evaluate.inference import run_cell
from vitqbench.evaluate.progress import CellProgress
from vitqbench.evaluate.results import (
    MEAN,
    OOD_GROUPS,
    SYNTHETIC,
    DatasetInfo,
    EvalResults,
    Failure,
    IdMetrics,
    ModelInfo,
    OodResult,
    compute_deltas,
    mean_members,
)
from vitqbench.evaluate.scoring import ScoreSpec, default_score_specs, parse_score_specs
from vitqbench.evaluate.state import fitted_score, score_inputs
from vitqbench.metadata import ModelMetadata, model_sha256, model_size_bytes, read_metadata
from vitqbench.ood.metrics import headline_fpr
from vitqbench.runtime import CPU, ExecutionTarget, check_threads, execution_target

SESSION_POLICY = "one ONNX Runtime session alive at a time"
FIT = "fit"  # the name of the fit set in results
VAL_ID, VAL_OOD = "val-id", "val-ood"  # the validation sets --tune searches score grids on


@dataclass
class EvalConfig:
    models: list[Path]
    id: str
    ood: dict[str, str] = field(default_factory=dict)  # OOD set name -> DATA spec
    ood_groups: dict[str, str] = field(default_factory=dict)  # OOD set name -> near, far or synthetic
    id_name: str | None = None  # how tables name the ID set; default its spec
    fit: str | None = None  # DATA spec the feature scores are fitted on
    scores: str | list[str] | None = None  # "msp,energy,knn:k=50"; None: every score that can run
    baseline: str | None = None  # model path, file name or label; default the first model
    baseline_of: dict[str, str] | None = None  # label -> baseline label (sweep: per model family)
    labels: list[str] | None = None  # display labels, one per model; default the file stems
    target: ExecutionTarget = CPU  # where the models run; its tag is part of every cache key
    threads: int | None = None
    batch_size: int = 64
    cache_dir: Path | None = None
    data_root: Path | None = None
    data_roots: dict[str, Path] = field(default_factory=dict)  # per set ("id", "fit", OOD name): list roots
    strict: bool = False
    bench: bool = False
    tune: bool = False  # search each tunable score's OpenOOD grid by AUROC of val_id vs val_ood
    val_id: str | None = None
    val_ood: str | None = None
    fpr_convention: str = "openood"  # which FPR@95 tables lead with: openood (OOD+) or id-positive
    bench_options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    progress: bool = True
    decode_cache: bool = True  # keep decoded images under the cache root (False: decode every pass)


@dataclass
class _Model:
    info: ModelInfo
    meta: ModelMetadata


@dataclass
class _Data:
    info: DatasetInfo
    dataset: Any


def run_eval(config: EvalConfig) -> EvalResults:
    """Run (or fetch from the cache) every model x dataset cell and compute every metric."""
    if not config.models:
        raise VitqbenchError("no models given (--model A.onnx ...)")
    if config.batch_size < 1:
        raise VitqbenchError(f"--batch-size must be at least 1 (got {config.batch_size})")
    check_threads(config.threads)
    check_seed(config.seed)
    for name in config.ood:
        if name in {config.id_name or config.id, FIT, VAL_ID, VAL_OOD, MEAN} or ":" in name:
            raise VitqbenchError(
                f"OOD set name {name!r} clashes with the ID set, the fit set or {MEAN!r} (or holds ':')"
            )
    for name, group in config.ood_groups.items():
        if group not in OOD_GROUPS or name not in config.ood:
            raise VitqbenchError(f"OOD set {name!r}: group {group!r} is not one of {', '.join(OOD_GROUPS)}")
    specs = parse_score_specs(config.scores) if config.scores else default_score_specs(config.fit is not None)
    fit_specs = [s for s in specs if s.create().needs_fit]
    if fit_specs and config.fit is None:
        names = ", ".join(s.label for s in fit_specs)
        raise VitqbenchError(f"score(s) {names} must be fitted: give --fit DATA (e.g. the ID training set)")
    headline_fpr(config.fpr_convention)  # a typo is one line before anything runs
    if config.tune and not (config.val_id and config.val_ood):
        raise VitqbenchError("--tune needs --val-id DATA and --val-ood DATA (OpenOOD tunes on ID-val vs OOD-val)")
    if not config.tune and (config.val_id or config.val_ood):
        raise VitqbenchError("--val-id and --val-ood are read only with --tune")
    # An unknown or missing provider is one error, not a failure per model.
    config.target = execution_target(config.target).check_available()
    cache_root = resolve_cache_dir(config.cache_dir)
    cache = OutputCache(cache_root)
    failures: list[Failure] = []
    warnings: list[str] = []

    models = _load_models(config, failures)
    if not models:
        raise VitqbenchError("no model could be loaded: " + "; ".join(f.describe() for f in failures))
    _check_heads(models, specs)
    dropped = dropped_feature_scores(config)
    if dropped:
        warnings.append(f"feature scores {', '.join(dropped)} skipped: they need --fit DATA (e.g. the ID training set)")
    _assign_baselines(config, models, warnings)
    datasets = _load_datasets(config, failures, warnings, needs_fit=bool(fit_specs))
    id_data = next(d for d in datasets if d.info.role == "id")
    fit_data = next((d for d in datasets if d.info.role == "fit"), None)
    ood_data = [d for d in datasets if d.info.role == "ood"]
    val_data = [d for d in datasets if d.info.role in (VAL_ID, VAL_OOD)]
    if fit_data is not None and fit_data.info.key == id_data.info.key:
        warnings.append("the fit set is the ID evaluation set: feature scores see the test samples")
    warnings += _class_name_warnings(models, [d for d in (id_data, fit_data) if d is not None])

    results = EvalResults(
        models=[m.info for m in models],
        datasets=[d.info for d in datasets],
        scores=[
            {
                "name": s.label,
                "score": s.name,
                "params": s.create().params(),
                "needs_fit": s.create().needs_fit,
                "tunable": s.tunable,  # OpenOOD tunes it; --tune searches its grid
            }
            for s in specs
        ],
        id_metrics=[],
        ood_metrics=[],
        deltas=[],
        failures=failures,
        settings=_settings(config),
        versions=_versions(),
        cache={
            "dir": str(cache_root),
            "hits": 0,
            "computed": 0,
            "sessions": 0,
            "samples_computed": 0,
            "cells": {},
        },
        warnings=warnings,
    )
    run_data = [id_data, *([fit_data] if fit_data is not None else []), *ood_data, *val_data]
    try:
        with CellProgress(enabled=config.progress) as progress:
            for model in models:
                outputs = _model_outputs(config, model, run_data, cache, results, progress)
                _score_model(config, model, specs, outputs, id_data, fit_data, ood_data, cache_root, results)
                del outputs  # one model's outputs in memory at a time
    except (KeyboardInterrupt, Interrupted) as exc:  # finished cells (and shards) stay in the cache
        exc.cells_kept = results.cache["hits"] + results.cache["computed"]
        raise
    if not results.id_metrics and not results.ood_metrics:  # a report of dashes would pass for a result
        reasons = "; ".join(dict.fromkeys(first_line(f.describe()) for f in results.failures)) or "no metric"
        raise VitqbenchError(f"nothing could be measured, nothing written: {reasons}")
    for data in datasets:  # unreadable images are only known once decoded (or restored from a cache)
        data.info.skipped = [(str(p), str(r)) for p, r in data.dataset.skipped]
    results.deltas = compute_deltas(results.models, results.id_metrics, results.ood_metrics)
    if config.bench:
        from vitqbench.evaluate.benching import bench_models

        results.bench = bench_models(
            [m.info for m in models],
            config.target,
            config.threads,
            config.bench_options,
            config.progress,
            failures,
        )
    return results


def _load_models(config: EvalConfig, failures: list[Failure]) -> list[_Model]:
    if config.labels is not None and len(config.labels) != len(config.models):
        raise VitqbenchError("give one label per model")
    labels = list(config.labels) if config.labels else _unique_labels(config.models)
    models = []
    for path, label in zip(config.models, labels, strict=True):
        path = Path(path)
        try:
            meta = read_metadata(path)
        except VitqbenchError as exc:
            failures.append(Failure(label, None, "load-model", str(exc)))
            continue
        info = ModelInfo(
            label=label,
            path=str(path),
            sha256=model_sha256(path),
            size_bytes=model_size_bytes(path),
            precision=meta.precision,
            execution=meta.execution,
            display_name=meta.display_name,
            baseline=None,
            metadata=_meta_dict(meta),
        )
        models.append(_Model(info, meta))
    return models


def dropped_feature_scores(config: EvalConfig) -> list[str]:
    """The default scores left out because no fit set was given (the CLI says so in one line)."""
    if config.scores or config.fit is not None:
        return []
    kept = {s.label for s in default_score_specs(False)}
    return [s.label for s in default_score_specs(True) if s.label not in kept]


def _check_heads(models: list[_Model], specs: list[ScoreSpec]) -> None:
    """A score reading the classifier head cannot run on a model without one: refuse before inference."""
    needs = [s.label for s in specs if getattr(s.create(), "needs_head", False)]
    headless = [m.info.label for m in models if m.meta.head is None]
    if needs and headless:
        raise VitqbenchError(
            f"score(s) {', '.join(needs)} need a single classifier head, which {', '.join(headless)} "
            "does not have (e.g. a distilled DeiT's two heads): drop those scores or those models"
        )


def _unique_labels(paths: list[Path]) -> list[str]:
    stems = [Path(p).name.removesuffix(".onnx") for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    # Same file name in different folders: prefix the parent folder to tell them apart.
    labels = [
        f"{Path(p).parent.name}/{s}" if stems.count(s) > 1 and Path(p).parent.name else s
        for p, s in zip(paths, stems, strict=True)
    ]
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label}#{seen[label]}")
    return out


def _meta_dict(meta: ModelMetadata) -> dict[str, Any]:
    import json

    return json.loads(meta.to_json())


def _assign_baselines(config: EvalConfig, models: list[_Model], warnings: list[str]) -> None:
    if not models:
        return
    if config.baseline_of is not None:
        labels = {m.info.label for m in models}
        for m in models:
            base = config.baseline_of.get(m.info.label)
            if base is not None and base not in labels:
                warnings.append(f"baseline {base} of {m.info.label} did not load: no deltas for it")
                base = None
            m.info.baseline = base
        return
    if config.baseline is None:
        base = models[0].info.label
        if models[0].info.path != str(Path(config.models[0])):
            warnings.append(f"the first model did not load; deltas are against {base}")
    else:
        base = _match_model(config.baseline, models)
    for m in models:
        m.info.baseline = base


def _match_model(name: str, models: list[_Model]) -> str:
    for m in models:
        if name in {m.info.label, m.info.path, Path(m.info.path).name, str(Path(m.info.path).resolve())}:
            return m.info.label
    if Path(name).exists():
        resolved = str(Path(name).resolve())
        for m in models:
            if str(Path(m.info.path).resolve()) == resolved:
                return m.info.label
    raise VitqbenchError(f"--baseline {name} is none of the given models that loaded")


def _group(config: EvalConfig, name: str, dataset: Any, warnings: list[str]) -> str | None:
    """Synthetic data is its own group whatever it was given: it must not move a headline mean."""
    group = config.ood_groups.get(name)
    if getattr(dataset, "synthetic", False):
        if group not in (None, SYNTHETIC):
            warnings.append(f"OOD set {name} is synthetic: grouped as {SYNTHETIC}, not {group}")
        return SYNTHETIC
    return group


def _load_datasets(
    config: EvalConfig, failures: list[Failure], warnings: list[str], needs_fit: bool
) -> list[_Data]:
    from vitqbench.data import load_dataset

    wanted = [(config.id, "id", config.id_name or config.id)]
    if needs_fit and config.fit:
        wanted.append((config.fit, "fit", FIT))
    if config.tune:
        wanted += [(config.val_id, VAL_ID, VAL_ID), (config.val_ood, VAL_OOD, VAL_OOD)]
    wanted += [(spec, "ood", name) for name, spec in config.ood.items()]
    loaded = []
    for spec, role, name in wanted:
        root = config.data_roots.get(role if role != "ood" else name, config.data_root)
        try:
            ds = load_dataset(spec, data_root=root, strict=config.strict, seed=config.seed)
            if len(ds) == 0:
                raise VitqbenchError(f"{spec} holds no images")
        except Exception as exc:  # a broken OOD or fit set must not stop the other cells
            message = str(exc) if isinstance(exc, VitqbenchError) else f"{type(exc).__name__}: {exc}"
            if role == "id":  # without it nothing can be measured: stop before anything runs
                raise VitqbenchError(f"ID set {name}: {message}") from exc
            failures.append(Failure(None, name, "load-data", message))
            continue
        class_names = getattr(ds, "class_names", None)
        info = DatasetInfo(
            name=name,
            role=role,
            spec=spec,
            key=str(ds.key),
            size=len(ds),
            num_classes=_classes_present(ds, class_names),
            synthetic=bool(getattr(ds, "synthetic", False)),
            group=_group(config, name, ds, warnings) if role == "ood" else None,
        )
        loaded.append(_Data(info, ds))
    return loaded


def _classes_present(dataset: Any, class_names: list[str] | None) -> int | None:
    """How many classes the set's images belong to (a class subset such as digits:0-5 counts 6)."""
    labels = getattr(dataset, "labels", None)
    if labels is not None and len(labels):
        return int(len(np.unique(labels)))
    return len(class_names) if class_names else None


def _class_name_warnings(models: list[_Model], datasets: list[_Data]) -> list[str]:
    """Labels come from sorted folder position: folder i must be the model's class i, or top-1 is wrong."""
    out = []
    for data in datasets:
        folders = getattr(data.dataset, "class_names", None)
        if not folders or getattr(data.dataset, "origin", "") != "files":
            continue
        for names in {tuple(m.meta.class_names) for m in models if m.meta.class_names}:
            pairs = list(zip(folders, names, strict=False))
            wrong = [(i, f, n) for i, (f, n) in enumerate(pairs) if str(f) != str(n)]
            if wrong:
                i, folder, name = wrong[0]
                out.append(
                    f"{data.info.name}: {len(wrong)} of {len(pairs)} class folder names differ from the model's "
                    f"class names (label {i}: folder {folder!r}, model {name!r}); labels follow sorted folder order"
                )
    return out


def _check_classes(meta: ModelMetadata, data: _Data) -> None:
    """Labels the model cannot predict mean the wrong model or the wrong ID set: say which."""
    from vitqbench.data import check_labels

    if data.dataset.labels is not None:
        check_labels(data.dataset, meta.num_classes)


def _model_outputs(
    config: EvalConfig,
    model: _Model,
    run_data: list[_Data],
    cache: OutputCache,
    results: EvalResults,
    progress: CellProgress,
) -> dict[str, Outputs]:
    """This model's outputs on every dataset it can run on; failed cells are recorded and skipped."""
    from vitqbench.runtime import create_session

    label = model.info.label
    outputs: dict[str, Outputs] = {}
    session = None
    for data in run_data:
        name = data.info.name
        key = outputs_key(model.info.sha256, data.info.key, config.target.tag)
        try:
            if data.info.role in {"id", "fit"}:
                _check_classes(model.meta, data)
            results.cache["cells"][f"{label}__{name}"] = key
            cached = cache.get(key)
            if cached is not None:
                if data.dataset.strict and cached.skipped:  # outputs cached by a lenient run
                    index, reason = min(cached.skipped.items())
                    raise VitqbenchError(f"unreadable image {data.dataset.paths[index]} ({reason}); --strict")
                data.dataset.skipped_reasons.update(cached.skipped)
                results.cache["hits"] += 1
                progress.log(f"{label} x {name}: cached")
                outputs[name] = cached
                continue
        except VitqbenchError as exc:
            results.failures.append(Failure(label, name, "check", str(exc)))
            if data.info.role == "id":
                break  # without ID outputs no metric of this model exists: spare its other cells
            continue
        if session is None:
            try:
                session = create_session(model.info.path, config.target, config.threads)
            except VitqbenchError as exc:
                results.failures.append(Failure(label, None, "load-model", str(exc)))
                return outputs
            results.cache["sessions"] += 1
        try:
            with progress.cell(f"{label} x {name}", data.info.size) as advance:
                out, computed = run_cell(
                    session,
                    model.meta,
                    data.dataset,
                    cache,
                    key,
                    batch_size=config.batch_size,
                    image_cache_dir=cache.dir.parent,  # the data part keeps its decode cache in ROOT/decoded
                    decode_cache=config.decode_cache,
                    on_batch=advance,
                )
        except (KeyboardInterrupt, SystemExit, DiskFull):  # a full disk would fail every later cell too
            raise
        except Exception as exc:  # one broken cell must not cost the others
            message = str(exc) if isinstance(exc, VitqbenchError) else f"{type(exc).__name__}: {exc}"
            results.failures.append(Failure(label, name, "inference", first_line(message)))
            if data.info.role == "id":
                break
            continue
        results.cache["samples_computed"] += computed
        if computed:
            results.cache["computed"] += 1
        else:  # another run finished the cell while this one waited for its lock
            results.cache["hits"] += 1
        outputs[name] = out
    return outputs


def _score_model(
    config: EvalConfig,
    model: _Model,
    specs: list[ScoreSpec],
    outputs: dict[str, Outputs],
    id_data: _Data | None,
    fit_data: _Data | None,
    ood_data: list[_Data],
    cache_root: Path,
    results: EvalResults,
) -> None:
    from vitqbench.ood import expected_calibration_error, mean_metrics, ood_metrics, topk_accuracy

    label = model.info.label
    if id_data is None or id_data.info.name not in outputs:
        return
    id_name = id_data.info.name
    id_out = outputs[id_name]
    n_classes = id_out.logits.shape[1]
    if id_out.labels is not None:
        results.id_metrics.append(
            IdMetrics(
                model=label,
                dataset=id_name,
                n=len(id_out),
                top1=float(topk_accuracy(id_out.logits, id_out.labels, 1)),
                top5=float(topk_accuracy(id_out.logits, id_out.labels, 5)) if n_classes >= 5 else None,
                ece=float(expected_calibration_error(id_out.logits, id_out.labels)),
            )
        )
    # The fit set too: with its features, every fitted score can be recomputed from --save-outputs.
    for data in [id_data, *([fit_data] if fit_data is not None else []), *ood_data]:
        if data.info.name in outputs:
            out = outputs[data.info.name]
            results.samples[(label, data.info.name)] = {
                "labels": out.labels if out.labels is not None else np.full(len(out), -1, np.int64),
                "predictions": np.argmax(out.logits, axis=1),
                "paths": out.paths,
            }
    fit_out = outputs.get(fit_data.info.name) if fit_data is not None else None
    ood_names = [d.info.name for d in ood_data]
    for spec in specs:
        try:
            chosen = _tuned(config, spec, model, outputs, fit_out, results)
        except Exception as exc:  # a score that cannot be tuned is a failed cell, with the reason
            message = str(exc) if isinstance(exc, VitqbenchError) else f"{type(exc).__name__}: {exc}"
            results.failures.append(Failure(label, VAL_OOD, f"tune {spec.label}", message))
            continue
        try:
            score = fitted_score(
                chosen, model.info, fit_data.info if fit_data else None, fit_out, cache_root, config.target.tag
            )
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:
            message = str(exc) if isinstance(exc, VitqbenchError) else f"{type(exc).__name__}: {exc}"
            results.failures.append(
                Failure(label, fit_data.info.name if fit_data else None, f"fit {spec.label}", message)
            )
            continue
        try:
            id_scores = _score(score, model.info, id_out)
        except Exception as exc:
            results.failures.append(Failure(label, id_name, f"score {spec.label}", f"{type(exc).__name__}: {exc}"))
            continue
        results.samples[(label, id_name)][spec.label] = id_scores
        rows = []
        for name in ood_names:
            if name not in outputs:
                continue
            try:
                ood_scores = _score(score, model.info, outputs[name])
                m = ood_metrics(id_scores, ood_scores)
            except Exception as exc:
                results.failures.append(Failure(label, name, f"score {spec.label}", f"{type(exc).__name__}: {exc}"))
                continue
            results.samples[(label, name)][spec.label] = ood_scores
            rows.append(OodResult(model=label, dataset=name, score=spec.label, **m.to_dict()))
        results.ood_metrics.extend(rows)
        by_set = {r.dataset: r for r in rows}
        for mean, members in mean_members([d.info for d in ood_data]).items():
            if not all(name in by_set for name in members):
                continue  # a failed set would bias the mean: leave it out rather than mislead
            group = mean_metrics([by_set[name] for name in members])
            results.ood_metrics.append(OodResult(model=label, dataset=mean, score=spec.label, **group.to_dict()))


def _tuned(
    config: EvalConfig,
    spec: ScoreSpec,
    model: _Model,
    outputs: dict[str, Outputs],
    fit_out: Outputs | None,
    results: EvalResults,
) -> ScoreSpec:
    """``spec`` with the values --tune chose on the validation sets (recorded in results.tuning)."""
    if not config.tune or not spec.tunable:
        return spec
    from vitqbench.ood.tuning import tune_score

    val = [outputs.get(name) for name in (VAL_ID, VAL_OOD)]
    if None in val:
        raise VitqbenchError("cannot tune: the validation sets' outputs are missing (see their failures)")
    bundle = lambda out: None if out is None else score_inputs(spec.create(), model.info, out)  # noqa: E731
    tuning = tune_score(spec.name, bundle(val[0]), bundle(val[1]), fit=bundle(fit_out), fixed=spec.params)
    results.tuning.append({"model": model.info.label, "score": spec.label, **asdict(tuning)})
    return ScoreSpec(spec.name, tuning.chosen)


def _score(score: Any, model: ModelInfo, out: Outputs) -> np.ndarray:
    values = np.asarray(score.score(score_inputs(score, model, out)), dtype=np.float64)
    if values.shape != (len(out),):
        raise VitqbenchError(f"score returned shape {values.shape} for {len(out)} samples")
    return values


def _settings(config: EvalConfig) -> dict[str, Any]:
    return {
        "id": config.id,
        "id_name": config.id_name or config.id,
        "ood": dict(config.ood),
        "ood_groups": dict(config.ood_groups),
        "fit": config.fit,
        "scores": config.scores,
        "baseline": config.baseline,
        "provider": config.target.name,
        "target": config.target.to_dict(),
        "threads": config.threads,
        "batch_size": config.batch_size,
        "data_root": str(config.data_root) if config.data_root else None,
        "seed": config.seed,
        "session_policy": SESSION_POLICY,
        "bench": config.bench,
        "fpr_convention": config.fpr_convention,
        "tune": config.tune,
        "val_id": config.val_id,
        "val_ood": config.val_ood,
    }


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("vitqbench", "onnxruntime", "onnx", "numpy", "scikit-learn", "timm", "torch"):
        try:
            out[pkg] = importlib_metadata.version(pkg)
        except importlib_metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out
