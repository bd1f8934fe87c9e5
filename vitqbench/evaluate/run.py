"""The eval matrix as a plan of cells: every model over every dataset once, then scores, metrics, deltas.

``run_eval`` loads and checks the inputs, plans the outputs cells (model x dataset x execution
target, content-addressed) and the scores cells, has an executor run them and aggregates their
results. In process, one ONNX Runtime session is alive at a time (models outer, datasets inner), so
no idle session's spinning threads compete with the running one; a session is only created when
some cell of that model is missing from the cache, so a repeated run touches no model at all.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np

from vitqbench.errors import Interrupted, VitqbenchError, check_seed, first_line
from vitqbench.evaluate.cache import outputs_key, resolve_cache_dir
from vitqbench.evaluate.cells import CellContext, DataSource, OutputsCell, OutputsResult
from vitqbench.evaluate.executor import EXECUTORS, Executor, make_executor
from vitqbench.evaluate.model_scores import ModelScores, ScoresCell
from vitqbench.evaluate.progress import CellProgress
from vitqbench.evaluate.scoring import ScoreSpec, default_score_specs, parse_score_specs
from vitqbench.metadata import ModelMetadata, model_sha256, model_size_bytes, read_metadata
from vitqbench.ood.metrics import headline_fpr
from vitqbench.results import (
    MEAN,
    OOD_GROUPS,
    SYNTHETIC,
    VAL_ID,
    VAL_OOD,
    DatasetInfo,
    EvalResults,
    Failure,
    ModelInfo,
    compute_deltas,
    mean_members,
)
from vitqbench.runtime import CPU, ExecutionTarget, check_threads, execution_target

SESSION_POLICY = "one ONNX Runtime session alive at a time"
FIT = "fit"  # the name of the fit set in results


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
    attention: bool = False  # per-block attention focus and drift, ID vs OOD (models from export --attention)
    tune: bool = False  # search each tunable score's OpenOOD grid by AUROC of val_id vs val_ood
    val_id: str | None = None
    val_ood: str | None = None
    fpr_convention: str = "openood"  # which FPR@95 tables lead with: openood (OOD+) or id-positive
    bench_options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    progress: bool = True
    decode_cache: bool = True  # keep decoded images under the cache root (False: decode every pass)
    keep_outputs: bool = False  # logits and features in the results' samples (for --save-outputs)
    executor: str = "inprocess"  # or "ray"
    ray_address: str | None = None  # an existing Ray cluster; None: start a local one


@dataclass
class _Model:
    info: ModelInfo
    meta: ModelMetadata


@dataclass
class _Data:
    info: DatasetInfo
    dataset: Any
    source: DataSource


def run_eval(config: EvalConfig, executor: Executor | None = None) -> EvalResults:
    """Plan every model x dataset cell, run the plan (``executor``: default from the config), aggregate."""
    specs = _check(config)
    cache_root = resolve_cache_dir(config.cache_dir)
    failures: list[Failure] = []
    warnings: list[str] = []
    models = _load_models(config, failures)
    if not models:
        raise VitqbenchError("no model could be loaded: " + "; ".join(f.describe() for f in failures))
    _check_outputs(config, models, specs, failures)
    dropped = dropped_feature_scores(config)
    if dropped:
        warnings.append(f"feature scores {', '.join(dropped)} skipped: they need --fit DATA (e.g. the ID training set)")
    _assign_baselines(config, models, warnings)
    datasets = _load_datasets(config, failures, warnings, needs_fit=any(s.create().needs_fit for s in specs))
    id_data = next(d for d in datasets if d.info.role == "id")
    fit_data = next((d for d in datasets if d.info.role == "fit"), None)
    warnings += _same_images_warnings(id_data, datasets)
    warnings += _class_name_warnings(models, [d for d in (id_data, fit_data) if d is not None])
    done, scores, executor_name = _run_plan(config, models, datasets, specs, cache_root, executor)
    results = EvalResults(
        models=[m.info for m in models],
        datasets=[d.info for d in datasets],
        scores=[_score_record(s) for s in specs],
        id_metrics=[],
        ood_metrics=[],
        deltas=[],
        failures=failures,
        settings=_settings(config, executor_name),
        versions=_versions(),
        cache={"dir": str(cache_root)},
        warnings=warnings,
    )
    aggregate(results, done, [s for s in scores if s is not None])
    if config.attention:
        from vitqbench.evaluate.attention import attention_maps, attention_rows, map_images

        keys = {(r.model, r.dataset): r.key for r in done if r.ok}
        results.attention = attention_rows(results.models, results.datasets, keys, cache_root)
        results.attention_maps = attention_maps(results.models, results.datasets, keys, cache_root)
        loaded = {d.info.name: d.dataset for d in datasets}
        results.attention_images = map_images(results.attention_maps, results.models, loaded)
    if not results.id_metrics and not results.ood_metrics:  # a report of dashes would pass for a result
        reasons = "; ".join(dict.fromkeys(first_line(f.describe()) for f in results.failures)) or "no metric"
        raise VitqbenchError(f"nothing could be measured, nothing written: {reasons}")
    if config.bench:
        from vitqbench.evaluate.benching import bench_models

        results.bench = bench_models(
            results.models, config.target, config.threads, config.bench_options, config.progress, failures
        )
    return results


def _run_plan(
    config: EvalConfig,
    models: list[_Model],
    datasets: list[_Data],
    specs: list[ScoreSpec],
    cache_root: Path,
    executor: Executor | None,
) -> tuple[list[OutputsResult], list[ModelScores | None], str]:
    """The outputs cells, then the scores cells, on ``executor`` (one made from the config when None)."""
    with CellProgress(enabled=config.progress and config.executor == "inprocess") as progress:
        own = executor is None
        if own:
            context = CellContext({d.source: d.dataset for d in datasets}, progress)
            executor = make_executor(
                config.executor, context, cache_root, config.ray_address, config.threads, config.progress
            )
        done: list[OutputsResult] | None = None
        try:
            outputs = executor.run(plan_outputs(config, models, datasets, cache_root))
            done = [r for r in outputs if r is not None]
            scores = executor.run(plan_scores(config, models, datasets, specs, done, cache_root))
        except (KeyboardInterrupt, Interrupted) as exc:  # finished cells (and shards) stay in the cache
            exc.cells_kept = getattr(exc, "cells_done", 0) if done is None else sum(r.ok for r in done)
            raise
        finally:
            if own:
                executor.close()
    return done, scores, executor.name


def _check(config: EvalConfig) -> list[ScoreSpec]:
    """Bad settings fail here, in one line, before any model or dataset is touched."""
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
    # An unknown or missing provider, or executor, is one error, not a failure per cell.
    config.target = execution_target(config.target).check_available()
    config.executor = config.executor.strip().lower()
    if config.executor not in EXECUTORS:
        raise VitqbenchError(f"unknown executor {config.executor!r}; choose one of {', '.join(EXECUTORS)}")
    return specs


def _score_record(spec: ScoreSpec) -> dict[str, Any]:
    score = spec.create()
    return {
        "name": spec.label,
        "score": spec.name,
        "params": score.params(),
        "needs_fit": score.needs_fit,
        "tunable": spec.tunable,  # OpenOOD tunes it; --tune searches its grid
    }


def plan_outputs(
    config: EvalConfig, models: list[_Model], datasets: list[_Data], cache_root: Path
) -> list[OutputsCell]:
    """One cell per model x dataset (models outer, the ID set first); the others require the ID cell."""
    order = {"id": 0, "fit": 1, "ood": 2, VAL_ID: 3, VAL_OOD: 4}
    run_data = sorted(datasets, key=lambda d: order[d.info.role])
    cells = []
    for model in models:
        id_key = None
        for data in run_data:
            key = outputs_key(model.info.sha256, data.info.key, config.target.tag)
            cells.append(
                OutputsCell(
                    key=key,
                    model=model.info.label,
                    dataset=data.info.name,
                    role=data.info.role,
                    model_path=model.info.path,
                    meta=model.meta,
                    source=data.source,
                    size=data.info.size,
                    target=config.target,
                    threads=config.threads,
                    batch_size=config.batch_size,
                    cache_root=cache_root,
                    decode_cache=config.decode_cache,
                    requires=(id_key,) if id_key else (),
                )
            )
            id_key = id_key or key
    return cells


def plan_scores(
    config: EvalConfig,
    models: list[_Model],
    datasets: list[_Data],
    specs: list[ScoreSpec],
    outputs: list[OutputsResult],
    cache_root: Path,
) -> list[ScoresCell]:
    """One scores cell per model whose ID cell succeeded, over the outputs cells that succeeded."""
    ok = {(r.model, r.dataset): r.key for r in outputs if r.ok}
    id_name = next(d.info.name for d in datasets if d.info.role == "id")
    fit_info = next((d.info for d in datasets if d.info.role == "fit"), None)
    ood_names = [d.info.name for d in datasets if d.info.role == "ood"]
    cells = []
    for model in models:
        label = model.info.label
        if (label, id_name) not in ok:
            continue
        fit = (fit_info, ok[(label, fit_info.name)]) if fit_info and (label, fit_info.name) in ok else None
        ood = [(name, ok[(label, name)]) for name in ood_names if (label, name) in ok]
        val = [(name, ok[(label, name)]) for name in (VAL_ID, VAL_OOD) if config.tune and (label, name) in ok]
        keys = [ok[(label, id_name)], *([fit[1]] if fit else []), *(k for _, k in ood), *(k for _, k in val)]
        cells.append(
            ScoresCell(
                key=f"scores__{label}__" + "__".join([*keys, *(s.label for s in specs)]),
                model=model.info,
                specs=specs,
                id=(id_name, ok[(label, id_name)]),
                fit=fit,
                ood=ood,
                val=val if config.tune else None,
                means=mean_members([d.info for d in datasets]),
                cache_root=cache_root,
                target_tag=config.target.tag,
                keep_outputs=config.keep_outputs,
            )
        )
    return cells


def aggregate(results: EvalResults, outputs: list[OutputsResult], scores: list[ModelScores]) -> None:
    """Fill ``results`` from the cells' results only: metrics rows, samples, failures, skipped images, deltas."""
    seen = {(f.model, f.dataset, f.stage, f.message) for f in results.failures}
    for failure in [r.failure for r in outputs if r.failure] + [f for s in scores for f in s.failures]:
        if (failure.model, failure.dataset, failure.stage, failure.message) not in seen:  # one per model
            seen.add((failure.model, failure.dataset, failure.stage, failure.message))
            results.failures.append(failure)
    for s in scores:
        results.id_metrics += [s.id_metrics] if s.id_metrics is not None else []
        results.ood_metrics += s.ood_metrics
        results.samples.update(s.samples)
        results.tuning += s.tuning
    skipped: dict[str, dict[str, str]] = {}
    for r in outputs:
        skipped.setdefault(r.dataset, {}).update(dict(r.skipped))
    for info in results.datasets:
        info.skipped = sorted(skipped.get(info.name, {}).items())
    results.cache.update(
        hits=sum(r.cached for r in outputs),
        computed=sum(r.ok and not r.cached for r in outputs),
        sessions=sum(r.sessions for r in outputs),
        samples_computed=sum(r.computed for r in outputs),
    )
    results.deltas = compute_deltas(results.models, results.id_metrics, results.ood_metrics)


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
            failures.append(Failure.of(label, None, "load-model", exc))
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


