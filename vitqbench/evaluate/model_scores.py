"""The scores cell: one model's cached outputs to ID metrics, OOD scores and their metrics."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vitqbench.errors import VitqbenchError
from vitqbench.evaluate.cache import OutputCache, Outputs
from vitqbench.evaluate.cells import CellContext
from vitqbench.evaluate.scoring import ScoreSpec
from vitqbench.evaluate.state import fitted_score, score_inputs
from vitqbench.results import OUTPUT_PREFIX, VAL_ID, VAL_OOD, DatasetInfo, Failure, IdMetrics, ModelInfo, OodResult


@dataclass
class ModelScores:
    """Everything measured on one model: typed rows plus its per-sample arrays."""

    model: str
    id_metrics: IdMetrics | None = None
    ood_metrics: list[OodResult] = field(default_factory=list)
    samples: dict[tuple[str, str], dict[str, np.ndarray]] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    tuning: list[dict[str, Any]] = field(default_factory=list)  # --tune: each tuned score's grid and choice


@dataclass
class ScoresCell:
    """Scores of one model, from the outputs cells that succeeded (their keys name the inputs)."""

    key: str
    model: ModelInfo
    specs: list[ScoreSpec]
    id: tuple[str, str]  # (dataset name, outputs key)
    fit: tuple[DatasetInfo, str] | None  # the fit set and its outputs key, when its cell succeeded
    ood: list[tuple[str, str]]  # (OOD set name, outputs key) of the cells that succeeded
    val: list[tuple[str, str]] | None  # --tune: (validation set name, outputs key) that succeeded; None: no tuning
    means: dict[str, list[str]]  # each mean pseudo set -> the loaded OOD sets it averages
    cache_root: Path
    target_tag: str
    keep_outputs: bool = False  # logits, features (and attention outputs) too, for --save-outputs
    requires: tuple[str, ...] = ()

    def failed(self, exc: BaseException, stage: str = "score") -> ModelScores:
        return ModelScores(self.model.label, failures=[Failure.of(self.model.label, None, stage, exc)])

    def run(self, ctx: CellContext) -> ModelScores:
        cache = OutputCache(self.cache_root)
        label, (id_name, _) = self.model.label, self.id
        outputs = {name: cache.get(key) for name, key in [self.id, *self.ood]}
        if self.fit is not None:
            outputs[self.fit[0].name] = cache.get(self.fit[1])
        val = {name: cache.get(key) for name, key in self.val or []}
        missing = [name for name, out in {**outputs, **val}.items() if out is None]
        if missing:  # removed from the cache since its cell ran
            return self.failed(VitqbenchError(f"outputs of {', '.join(missing)} are missing from the cache"))
        result = ModelScores(label, id_metrics=_id_metrics(label, id_name, outputs[id_name]))
        for name, out in outputs.items():
            result.samples[(label, name)] = _samples(out, self.keep_outputs)
        for spec in self.specs:
            self._score(spec, outputs, val, result)
        return result

    def _score(
        self, spec: ScoreSpec, outputs: dict[str, Outputs], val: dict[str, Outputs], result: ModelScores
    ) -> None:
        label, id_name = self.model.label, self.id[0]
        fit_info, fit_out = (self.fit[0], outputs[self.fit[0].name]) if self.fit else (None, None)
        try:
            chosen = self._tuned(spec, val, fit_out, result)
        except Exception as exc:  # a score that cannot be tuned is a failed cell, with the reason
            result.failures.append(Failure.of(label, VAL_OOD, f"tune {spec.label}", exc))
            return
        try:
            score = fitted_score(chosen, self.model, fit_info, fit_out, self.cache_root, self.target_tag)
        except Exception as exc:
            result.failures.append(Failure.of(label, fit_info.name if fit_info else None, f"fit {spec.label}", exc))
            return
        try:
            id_scores = _score(score, self.model, outputs[id_name])
        except Exception as exc:
            result.failures.append(Failure.of(label, id_name, f"score {spec.label}", exc))
            return
        result.samples[(label, id_name)][spec.label] = id_scores
        rows = []
        for name, _ in self.ood:
            try:
                ood_scores = _score(score, self.model, outputs[name])
                rows.append(_ood_row(label, name, spec.label, id_scores, ood_scores))
            except Exception as exc:
                result.failures.append(Failure.of(label, name, f"score {spec.label}", exc))
                continue
            result.samples[(label, name)][spec.label] = ood_scores
        result.ood_metrics.extend(rows)
        result.ood_metrics += _mean_rows(rows, self.means)

    def _tuned(
        self, spec: ScoreSpec, val: dict[str, Outputs], fit_out: Outputs | None, result: ModelScores
    ) -> ScoreSpec:
        """``spec`` with the values --tune chose on the validation sets (recorded in ``result.tuning``)."""
        if self.val is None or not spec.tunable:
            return spec
        from vitqbench.ood.tuning import tune_score

        if set(val) != {VAL_ID, VAL_OOD}:
            raise VitqbenchError("cannot tune: the validation sets' outputs are missing (see their failures)")
        bundle = lambda out: None if out is None else score_inputs(spec.create(), self.model, out)  # noqa: E731
        tuning = tune_score(
            spec.name, bundle(val[VAL_ID]), bundle(val[VAL_OOD]), fit=bundle(fit_out), fixed=spec.params
        )
        result.tuning.append({"model": self.model.label, "score": spec.label, **asdict(tuning)})
        return ScoreSpec(spec.name, tuning.chosen)


def _id_metrics(label: str, dataset: str, out: Outputs) -> IdMetrics | None:
    from vitqbench.ood import expected_calibration_error, topk_accuracy

    if out.labels is None:
        return None
    five = out.logits.shape[1] >= 5
    return IdMetrics(
        model=label,
        dataset=dataset,
        n=len(out),
        top1=float(topk_accuracy(out.logits, out.labels, 1)),
        top5=float(topk_accuracy(out.logits, out.labels, 5)) if five else None,
        ece=float(expected_calibration_error(out.logits, out.labels)),
    )


def _samples(out: Outputs, keep_outputs: bool) -> dict[str, np.ndarray]:
    """Per-sample arrays (the fit set's too: with its features every fitted score can be recomputed)."""
    samples = {
        "labels": out.labels if out.labels is not None else np.full(len(out), -1, np.int64),
        "predictions": np.argmax(out.logits, axis=1),
        "paths": out.paths,
    }
    if keep_outputs:  # with the attention outputs of an export --attention model
        samples.update(logits=out.logits, features=out.features)
        samples.update({OUTPUT_PREFIX + name: value for name, value in out.extras.items()})
    return samples


def _score(score: Any, model: ModelInfo, out: Outputs) -> np.ndarray:
    values = np.asarray(score.score(score_inputs(score, model, out)), dtype=np.float64)
    if values.shape != (len(out),):
        raise VitqbenchError(f"score returned shape {values.shape} for {len(out)} samples")
    return values


def _ood_row(label: str, name: str, score: str, id_scores: np.ndarray, ood_scores: np.ndarray) -> OodResult:
    from vitqbench.ood import ood_metrics

    return OodResult(model=label, dataset=name, score=score, **ood_metrics(id_scores, ood_scores).to_dict())


def _mean_rows(rows: list[OodResult], means: dict[str, list[str]]) -> list[OodResult]:
    """Each mean over its member sets; a mean missing a failed set is left out rather than mislead."""
    from vitqbench.ood import mean_metrics

    by_set = {r.dataset: r for r in rows}
    out = []
    for mean, members in means.items():
        if rows and all(name in by_set for name in members):
            group = mean_metrics([by_set[name] for name in members])
            out.append(OodResult(model=rows[0].model, dataset=mean, score=rows[0].score, **group.to_dict()))
    return out
