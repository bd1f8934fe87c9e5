"""``vitqbench sensitivity``: which units' quantization hurts ID accuracy and OOD detection, and a plan.

Per precision, one calibration of the whole model (``quant.wxax.calibrate_wxax`` with every unit at
that precision) serves every unit: each unit's model (that unit quantized, the rest fp32) is
written from it, so a unit costs one graph rewrite and one eval of its cells. The models are
evaluated as one eval plan (cached, resumable, on the eval's executor) against the fp32 model, and
every unit gets deltas of top-1, logit error and each score's mean AUROC / AUPR-out / FPR@95 over
the real OOD sets, feature scores both refitted on the unit's model and fitted once on fp32.

With a budget (``aupr_out>=-1,top1>=-0.5``), ``plan_search`` picks a precision per unit that
minimizes weight bytes while the summed per-unit deltas keep the budget; the mixed model is then
built and evaluated, and while the measured deltas break the budget the search is repeated with
the thresholds shifted by the measured interaction gap (at most ``VERIFY_ROUNDS`` times).
"""

from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vitqbench.errors import VitqbenchError
from vitqbench.evaluate.run import FIT, EvalConfig, run_eval
from vitqbench.evaluate.scoring import ScoreSpec, default_score_specs, parse_score_specs
from vitqbench.metadata import get_metadata, load_onnx, read_head
from vitqbench.ood.metrics import OOD_METRICS, headline_fpr
from vitqbench.results import LOGIT_ERROR, MEAN, EvalResults, SensitivityResults, UnitSensitivity, mean_members

ID_KEYS = ("top1", LOGIT_ERROR)
OOD_KEYS = ("auroc", "aupr_out", "fpr95")  # fpr95: the run's headline FPR@95 convention
LOWER_IS_BETTER = {LOGIT_ERROR, "fpr95"}
FP32_FIT = "@fp32-fit"
ALL_UNITS = "all"
VERIFY_ROUNDS = 4


# ------------------------------------------------------------------------------------------- budgets
@dataclass(frozen=True)
class Constraint:
    """``key op bound``: ``key`` a delta key (``top1``, ``energy.aupr_out``), bound in points."""

    key: str
    op: str  # ">=" or "<="
    bound: float

    def deficit(self, value: float) -> float:
        """How far ``value`` is from meeting the constraint (0: met)."""
        return max(0.0, self.bound - value) if self.op == ">=" else max(0.0, value - self.bound)

    def shifted(self, by: float) -> Constraint:
        return Constraint(self.key, self.op, self.bound + by)

    def __str__(self) -> str:
        return f"{self.key}{self.op}{self.bound:g}"


def parse_budget(text: str, scores: list[str]) -> list[Constraint]:
    """``[SCORE.]METRIC>=X`` or ``<=X``, comma-separated; a metric without a score binds every score."""
    metrics = (*ID_KEYS, *OOD_KEYS)
    out = []
    for item in (i.strip() for i in text.split(",") if i.strip()):
        match = re.fullmatch(r"(.+?)\s*(>=|<=)\s*([-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)", item)
        if not match:
            raise VitqbenchError(f"budget item {item!r} is not [SCORE.]METRIC>=X or <=X (e.g. aupr_out>=-1.0)")
        left, op, bound = match.group(1), match.group(2), float(match.group(3))
        score, _, metric = left.rpartition(".")
        if metric not in metrics:
            raise VitqbenchError(f"budget: unknown metric {metric!r}; choose from {', '.join(metrics)}")
        if metric in ID_KEYS:
            if score:
                raise VitqbenchError(f"budget: {metric} is an ID metric; it takes no score ({item!r})")
            out.append(Constraint(metric, op, bound))
            continue
        if score and score not in scores:
            raise VitqbenchError(f"budget: score {score!r} is not computed in this run ({', '.join(scores)})")
        out += [Constraint(f"{s}.{metric}", op, bound) for s in ([score] if score else scores)]
    if not out:
        raise VitqbenchError("empty --budget")
    return out


