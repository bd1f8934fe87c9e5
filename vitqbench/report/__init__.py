"""Reports of an eval run: results.json, results.csv, report.md, plots/ and per-sample outputs."""

from __future__ import annotations

from pathlib import Path

from vitqbench.errors import VitqbenchError
from vitqbench.files import write_text_atomic
from vitqbench.report.markdown import render_html, render_report
from vitqbench.report.outputs import write_outputs
from vitqbench.report.plots import write_plots
from vitqbench.report.tables import csv_rows, results_csv, results_json, write_tables
from vitqbench.results import EvalResults


def write_report(
    results: EvalResults, out_dir: str | Path, save_outputs: bool = False, plot_scores: list[str] | None = None
) -> list[Path]:
    """Write every report file under ``out_dir`` (each atomically); returns the paths written.

    ``plot_scores``: the scores that get ROC curves and histograms (default: every score of the run).
    """
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise VitqbenchError(f"cannot create output directory {out_dir}: {exc.strerror}") from exc
    written = write_tables(results, out_dir)
    plots = write_plots(results, out_dir / "plots", plot_scores)
    _remove_stale(out_dir / "plots", "*.png", plots)
    report, page = out_dir / "report.md", out_dir / "report.html"
    write_text_atomic(report, render_report(results, plots))
    write_text_atomic(page, render_html(results, plots))
    written += [report, page, *plots]
    if save_outputs:
        arrays = write_outputs(results, out_dir)
        _remove_stale(out_dir / "outputs", "*.npz", arrays)
        written += arrays
    return written


def _remove_stale(folder: Path, pattern: str, kept: list[Path]) -> None:
    """An earlier run's files in our folders would pass for this run's results."""
    keep = {p.resolve() for p in kept}
    for path in folder.glob(pattern) if folder.is_dir() else []:
        if path.resolve() not in keep:
            path.unlink(missing_ok=True)


__all__ = [
    "csv_rows",
    "render_html",
    "render_report",
    "results_csv",
    "results_json",
    "write_outputs",
    "write_plots",
    "write_report",
]
