"""results.json and results.csv: the machine-readable forms of one EvalResults."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from vitqbench.files import write_text_atomic
from vitqbench.results import ID_METRICS, METRICS, OOD_METRICS, EvalResults

JSON_SCHEMA = 1
CSV_COLUMNS = [
    "model",
    "precision",
    "execution",
    "display_name",
    "baseline",
    "dataset",
    "role",
    "group",
    "score",
    "n",
    *METRICS,
    *(f"delta_{m}{suffix}" for m in METRICS for suffix in ("", "_rel")),
]


def results_json(results: EvalResults) -> str:
    doc = {"schema": JSON_SCHEMA, **results.to_dict()}
    return json.dumps(doc, indent=2, sort_keys=False, allow_nan=False)


def csv_rows(results: EvalResults) -> list[dict[str, Any]]:
    """One row per model x dataset x score (the ID set has one row per model: accuracy has no score)."""
    rows = []
    for model in results.models:
        base = {
            "model": model.label,
            "precision": model.precision,
            "execution": model.execution,
            "display_name": model.display_name,
            "baseline": model.baseline,
        }
        id_row = results.id_metric(model.label)
        if id_row is not None:
            row = {**base, "dataset": id_row.dataset, "role": "id", "score": "", "n": id_row.n}
            for metric in (info.name for info in ID_METRICS):
                row[metric] = getattr(id_row, metric)
                _delta_cells(row, results.delta(model.label, id_row.dataset, None, metric), metric)
            rows.append(row)
        groups = {d.name: d.group for d in results.datasets}
        for dataset in [*results.ood_datasets, *results.means]:
            for score in results.score_names:
                m = results.ood_metric(model.label, dataset, score)
                if m is None:
                    continue
                role = "ood" if dataset in groups else "mean"
                group = groups.get(dataset) if role == "ood" else dataset.partition(":")[2] or None
                row = {**base, "dataset": dataset, "role": role, "group": group, "score": score, "n": m.n_ood}
                for metric in (info.name for info in OOD_METRICS):
                    row[metric] = getattr(m, metric)
                    _delta_cells(row, results.delta(model.label, dataset, score, metric), metric)
                rows.append(row)
    return rows


def _delta_cells(row: dict[str, Any], delta: Any, metric: str) -> None:
    if delta is not None:
        row[f"delta_{metric}"] = delta.abs
        row[f"delta_{metric}_rel"] = delta.rel


def results_csv(results: EvalResults) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in csv_rows(results):
        writer.writerow({k: _cell(row.get(k)) for k in CSV_COLUMNS})
    return buf.getvalue()


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)  # full precision, so the csv agrees exactly with results.json
    return value


def write_tables(results: EvalResults, out_dir: Path) -> list[Path]:
    json_path, csv_path = out_dir / "results.json", out_dir / "results.csv"
    write_text_atomic(json_path, results_json(results))
    write_text_atomic(csv_path, results_csv(results))
    return [json_path, csv_path]
