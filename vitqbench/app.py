"""The application layer of the CLI and the demo: run a study, write its report, print a short
summary, fail at the end. The library below (evaluate, report) knows nothing of consoles or exit codes."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from vitqbench.errors import VitqbenchError
from vitqbench.evaluate.run import EvalConfig, run_eval
from vitqbench.evaluate.sensitivity import SensitivityConfig, check_sensitivity, run_sensitivity
from vitqbench.evaluate.sweep import SweepConfig, SweepOptions, run_sweep
from vitqbench.files import check_output_dir, output_folder, write_text_atomic
from vitqbench.report import write_report
from vitqbench.results import MEAN, METRICS, OOD_GROUPS, EvalResults, SensitivityResults, mean_title


def parse_ood_args(items: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """``["near:ssb=list.txt", "noise=noise:gaussian"]`` to ``({name: spec}, {name: group})``.

    ``GROUP:NAME=DATA`` puts a set in OpenOOD's near or far group (or synthetic); names are unique.
    """
    specs: dict[str, str] = {}
    groups: dict[str, str] = {}
    for item in items:
        name, sep, spec = item.partition("=")
        name, spec = name.strip(), spec.strip()
        group, colon, rest = name.partition(":")
        if colon:
            if group not in OOD_GROUPS:
                raise VitqbenchError(
                    f"--ood {item!r}: {group!r} is no OOD group; write [near:|far:|synthetic:]NAME=DATA"
                )
            name = rest.strip()
            groups[name] = group
        if not sep or not name or not spec or ":" in name:
            raise VitqbenchError(f"--ood expects [near:|far:|synthetic:]NAME=DATA, got {item!r}")
        if name in specs:
            raise VitqbenchError(f"OOD set name {name!r} is given twice")
        if name == MEAN:
            raise VitqbenchError(f"OOD set name {MEAN!r} is reserved for the average over OOD sets")
        specs[name] = spec
    return specs, groups


def parse_id_arg(text: str) -> tuple[str | None, str]:
    """``--id imagenet=~/val`` names the ID set; a bare DATA (``digits:test:n=30``) is its own name.

    The text before ``=`` is a name only when it could not be part of a DATA spec (no ``:`` or ``/``)
    and the whole text is not an existing path.
    """
    name, sep, spec = text.partition("=")
    name, spec = name.strip(), spec.strip()
    if not sep or ":" in name or "/" in name or Path(text).expanduser().exists():
        return None, text
    if not name or not spec:
        raise VitqbenchError(f"--id expects DATA or NAME=DATA, got {text!r}")
    return name, spec


def finish_run(
    config: EvalConfig,
    out_dir: Path,
    save_outputs: bool = False,
    console: Console | None = None,
    plot_scores: str | None = None,
) -> EvalResults:
    """Run the eval, write every report file, print a summary; raise if any cell failed."""
    check_output_dir(out_dir)
    chosen = plot_score_labels(plot_scores, config.scores, config.fit is not None)  # before any model runs
    config.keep_outputs = config.keep_outputs or save_outputs
    with output_folder(out_dir):
        results = run_eval(config)
        write_report(results, out_dir, save_outputs=save_outputs, plot_scores=chosen)
    console = console or Console(emoji=False)
    print_summary(results, console)
    console.print(f"report: {out_dir / 'report.md'}  (results.json, results.csv, plots/)")
    raise_failures(results, out_dir)
    return results


def finish_sensitivity(config: SensitivityConfig, plan_out: Path | None, console: Console) -> SensitivityResults:
    """Check every setting, run the sensitivity study, write its files (and the plan), print where they are."""
    from vitqbench.report.sensitivity import write_sensitivity

    check_sensitivity(config)  # bad input: one line, nothing created
    if not config.model.is_file():
        raise VitqbenchError(f"model {config.model} does not exist")
    check_output_dir(config.out)
    with output_folder(config.out):
        results = run_sensitivity(config)
        write_sensitivity(results, config.out)
        if results.plan is not None:
            plan_path = plan_out or config.out / "plan.json"
            write_text_atomic(plan_path, json.dumps(results.plan["plan"], indent=2) + "\n")
    console.print(f"sensitivity: {len(results.rows)} unit models in {results.wall_s:.0f} s")
    if results.plan is not None:
        verdict = "meets" if results.plan["met"] else "does NOT meet"
        console.print(f"plan {results.plan['label']} {verdict} the budget: {plan_out or config.out / 'plan.json'}")
    console.print(f"report: {config.out / 'sensitivity.md'}  (sensitivity.json, sensitivity.csv, plots/)")
    return results


def plot_score_labels(plot_scores: str | None, scores: str | list[str] | None, with_fit: bool) -> list[str] | None:
    """``--plot-scores`` checked against the scores the run will compute."""
    from vitqbench.evaluate.scoring import default_score_specs, parse_score_specs
    from vitqbench.report.plots import select_plot_scores

    specs = parse_score_specs(scores) if scores else default_score_specs(with_fit)
    return select_plot_scores(plot_scores, [s.label for s in specs])


def finish_sweep(
    config: SweepConfig,
    options: SweepOptions,
    save_outputs: bool = False,
    console: Console | None = None,
    plot_scores: str | None = None,
) -> EvalResults:
    """Run the sweep, write the combined report, print a summary; raise if any cell failed."""
    chosen = plot_score_labels(plot_scores, config.scores, config.fit is not None)
    with output_folder(options.out):
        results = run_sweep(config, options, keep_outputs=save_outputs)
        write_report(results, options.out, save_outputs=save_outputs, plot_scores=chosen)
    if console is not None:
        print_summary(results, console)
        console.print(f"report: {options.out / 'report.md'}  (models in {options.out / 'models'})")
    raise_failures(results, options.out)
    return results


def raise_failures(results: EvalResults, out_dir: Path) -> None:
    if results.failures:
        errors = Console(stderr=True, emoji=False, soft_wrap=True)
        for failure in results.failures:
            errors.print(f"failed: {failure.describe()}", markup=False, highlight=False)
        raise VitqbenchError(
            f"{len(results.failures)} cell(s) failed (listed above and in {out_dir / 'report.md'}); "
            "the other results were written"
        )


def print_summary(results: EvalResults, console: Console) -> None:
    """ID accuracy and, for the first score, AUROC and FPR@95 of each headline mean (near, far)."""
    score = results.score_names[0] if results.score_names else None
    means = results.headline_means if score else []
    fpr = results.headline_fpr
    about = f" (score {score}; FPR = {METRICS[fpr].title}; means: {', '.join(map(mean_title, means))}; in %)"
    table = Table(title="vitqbench eval" + (about if score else ""))
    columns = ["model", "precision", "execution", "top-1 %", "Δ top-1"]
    # Short headers ("near AUROC %") keep the table readable in 80 columns; the title says the rest.
    columns += [f"{m.partition(':')[2] or 'all'} {title}" for m in means for title in ("AUROC", "FPR")]
    for column in columns:
        left = column in ("model", "precision", "execution")
        width = max([len(m.label) for m in results.models] + [5]) if column == "model" else None
        table.add_column(column, justify="left" if left else "right", min_width=width)
    for m in results.models:
        id_row = results.id_metric(m.label)
        d = results.delta(m.label, id_row.dataset, None, "top1") if id_row else None
        top1 = _pct(id_row.top1 if id_row else None)
        cells = [m.label, m.precision, m.execution or "float", top1, f"{100 * d.abs:+.2f}" if d else ""]
        for mean in means:
            ood = results.ood_metric(m.label, mean, score)
            cells += [_pct(ood.auroc if ood else None), _pct(getattr(ood, fpr) if ood else None)]
        table.add_row(*cells)
    console.print(table)
    errors = Console(stderr=True, emoji=False, soft_wrap=True)
    for warning in results.warnings:
        errors.print(f"warning: {warning}", markup=False, highlight=False)
    random = [m.label for m in results.models if (m.metadata.get("source") or {}).get("kind") == "random"]
    if random:
        console.print(
            f"[yellow]random-init weights ({', '.join(random)}): their accuracy and OOD numbers say nothing "
            "about trained models; use them for speed and size only[/]"
        )
    c = results.cache
    console.print(f"cache: {c['hits']} cell(s) reused, {c['computed']} computed, {c['samples_computed']} samples run")


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}"