# -------------------------------------------------------------------------------------------- search
def plan_search(
    units: list[str],
    sizes: dict[str, dict[str, int]],
    deltas: dict[tuple[str, str], dict[str, float]],
    constraints: list[Constraint],
    precisions: list[str],
) -> dict[str, str]:
    """The smallest assignment (unit -> one of ``precisions``) whose summed deltas meet ``constraints``.

    Greedy: start every unit at its smallest measured precision (ties: fewer bits); while a
    constraint is broken, move the one unit to the larger precision with the most deficit recovered
    per byte added. ``deltas[(unit, precision)]`` holds that unit's measured deltas; ``fp32``, when
    listed, is always available with zero deltas.
    """

    def delta(unit: str, precision: str, key: str) -> float:
        return 0.0 if precision == "fp32" else deltas.get((unit, precision), {}).get(key, 0.0)

    def options(unit: str) -> list[str]:
        usable = [p for p in precisions if p == "fp32" or (unit, p) in deltas]
        return sorted(usable, key=lambda p: (sizes[unit][p], _bits(p)))

    choice = {u: options(u)[0] for u in units}

    def totals() -> dict[str, float]:
        return {c.key: sum(delta(u, choice[u], c.key) for u in units) for c in constraints}

    while True:
        now = totals()
        deficits = {c: c.deficit(now[c.key]) for c in constraints}
        if not any(deficits.values()):
            return choice
        best, best_gain = None, 0.0
        for unit in units:
            current = choice[unit]
            for option in options(unit):
                extra = sizes[unit][option] - sizes[unit][current]
                if option == current or extra < 0:
                    continue
                gain = 0.0
                for c, before in deficits.items():
                    after = c.deficit(now[c.key] - delta(unit, current, c.key) + delta(unit, option, c.key))
                    gain += (before - after) / max(before, 1e-9) if before else min(0.0, before - after)
                score = gain / (extra + 1)
                if gain > 1e-12 and score > best_gain:
                    best, best_gain = (unit, option), score
        if best is None:
            widest = "fp32" if "fp32" in precisions else "its widest candidate"
            raise VitqbenchError(
                f"the budget cannot be met even with every unit in {widest}: "
                + ", ".join(str(c) for c, d in deficits.items() if d)
            )
        choice[best[0]] = best[1]


def _bits(precision: str) -> tuple[int, int]:
    """(weight bits, activation bits) for ordering: fp32 and float activations count 32."""
    from vitqbench.quant.mixed import UNIT_PRECISIONS

    widths = UNIT_PRECISIONS[precision]
    return (32, 32) if widths is None else (widths[0], widths[1] or 32)


# ------------------------------------------------------------------------------------------- running
@dataclass
class SensitivityConfig:
    model: Path
    calib: Any  # a quant.CalibConfig
    eval: EvalConfig  # the datasets, scores and run settings; its models are filled in here
    out: Path
    precisions: list[str] = field(default_factory=lambda: ["w4a4"])
    granularity: str = "block"
    budget: str | None = None
    candidates: list[str] | None = None  # precisions a plan may use (default: the measured ones and fp32)
    progress: bool = True


def check_sensitivity(config: SensitivityConfig) -> tuple[list[ScoreSpec], list[Constraint]]:
    """Every bad setting as one line before any model is quantized."""
    from vitqbench.quant.mixed import FP32, check_unit_precision
    from vitqbench.quant.units import GRANULARITIES

    if config.granularity not in GRANULARITIES:
        raise VitqbenchError(f"unknown --granularity {config.granularity!r}; choose {' or '.join(GRANULARITIES)}")
    if not config.precisions:
        raise VitqbenchError("give at least one --scheme")
    for precision in config.precisions:
        if check_unit_precision(precision, "scheme") == FP32:
            raise VitqbenchError("--scheme fp32 quantizes nothing; choose a quantized unit precision")
    ev = config.eval
    specs = parse_score_specs(ev.scores) if ev.scores else default_score_specs(ev.fit is not None)
    if any(s.create().needs_fit for s in specs) and ev.fit is None:
        raise VitqbenchError("feature scores need --fit DATA (e.g. the ID training set)")
    if not ev.ood:
        raise VitqbenchError("give at least one --ood NAME=DATA: sensitivity measures OOD detection")
    headline_fpr(ev.fpr_convention)
    constraints = parse_budget(config.budget, [s.label for s in specs]) if config.budget else []
    return specs, constraints


