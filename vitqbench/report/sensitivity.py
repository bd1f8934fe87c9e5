"""The sensitivity report: sensitivity.json, sensitivity.csv, sensitivity.md and a heatmap per precision."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from vitqbench.files import write_text_atomic
from vitqbench.report.document import Block, Bullets, Code, Heading, Image, Para, Table, to_markdown
from vitqbench.results import LOGIT_ERROR, SensitivityResults, UnitSensitivity

TITLES = {
    "top1": "Δ top-1",
    LOGIT_ERROR: "logit error %",
    "auroc": "Δ AUROC",
    "aupr_out": "Δ AUPR-out",
    "fpr95": "Δ FPR@95",
}


def write_sensitivity(results: SensitivityResults, out_dir: Path) -> list[Path]:
    """Every sensitivity file under ``out_dir``; returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = [heatmap(results, p, out_dir / "plots" / f"sensitivity_{p}.png") for p in results.precisions]
    plots = [p for p in plots if p is not None]
    json_path, csv_path, md_path = (out_dir / f"sensitivity.{ext}" for ext in ("json", "csv", "md"))
    write_text_atomic(json_path, json.dumps(results.to_dict(), indent=2, default=_json) + "\n")
    write_text_atomic(csv_path, to_csv(results))
    write_text_atomic(md_path, to_markdown(sensitivity_blocks(results, plots, out_dir)))
    return [json_path, csv_path, md_path, *plots]


def _json(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def columns(results: SensitivityResults) -> list[str]:
    """The delta keys in a fixed order: ID first, then each score's metrics (fp32-fit after refit)."""
    keys = {k for r in [*results.rows, *results.uniform] for k in r.deltas}
    ordered = [k for k in ("top1", LOGIT_ERROR) if k in keys]
    for score in results.scores:
        for metric in ("auroc", "aupr_out", "fpr95"):
            ordered += [k for k in (f"{score}.{metric}", f"{score}.{metric}@fp32-fit") if k in keys]
    return ordered


def to_csv(results: SensitivityResults) -> str:
    keys = columns(results)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["unit", "precision", "weight_bytes", *keys])
    for row in [*results.rows, *results.uniform]:
        writer.writerow([row.unit, row.precision, row.weight_bytes, *(_num(row.deltas.get(k)) for k in keys)])
    return buffer.getvalue()


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def _title(key: str) -> str:
    score, _, metric = key.partition("@")[0].rpartition(".")
    title = TITLES.get(metric, metric)
    fit = " (fp32 fit)" if key.endswith("@fp32-fit") else ""
    return f"{score} {title}{fit}" if score else title


def _headline_keys(results: SensitivityResults) -> list[str]:
    """The table's columns: top-1, logit error, each score's AUROC and AUPR-out (refitted), and the
    feature scores' AUPR-out fitted once on fp32."""
    keys = columns(results)
    wanted = ("top1", LOGIT_ERROR)
    return [k for k in keys if k in wanted or k.endswith((".aupr_out", ".auroc", ".aupr_out@fp32-fit"))]


def sensitivity_blocks(results: SensitivityResults, plots: list[Path], out_dir: Path) -> list[Block]:
    blocks: list[Block] = [
        Heading(f"Sensitivity of {results.model}", 1),
        Para(
            [
                f"One {results.granularity} at a time quantized (everything else fp32) with the ViT-aware QDQ recipe "
                f"at each precision; deltas in points against fp32 (logit error: relative L2 of the ID logits, %). "
                "OOD metrics are the mean over the real OOD sets; feature scores are refitted on each model "
                "(columns marked fp32 fit: fitted once on the fp32 model; every metric of both in sensitivity.csv). "
                "The execution column says how ONNX Runtime ran each model: integer kernels or emulated "
                "(QDQ rounding, float arithmetic).",
            ]
        ),
    ]
    keys = _headline_keys(results)
    for precision in results.precisions:
        rows = [r for r in results.rows if r.precision == precision]
        uniform = [r for r in results.uniform if r.precision == precision]
        blocks.append(Heading(f"{precision}: per {results.granularity}", 2))
        blocks.append(
            Table(
                ["unit", "execution", "weights KiB", *(_title(k) for k in keys)],
                [_row(r, keys) for r in [*rows, *uniform]],
                numeric=set(range(2, len(keys) + 3)),
            )
        )
        image = next((p for p in plots if p.name == f"sensitivity_{precision}.png"), None)
        if image is not None:
            blocks.append(Image(image, str(image.relative_to(out_dir)), f"{precision}: units x metrics"))
    blocks += _ranking_blocks(results)
    blocks += _plan_blocks(results)
    return blocks


def _row(row: UnitSensitivity, keys: list[str]) -> list[str]:
    unit = f"{row.unit} (whole model)" if row.unit == "all" else row.unit
    return [unit, row.execution or "float", f"{row.weight_bytes / 1024:.1f}", *(_fmt(row.deltas.get(k)) for k in keys)]


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:+.2f}"