def _check_outputs(config: EvalConfig, models: list[_Model], specs: list[ScoreSpec], failures: list[Failure]) -> None:
    """What the scores read must be in every model (refused before inference); a model without the
    attention outputs fails its attention cells in one line and the rest of the run goes on."""
    if config.attention:
        from vitqbench.evaluate.attention import attention_failures

        failures += attention_failures({m.info.label: m.meta for m in models})
    _check_heads(models, specs)


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
        source = DataSource(spec, Path(root) if root is not None else None, config.strict, config.seed)
        try:
            ds = load_dataset(spec, data_root=root, strict=config.strict, seed=config.seed)
            if len(ds) == 0:
                raise VitqbenchError(f"{spec} holds no images")
        except Exception as exc:  # a broken OOD or fit set must not stop the other cells
            failure = Failure.of(None, name, "load-data", exc)
            if role == "id":  # without it nothing can be measured: stop before anything runs
                raise VitqbenchError(f"ID set {name}: {failure.message}") from exc
            failures.append(failure)
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
        loaded.append(_Data(info, ds, source))
    return loaded


def _same_images_warnings(id_data: _Data, datasets: list[_Data]) -> list[str]:
    """A fit or OOD set with the ID set's very images (same content key) makes the numbers meaningless."""
    out = []
    for data in datasets:
        if data is id_data or data.info.key != id_data.info.key:
            continue
        if data.info.role == "fit":
            out.append("the fit set is the ID evaluation set: feature scores see the test samples")
        elif data.info.role == "ood":
            out.append(f"OOD set {data.info.name} holds the same images as the ID set: its AUROC is 50 % by design")
    return out


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


def _settings(config: EvalConfig, executor: str) -> dict[str, Any]:
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
        "executor": executor,
        "bench": config.bench,
        "fpr_convention": config.fpr_convention,
        "tune": config.tune,
        "attention": config.attention,
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