def run_sensitivity(config: SensitivityConfig) -> SensitivityResults:
    from vitqbench.quant.mixed import named_copy, unit_weight_bytes
    from vitqbench.quant.units import find_units

    start = time.perf_counter()
    specs, constraints = check_sensitivity(config)
    model = load_onnx(config.model)
    meta = get_metadata(model, origin=str(config.model))
    if meta.quantization:
        raise VitqbenchError(f"{config.model} is already quantized ({meta.precision}); give its fp32 parent")
    named = named_copy(model)
    units = find_units(named, meta, config.granularity)
    sizes = unit_weight_bytes(named, meta, units)
    builder = _UnitModels(config, model, meta, units, sizes)
    paths = builder.unit_models()
    results = _evaluate(config, [(label, path) for label, (_, _, path) in paths.items()])
    rows, uniform, fp32 = _rows(config, results, specs, paths, sizes)
    out = SensitivityResults(
        model=config.model.name,
        model_sha256=builder.sha256,
        granularity=config.granularity,
        precisions=list(config.precisions),
        scores=[s.label for s in specs],
        units=[u.name for u in units],
        fp32=fp32,
        rows=rows,
        uniform=uniform,
        ranking=rank_units(rows, [s.label for s in specs]),
        settings=_settings(config),
        warnings=list(results.warnings),
    )
    if constraints:
        out.plan = _plan(config, builder, constraints, rows, sizes)
    out.wall_s = time.perf_counter() - start
    return out


class _UnitModels:
    """The unit models of every precision (and the uniform one), written once and reused while valid."""

    def __init__(
        self, config: SensitivityConfig, model: Any, meta: Any, units: list[Any], sizes: dict[str, dict[str, int]]
    ) -> None:
        from vitqbench.files import sha256_file
        from vitqbench.quant.mixed import named_copy

        self.config, self.model, self.meta, self.units, self.sizes = config, model, meta, units, sizes
        self.named = named_copy(model)
        self.sha256 = sha256_file(config.model)
        self.folder = config.out / "models"
        self._calib_set: Any = None

    def calib_set(self) -> Any:
        from vitqbench.quant.calibration import calibration_set

        if self._calib_set is None:
            self._calib_set = calibration_set(self.config.calib, self.meta.data_config, progress=self.config.progress)
        return self._calib_set

    def scheme(self, assignment: dict[str, str]) -> Any:
        from vitqbench.quant.mixed import MixedConfig

        return MixedConfig(granularity=self.config.granularity, units=assignment, model_sha256=self.sha256)

    def unit_models(self) -> dict[str, tuple[str, str, Path]]:
        """label -> (unit or ``all``, precision, path): the fp32 model first, then each precision's units."""
        out: dict[str, tuple[str, str, Path]] = {"fp32": ("", "fp32", self.config.model)}
        for precision in self.config.precisions:
            everything = {u.name: precision for u in self.units}
            wanted = {ALL_UNITS: everything}
            for unit in self.units:
                if self._quantizes(unit.name, precision):
                    wanted[unit.name] = {unit.name: precision}
            missing = {n: a for n, a in wanted.items() if not self._valid(self._path(precision, n), a)}
            if missing:
                self._write(precision, everything, missing)
            for name in wanted:
                out[f"{precision}.{name}"] = (name, precision, self._path(precision, name))
        return out

    def _quantizes(self, unit: str, precision: str) -> bool:
        """Whether ``precision`` changes anything in ``unit``: a weightless unit (an attention matmul)
        has nothing to quantize at a weight-only precision (w4)."""
        from vitqbench.quant.mixed import UNIT_PRECISIONS

        return UNIT_PRECISIONS[precision][1] is not None or self.sizes[unit]["fp32"] > 0

    def _path(self, precision: str, name: str) -> Path:
        return self.folder / precision / f"{name}.onnx"

    def _valid(self, path: Path, assignment: dict[str, str]) -> bool:
        from vitqbench.metadata import read_metadata
        from vitqbench.quant.mixed import plan_from_metadata

        if not path.is_file():
            return False
        try:
            meta = read_metadata(path)
            plan = plan_from_metadata(meta)
        except (VitqbenchError, KeyError, TypeError):
            return False
        calibration = (meta.quantization or {}).get("calibration") or {}
        return (
            plan.hash == self.scheme(assignment).plan().hash
            and calibration.get("data") == self.config.calib.data
            and calibration.get("size") is not None
            and (meta.quantization or {}).get("seed") == self.config.calib.seed
        )

    def _write(self, precision: str, everything: dict[str, str], missing: dict[str, dict[str, str]]) -> None:
        from vitqbench.quant import save_quantized
        from vitqbench.quant.mixed import node_precisions
        from vitqbench.quant.wxax import calibrate_wxax

        full = self.scheme(everything)
        calibrated = calibrate_wxax(
            self.named, self.meta, full, self.calib_set(), node_precisions(self.units, everything)
        )
        for done, (name, assignment) in enumerate(missing.items(), 1):
            meta = get_metadata(self.model, origin=str(self.config.model))  # fresh: a write may re-point the head
            scheme = self.scheme(assignment)
            quantized, record = scheme.write(calibrated, meta, node_precisions(self.units, assignment))
            path = self._path(precision, name)
            path.parent.mkdir(parents=True, exist_ok=True)
            save_quantized(self.config.model, path, meta, quantized, record, self.calib_set(), self.sha256)
            if self.config.progress and (done % 10 == 0 or done == len(missing)):
                print(f"sensitivity: {precision}: wrote {done}/{len(missing)} unit models", flush=True)

    def mixed(self, assignment: dict[str, str]) -> Path:
        """The plan's mixed model (calibrated for that plan, as `quantize --plan` would write it)."""
        from vitqbench.quant import quantize_model

        scheme = self.scheme(assignment)
        path = self.folder / f"{scheme.plan().label.replace('@', '-')}.onnx"
        if not self._valid(path, assignment):
            path.parent.mkdir(parents=True, exist_ok=True)
            quantize_model(self.config.model, path, scheme, self.config.calib, progress=self.config.progress)
        return path