def _ranking_blocks(results: SensitivityResults) -> list[Block]:
    if not results.ranking:
        return []
    blocks: list[Block] = [
        Heading("ID vs OOD: do they rank the units alike?", 2),
        Para(
            [
                "Spearman's rho between the units' ID damage (logit error: one unit's top-1 delta is a few "
                "images) and OOD damage (fall in AUPR-out); 1: the same order. Rank 1 is the most harmful "
                "unit; the last column lists the units whose ID and OOD ranks differ most."
            ]
        ),
    ]
    rows = []
    for r in results.ranking:
        moved = ", ".join(f"{m['unit']} ({m['id_rank']}→{m['ood_rank']})" for m in r["rank_changes"][:3]) or "none"
        rho = "–" if r["spearman"] is None else f"{r['spearman']:+.2f}"
        rows.append(
            [r["precision"], r["score"], rho, ", ".join(r["most_id_harmful"]), ", ".join(r["most_ood_harmful"]), moved]
        )
    blocks.append(Table(["precision", "score", "rho", "worst for ID", "worst for AUPR-out", "rank ID→OOD"], rows, {2}))
    return blocks


def _plan_blocks(results: SensitivityResults) -> list[Block]:
    if not results.plan:
        return []
    plan = results.plan
    rounds = plan["rounds"]
    final = rounds[-1]
    uniform = {r.precision: r for r in results.uniform}
    counts: dict[str, int] = {}
    for precision in final["assignment"].values():
        counts[precision] = counts.get(precision, 0) + 1
    verdict = "meets" if plan["met"] else "does NOT meet"
    blocks: list[Block] = [
        Heading(f"Mixed-precision plan {plan['label']}", 2),
        Para(
            [
                "Budget ",
                Code(str(plan["plan"]["summary"]["budget"])),
                f": the verified mixed model {verdict} it after {len(rounds)} round(s). Units: "
                + ", ".join(f"{n} x {p}" for p, n in sorted(counts.items()))
                + f". Weights {final['weight_bytes'] / 1024:.1f} KiB, file {final['file_bytes'] / 2**20:.2f} MiB.",
            ]
        ),
    ]
    rows = []
    for key in final["verified"]:
        cells = [_title(key), _fmt(final["estimated"][key]), _fmt(final["verified"][key]), _fmt(final["gap"][key])]
        cells += [_fmt(uniform[p].deltas.get(key)) if p in uniform else "–" for p in results.precisions]
        rows.append(cells)
    for key in ("top1", LOGIT_ERROR):  # not constrained: the measured value, for reference
        if key not in final["verified"] and key in final.get("measured", {}):
            cells = [_title(key), "", _fmt(final["measured"][key]), ""]
            cells += [_fmt(uniform[p].deltas.get(key)) if p in uniform else "–" for p in results.precisions]
            rows.append(cells)
    header = ["metric (constrained first)", "sum of unit deltas", "mixed model (measured)", "interaction gap"]
    header += [f"uniform {p}" for p in results.precisions]
    blocks.append(Table(header, rows, set(range(1, len(header)))))
    sizes = [f"uniform {r.precision}: {r.weight_bytes / 1024:.1f} KiB" for r in results.uniform]
    blocks.append(Bullets([[f"weights: plan {final['weight_bytes'] / 1024:.1f} KiB; " + "; ".join(sizes)]]))
    return blocks


def heatmap(results: SensitivityResults, precision: str, path: Path) -> Path | None:
    """Units (rows) x metrics (columns) of one precision, colour = harm (red) or gain (blue)."""
    from vitqbench.report.plots import _plt, _save

    rows = [r for r in results.rows if r.precision == precision]
    keys = [k for k in columns(results) if "@" not in k]
    if not rows or not keys:
        return None
    # Sign so that red is always harm: metrics that are better lower (logit error, FPR) flip.
    flip = np.array([-1.0 if k == LOGIT_ERROR or k.endswith(".fpr95") else 1.0 for k in keys])
    values = np.array([[r.deltas.get(k, np.nan) for k in keys] for r in rows], dtype=float)
    signed = values * flip
    limit = float(np.nanmax(np.abs(signed))) if np.isfinite(signed).any() else 1.0
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * len(keys), 0.8 + 0.32 * len(rows)))
    image = ax.imshow(signed, cmap="RdBu", vmin=-limit or -1, vmax=limit or 1, aspect="auto")
    ax.set_xticks(range(len(keys)), [_title(k) for k in keys], rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), [r.unit for r in rows], fontsize=8)
    for i in range(len(rows)):
        for j in range(len(keys)):
            if np.isfinite(values[i, j]):
                ax.text(j, i, f"{values[i, j]:.1f}", ha="center", va="center", fontsize=6)
    executions = ", ".join(sorted({r.execution or "float" for r in rows}))  # how ORT ran these models
    ax.set_title(f"{results.model}: {precision} ({executions}), one {results.granularity} at a time", fontsize=9)
    fig.colorbar(image, ax=ax, label="harm (red) / gain (blue), points")
    path.parent.mkdir(parents=True, exist_ok=True)
    return _save(fig, path)