def _evaluate(config: SensitivityConfig, models: list[tuple[str, Path]]) -> EvalResults:
    ev = dataclasses.replace(
        config.eval,
        models=[p for _, p in models],
        labels=[label for label, _ in models],
        baseline=models[0][0],
        keep_outputs=True,
        progress=config.progress,
    )
    results = run_eval(ev)
    failed = [f.describe() for f in results.failures]
    if failed:
        raise VitqbenchError(f"{len(failed)} eval cell(s) failed, first: {failed[0]}")
    return results


def _values(results: EvalResults, label: str) -> dict[str, float]:
    """The absolute values (points) of one model: top-1, logit error against the ``fp32`` model and
    each score's mean OOD metrics."""
    out: dict[str, float] = {LOGIT_ERROR: _logit_error(results, label)}
    for row in results.id_metrics:
        if row.model == label and row.top1 is not None:
            out["top1"] = 100 * row.top1
    names = _ood_metric_names(results)
    for row in results.ood_metrics:
        if row.model == label and row.dataset == MEAN:
            for key, name in names.items():
                out[f"{row.score}.{key}"] = 100 * getattr(row, name)
    return out


def _ood_metric_names(results: EvalResults) -> dict[str, str]:
    """Our OOD keys -> the metric fields they read (fpr95: the run's headline FPR@95 convention)."""
    fpr = headline_fpr(results.settings.get("fpr_convention", "openood"))
    return {"auroc": "auroc", "aupr_out": "aupr_out", "fpr95": fpr}


def _id_name(results: EvalResults) -> str:
    return next(d.name for d in results.datasets if d.role == "id")


def _rows(
    config: SensitivityConfig,
    results: EvalResults,
    specs: list[ScoreSpec],
    paths: dict[str, tuple[str, str, Path]],
    sizes: dict[str, dict[str, int]],
) -> tuple[list[UnitSensitivity], list[UnitSensitivity], dict[str, float]]:
    fp32 = _values(results, "fp32")
    fitted = _fp32_fitted(config, results, specs)
    fp32.update({k + FP32_FIT: v for k, v in _fp32_fit_values(results, "fp32", fitted).items()})
    rows, uniform = [], []
    execution = {m.label: m.execution for m in results.models}
    for label, (unit, precision, _) in paths.items():
        if label == "fp32":
            continue
        values = _values(results, label)
        values.update({k + FP32_FIT: v for k, v in _fp32_fit_values(results, label, fitted).items()})
        deltas = {k: v - fp32[k] for k, v in values.items() if k in fp32}
        weight = sum(sizes[u][precision] for u in sizes) if unit == ALL_UNITS else sizes[unit][precision]
        row = UnitSensitivity(unit, precision, int(weight), deltas, label, execution.get(label))
        (uniform if unit == ALL_UNITS else rows).append(row)
    return rows, uniform, fp32


def _logit_error(results: EvalResults, label: str) -> float:
    id_name = _id_name(results)
    ref = results.samples[("fp32", id_name)]["logits"].astype(np.float64)
    got = results.samples[(label, id_name)]["logits"].astype(np.float64)
    return float(100 * np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-12))


def _fp32_fitted(config: SensitivityConfig, results: EvalResults, specs: list[ScoreSpec]) -> dict[str, Any]:
    """Each feature score fitted once on the fp32 model's fit outputs (with the fp32 model's head)."""
    from vitqbench.ood import ScoreInputs

    fitted = {}
    head = None
    for spec in specs:
        score = spec.create()
        if not score.needs_fit:
            continue
        if score.needs_head and head is None:
            head = read_head(config.model)
        fit = results.samples[("fp32", FIT)]
        score.fit(_inputs(fit, head if score.needs_head else None, ScoreInputs))
        fitted[spec.label] = (score, head if score.needs_head else None)
    return fitted


def _inputs(samples: dict[str, np.ndarray], head: Any, cls: Any) -> Any:
    labels = samples.get("labels")
    return cls(logits=samples["logits"], features=samples["features"], labels=labels, head=head)


def _fp32_fit_values(results: EvalResults, label: str, fitted: dict[str, Any]) -> dict[str, float]:
    """Mean OOD metrics (points) of ``label``'s outputs scored by the fp32-fitted feature scores."""
    from vitqbench.ood import ScoreInputs, mean_metrics, ood_metrics

    if not fitted:
        return {}
    id_name = _id_name(results)
    oods = mean_members(results.datasets).get(MEAN, [])  # the real OOD sets, as eval's mean
    out = {}
    for name, (score, head) in fitted.items():
        id_scores = score.score(_inputs(results.samples[(label, id_name)], head, ScoreInputs))
        rows = [
            ood_metrics(id_scores, score.score(_inputs(results.samples[(label, o)], head, ScoreInputs))) for o in oods
        ]
        if not rows:
            continue
        mean = mean_metrics(rows)
        for key, metric in _ood_metric_names(results).items():
            out[f"{name}.{key}"] = 100 * getattr(mean, metric)
    return out


# --------------------------------------------------------------------------------------------- ranks
def rank_units(rows: list[UnitSensitivity], scores: list[str]) -> list[dict[str, Any]]:
    """Per precision and score: how the units rank by ID damage vs OOD damage.

    ID damage is the logit error (continuous; a single unit's top-1 delta is mostly a few images),
    OOD damage the fall in AUPR-out. Spearman's rho between the two, and the units whose ranks
    differ most (rank 1: the most harmful).
    """
    from scipy.stats import spearmanr

    out = []
    for precision in dict.fromkeys(r.precision for r in rows):
        mine = [r for r in rows if r.precision == precision]
        for score in scores:
            key = f"{score}.aupr_out"
            have = [r for r in mine if LOGIT_ERROR in r.deltas and key in r.deltas]
            if len(have) < 3:
                continue
            id_harm = [r.deltas[LOGIT_ERROR] for r in have]
            ood_harm = [-r.deltas[key] for r in have]
            constant = np.ptp(id_harm) == 0 or np.ptp(ood_harm) == 0  # rho undefined
            rho = np.nan if constant else spearmanr(id_harm, ood_harm).statistic
            id_rank, ood_rank = _ranks(id_harm), _ranks(ood_harm)
            pairs = zip(have, id_rank, ood_rank, strict=True)
            moved = sorted(
                ({"unit": r.unit, "id_rank": int(i), "ood_rank": int(o)} for r, i, o in pairs),
                key=lambda m: -abs(m["id_rank"] - m["ood_rank"]),
            )
            out.append(
                {
                    "precision": precision,
                    "score": score,
                    "spearman": None if np.isnan(rho) else float(rho),
                    "most_ood_harmful": [r.unit for r in sorted(have, key=lambda r: r.deltas[key])[:3]],
                    "most_id_harmful": [r.unit for r in sorted(have, key=lambda r: -r.deltas[LOGIT_ERROR])[:3]],
                    "rank_changes": [m for m in moved[:5] if m["id_rank"] != m["ood_rank"]],
                }
            )
    return out


def _ranks(harm: list[float]) -> np.ndarray:
    """Rank 1 = the most harmful (largest harm); ties share the smaller rank."""
    values = np.asarray(harm)
    return np.array([1 + int(np.sum(values > v)) for v in values])


# ---------------------------------------------------------------------------------------------- plan
def _plan(
    config: SensitivityConfig,
    builder: _UnitModels,
    constraints: list[Constraint],
    rows: list[UnitSensitivity],
    sizes: dict[str, dict[str, int]],
) -> dict[str, Any]:
    from vitqbench.quant.mixed import MixedPlan

    candidates = config.candidates or [*config.precisions, "fp32"]
    unknown = [p for p in candidates if p not in (*config.precisions, "fp32")]
    if unknown:
        raise VitqbenchError(f"--candidates {', '.join(unknown)} were not measured: add them to --scheme")
    deltas = {(r.unit, r.precision): r.deltas for r in rows if r.precision in candidates}
    units = list(sizes)
    rounds = []
    shift = {c.key: 0.0 for c in constraints}
    for _ in range(VERIFY_ROUNDS):
        shifted = [c.shifted(shift[c.key]) for c in constraints]
        assignment = plan_search(units, sizes, deltas, shifted, candidates)
        estimate = {
            c.key: sum(deltas.get((u, p), {}).get(c.key, 0.0) for u, p in assignment.items()) for c in constraints
        }
        path = builder.mixed(assignment)
        results = _evaluate(config, [("fp32", config.model), ("mixed", path)])
        measured, base = _values(results, "mixed"), _values(results, "fp32")
        verified = {c.key: measured[c.key] - base[c.key] for c in constraints}
        measured_all = {k: v - base[k] for k, v in measured.items() if k in base}
        rounds.append(
            {
                "assignment": assignment,
                "thresholds": [str(c) for c in shifted],
                "estimated": estimate,
                "verified": verified,
                "gap": {k: verified[k] - estimate[k] for k in verified},
                "measured": measured_all,
                "weight_bytes": sum(sizes[u][p] for u, p in assignment.items()),
                "file_bytes": path.stat().st_size,
                "path": str(path),
            }
        )
        broken = [c for c in constraints if c.deficit(verified[c.key])]
        if not broken:
            break
        for c in broken:  # tighten by the measured interaction gap (at least the deficit itself)
            gap = estimate[c.key] - verified[c.key]
            step = max(abs(gap), c.deficit(verified[c.key]))
            shift[c.key] += step if c.op == ">=" else -step
    final = rounds[-1]
    plan = MixedPlan(
        builder.sha256,
        config.granularity,
        final["assignment"],
        builder.scheme(final["assignment"]).recipe(),
        model_file=config.model.name,
    )
    met = not any(c.deficit(final["verified"][c.key]) for c in constraints)
    plan.summary = {
        "budget": config.budget,
        "met": met,
        "candidates": list(candidates),
        "rounds": rounds,
    }
    return {"plan": plan.to_dict(), "label": plan.label, "met": met, "rounds": rounds}


def _settings(config: SensitivityConfig) -> dict[str, Any]:
    ev = config.eval
    return {
        "model": str(config.model),
        "calib": config.calib.data,
        "calib_size": config.calib.size,
        "seed": config.calib.seed,
        "granularity": config.granularity,
        "precisions": list(config.precisions),
        "budget": config.budget,
        "candidates": config.candidates,
        "id": ev.id,
        "ood": dict(ev.ood),
        "fit": ev.fit,
        "scores": ev.scores,
        "threads": ev.threads,
        "batch_size": ev.batch_size,
        "executor": ev.executor,
        "fpr_convention": ev.fpr_convention,
        "ood_metrics": [m.name for m in OOD_METRICS],
    }
