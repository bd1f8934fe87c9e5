"""The `vitqbench` command line: parse, call the library, print. No logic lives here."""

from __future__ import annotations

import ast
import signal
import sys
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from vitqbench.errors import INSTALL_CPU, INSTALL_GPU, Interrupted, VitqbenchError, interrupted_message
from vitqbench.export import DEFAULT_OPSET, DEFAULT_TOLERANCE

app = typer.Typer(
    name="vitqbench",
    help="Deployment benchmark for quantized vision transformers on ONNX Runtime.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


# Options eval and sweep share.
FPR_CONVENTION_OPTION = typer.Option(
    "openood",
    "--fpr-convention",
    help="FPR@95 the tables lead with: openood (OOD positive, OpenOOD v1.5's leaderboard) or id-positive.",
)
PLOT_SCORES_OPTION = typer.Option(
    None, "--plot-scores", help="Scores that get ROC curves and histograms, e.g. msp,vim (default: all; none)."
)

console = Console(soft_wrap=True, emoji=False)
err_console = Console(stderr=True, soft_wrap=True, emoji=False)


# ---------------------------------------------------------------------------------------------- export
def parse_model_kwargs(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` pairs; values are Python literals (never evaluated), else plain strings."""
    kwargs: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip().isidentifier():
            raise VitqbenchError(f"--set expects key=value, got {pair!r}")
        try:
            kwargs[key.strip()] = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            kwargs[key.strip()] = text.strip()
    return kwargs


PROVIDER_HELP = "Execution provider: cpu, cuda or tensorrt (any case)."
PROVIDER_OPTION_HELP = "ONNX Runtime provider option KEY=VALUE (repeatable; part of the cache key)."
EXECUTOR_HELP = "Where cells run: inprocess, or ray (pip install 'vitqbench[ray]'; the cache must be shared)."
RAY_ADDRESS_HELP = "Ray cluster to join (ray://HOST:PORT or HOST:PORT); default: start a local one."


def target_from(provider: str, provider_options: list[str] | None) -> Any:
    """The one ExecutionTarget of a command, from --provider and --provider-option."""
    from vitqbench.runtime import execution_target, parse_provider_options

    return execution_target(provider, parse_provider_options(provider_options or [])).check_available()


def parse_floats(text: str | None, option: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise VitqbenchError(f"{option} expects comma-separated numbers, got {text!r}") from None


@app.command()
def export(
    model: str = typer.Argument(
        ...,
        help="timm model name, optionally with a pretrained tag (deit_small_patch16_224.fb_in1k), "
        "or a checkpoint written by `vitqbench train`.",
    ),
    out: Path = typer.Option(..., "-o", "--out", help="Output ONNX file."),
    checkpoint: Path | None = typer.Option(
        None, "--checkpoint", help="Local state dict (.pth/.pt/.safetensors) instead of downloading."
    ),
    pretrained: bool = typer.Option(True, "--pretrained/--no-pretrained", help="Download timm weights."),
    set_: list[str] = typer.Option([], "--set", help="Model kwarg for timm.create_model, key=value."),
    seed: int = typer.Option(0, help="Seed for random init and the verification batch."),
    opset: int = typer.Option(DEFAULT_OPSET, help="ONNX opset (>= 18)."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Compare ONNX Runtime with PyTorch."),
    tolerance: float = typer.Option(DEFAULT_TOLERANCE, help="Max abs difference allowed by verification."),
    mean: str | None = typer.Option(None, help="Override normalization mean: one value or one per channel."),
    std: str | None = typer.Option(None, help="Override normalization std: one value or one per channel."),
    interpolation: str | None = typer.Option(None, help="Override resize interpolation (bicubic, bilinear)."),
    crop_pct: float | None = typer.Option(None, help="Override center-crop fraction (timm's crop_pct, 0.1-2)."),
    attention: bool = typer.Option(
        False, "--attention", help="Also output each block's class-token attention, per-head attention entropy and the "
        "class token's attention rollout."
    ),
) -> None:
    """Export a timm vision transformer to ONNX with `logits` and `features` outputs, verified."""
    from vitqbench.export import export_model

    result = export_model(
        model,
        out,
        pretrained=pretrained,
        checkpoint=checkpoint,
        model_kwargs=parse_model_kwargs(set_),
        seed=seed,
        verify=verify,
        opset=opset,
        tolerance=tolerance,
        mean=parse_floats(mean, "--mean"),
        std=parse_floats(std, "--std"),
        interpolation=interpolation,
        crop_pct=crop_pct,
        attention=attention,
    )
    meta, check = result.metadata, result.verification
    console.print(
        f"[bold]{meta.display_name}[/] -> {out}  ({meta.num_classes} classes, {meta.feature_dim}-d features, "
        f"input {'x'.join(map(str, meta.data_config.input_size))}, weights: {meta.source['kind']})"
    )
    if check is not None:
        console.print(
            f"verified vs PyTorch (batch {', '.join(map(str, check.batch_sizes))}): max |delta logits| "
            f"{check.max_abs_logits:.2e}, max |delta features| {check.max_abs_features:.2e}, "
            f"top-1 agreement {check.top1_agreement:.3f}"
        )


# -------------------------------------------------------------------------------------------- quantize
# Flag -> the scheme option(s) it sets (the first one the chosen scheme has).
SCHEME_FLAGS: dict[str, tuple[str, ...]] = {
    "--calib-method": ("calib_method", "act_range"),
    "--percentile": ("percentile",),
    "--per-channel/--per-tensor": ("per_channel",),
    "--activation-type": ("activation_type",),
    "--symmetric-activations": ("symmetric_activations",),
    "--exclude": ("exclude",),
    "--quantize-ops": ("quantize_ops",),
    "--algo": ("algo", "weight_algo"),
    "--block-size": ("block_size",),
    "--asym/--sym": ("symmetric",),
    "--format": ("format",),
    "--accuracy-level": ("accuracy_level",),
    "--keep-head": ("keep_head",),
    "--patch-embed-int8": ("patch_embed_int8",),
    "--reparam/--no-reparam": ("reparam",),
    "--alpha": ("alpha",),
    "--softmax": ("softmax",),
    "--gelu-asym/--gelu-sym": ("gelu_asym",),
    "--first-last-8bit/--no-first-last-8bit": ("first_last_8bit",),
}


def scheme_from_flags(scheme: str | None, bits: int | None, flags: dict[str, Any], opts: list[str]) -> Any:
    """One scheme config from --scheme (or its --bits alias) and the flags actually given."""
    from vitqbench.quant import BITS_ALIASES, create_scheme, scheme_names, scheme_options

    if bits is not None:
        if bits not in BITS_ALIASES:
            raise VitqbenchError(
                f"--bits must be 8 or 4 (got {bits}); other precisions: --scheme {'|'.join(scheme_names())}"
            )
        if scheme is not None and scheme != BITS_ALIASES[bits]:
            raise VitqbenchError(
                f"--bits {bits} is --scheme {BITS_ALIASES[bits]}; give one of them, not --scheme {scheme}"
            )
        scheme = BITS_ALIASES[bits]
    if scheme is None:
        raise VitqbenchError(f"give --scheme NAME ({'|'.join(scheme_names())}) or --bits 8|4")
    known = scheme_options(scheme)  # also: unknown scheme -> one line naming the valid ones
    options = parse_model_kwargs(opts)
    foreign = []
    for flag, value in flags.items():
        if value is None:
            continue
        field = next((f for f in SCHEME_FLAGS[flag] if f in known), None)
        if field is None:
            foreign.append(flag)
        else:
            options[field] = value
    if foreign:
        raise VitqbenchError(
            f"{', '.join(foreign)} {'does' if len(foreign) == 1 else 'do'} not apply to --scheme {scheme}"
            f" (its options: {', '.join(known) or 'none'})"
        )
    return create_scheme(scheme, **options)


@app.command()
def quantize(
    model: Path = typer.Argument(..., help="A vitqbench ONNX file (from `vitqbench export`)."),
    out: Path = typer.Option(..., "-o", "--out", help="Output ONNX file."),
    scheme: str = typer.Option(
        None, "--scheme", help="w8a8, w8a8-dynamic, w4, w4a8, w4a4, w6a6 or fp16 (see the README's table)."
    ),
    bits: int = typer.Option(None, "--bits", help="Alias: 8 = --scheme w8a8, 4 = --scheme w4."),
    calib: str = typer.Option(
        None, "--calib", help="Calibration DATA: image folder, image-list file or built-in set (static schemes, gptq)."
    ),
    calib_size: int = typer.Option(256, "--calib-size", help="Calibration images (a seeded random subset)."),
    data_root: Path | None = typer.Option(None, "--data-root", help="Where a calibration image list's paths start."),
    strict: bool = typer.Option(False, "--strict", help="An unreadable calibration image fails (default: skip)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the calibration subset (and of n=/noise in --calib)."),
    quantize_ops: str = typer.Option(
        None, "--quantize-ops", help="matmul (linear layers, attention matmuls, patch embedding; default) or all."
    ),
    calib_method: str = typer.Option(
        None,
        "--calib-method",
        help="Activation ranges. w8a8: minmax|entropy|percentile; w4a4/w4a8/w6a6: minmax|percentile|mse.",
    ),
    percentile: float = typer.Option(None, "--percentile", help="Percentile of --calib-method percentile."),
    per_channel: bool = typer.Option(
        None, "--per-channel/--per-tensor", help="w8a8: weight scales (default per-channel)."
    ),
    activation_type: str = typer.Option(None, "--activation-type", help="w8a8: uint8|int8 activations."),
    provider: str = typer.Option("cpu", "--provider", help="Where calibration runs the float model. " + PROVIDER_HELP),
    provider_option: list[str] = typer.Option([], "--provider-option", help=PROVIDER_OPTION_HELP),
    symmetric_activations: bool = typer.Option(
        None, "--symmetric-activations", help="w8a8: symmetric activation ranges."
    ),
    exclude: list[str] = typer.Option(
        None,
        "--exclude",
        help="w8a8: keep in float (repeatable): head, patch_embed, attention, post_gelu, an op type "
        "(Softmax) or a node-name glob. Default: nothing.",
    ),
    algo: str = typer.Option(None, "--algo", help="Weights: rtn|mse|gptq (w4 default: gptq with --calib, else rtn)."),
    block_size: int = typer.Option(
        None, "--block-size", help="w4: block size along K: 16, 32, 64, 128 or 256 (default: 128)."
    ),
    asym: bool = typer.Option(None, "--asym/--sym", help="w4: asymmetric blocks (zero points)."),
    fmt: str = typer.Option(None, "--format", help="w4: matmulnbits|qdq (default: matmulnbits)."),
    accuracy_level: int = typer.Option(
        None, "--accuracy-level", help="w4: MatMulNBits level 0-4 (default: 4, int8 activations)."
    ),
    keep_head: bool = typer.Option(None, "--keep-head", help="w4: leave the classifier head in float."),
    patch_embed_int8: bool = typer.Option(None, "--patch-embed-int8", help="w4: 8-bit patch embed."),
    reparam: bool = typer.Option(
        None, "--reparam/--no-reparam", help="w4a4/w4a8/w6a6: post-LayerNorm channel reparameterization."
    ),
    alpha: float = typer.Option(None, "--alpha", help="Reparameterization migration strength in [0, 1]."),
    softmax: str = typer.Option(None, "--softmax", help="Attention probabilities: uint8|act|log2."),
    gelu_asym: bool = typer.Option(None, "--gelu-asym/--gelu-sym", help="Post-GELU ranges asymmetric or symmetric."),
    first_last_8bit: bool = typer.Option(
        None, "--first-last-8bit/--no-first-last-8bit", help="Patch embedding and head at 8 bits."
    ),
    opt: list[str] = typer.Option([], "--opt", help="Any scheme option as key=value (repeatable)."),
    plan: Path | None = typer.Option(
        None, "--plan", help="A mixed-precision plan (from `vitqbench sensitivity --budget`): each unit's precision."
    ),
) -> None:
    """Quantize an exported model with a registered scheme (w8a8, w8a8-dynamic, w4, w4a8, w4a4, w6a6, fp16)
    or a mixed-precision plan."""
    from vitqbench.quant import CalibConfig, quantize_model

    flags = {
        "--calib-method": calib_method,
        "--percentile": percentile,
        "--per-channel/--per-tensor": per_channel,
        "--activation-type": activation_type,
        "--symmetric-activations": symmetric_activations,
        "--exclude": tuple(exclude) if exclude else None,
        "--quantize-ops": quantize_ops,
        "--algo": algo,
        "--block-size": block_size,
        "--asym/--sym": None if asym is None else not asym,
        "--format": fmt,
        "--accuracy-level": accuracy_level,
        "--keep-head": keep_head,
        "--patch-embed-int8": patch_embed_int8,
        "--reparam/--no-reparam": reparam,
        "--alpha": alpha,
        "--softmax": softmax,
        "--gelu-asym/--gelu-sym": gelu_asym,
        "--first-last-8bit/--no-first-last-8bit": first_last_8bit,
    }
    if plan is not None:
        from vitqbench.quant.mixed import MixedPlan

        given = [f for f, v in flags.items() if v is not None] + (["--scheme"] if scheme else [])
        given += (["--bits"] if bits else []) + (["--opt"] if opt else [])
        if given:
            raise VitqbenchError(f"--plan fixes the scheme and its recipe; drop {', '.join(given)}")
        config = MixedPlan.load(plan).scheme()
    else:
        config = scheme_from_flags(scheme, bits, flags, opt)
    calib_config = (
        CalibConfig(
            data=calib,
            size=calib_size,
            seed=seed,
            data_root=data_root,
            strict=strict,
            target=target_from(provider, provider_option),
        )
        if calib
        else None
    )
    start = time.perf_counter()
    meta = quantize_model(model, out, config, calib=calib_config)
    record = meta.quantization or {}
    console.print(
        f"wrote {out}: {meta.display_name} {meta.precision} ({record.get('algorithm')}, "
        f"execution: {record.get('execution')}, {time.perf_counter() - start:.1f} s)"
    )
    skipped = (record.get("calibration") or {}).get("skipped") or []
    if skipped:
        err_console.print(
            f"warning: {len(skipped)} unreadable calibration image(s) skipped (first: {skipped[0]}); "
            f"calibrated on {record['calibration']['size']}; --strict makes this an error",
            markup=False,
            highlight=False,
        )


@app.command()
def optimize(
    model: Path = typer.Argument(..., help="A vitqbench ONNX file (fp32 or quantized)."),
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the optimized graph."),
    level: str = typer.Option(
        "extended", "--level", help="ORT graph optimizations: basic|extended|all (all may be tied to this CPU)."
    ),
    provider: str = typer.Option("cpu", "--provider", help="The provider the graph is optimized for. " + PROVIDER_HELP),
    provider_option: list[str] = typer.Option([], "--provider-option", help=PROVIDER_OPTION_HELP),
) -> None:
    """Save ONNX Runtime's optimized graph (the deployment artifact: no optimization at session start)."""
    from vitqbench.quant.optimize import optimize_model

    start = time.perf_counter()
    meta = optimize_model(model, out, level, target_from(provider, provider_option))
    console.print(
        f"wrote {out}: {meta.display_name} {meta.precision}, ORT level {level} "
        f"({out.stat().st_size / 2**20:.2f} MiB, {time.perf_counter() - start:.1f} s)"
    )


# ----------------------------------------------------------------------------------------------- bench
@app.command()
def bench(
    models: list[Path] = typer.Argument(..., help="ONNX files; ratios compare each with the first."),
    provider: str = typer.Option("cpu", help=PROVIDER_HELP),
    provider_option: list[str] = typer.Option([], "--provider-option", help=PROVIDER_OPTION_HELP),
    threads: int | None = typer.Option(None, help="Intra-op threads (default: physical cores)."),
    batch: str = typer.Option("1", "--batch", help="Batch sizes, comma-separated, e.g. 1,8,32."),
    warmup: int = typer.Option(5, help="Warm-up runs per model and batch (not timed)."),
    iters: int | None = typer.Option(None, help="Timed runs per model and batch (default: 50)."),
    seconds: float | None = typer.Option(None, help="Timed seconds per model and batch (not with --iters)."),
    rounds: int = typer.Option(10, help="Interleaved rounds (A B C A B C ...) the runs are split into."),
    torch_baseline: bool = typer.Option(False, "--torch", help="Add a PyTorch eager row (random init)."),
    io_binding: bool | None = typer.Option(
        None, "--io-binding/--no-io-binding", help="Device-resident inputs/outputs (default: on for GPUs)."
    ),
    seed: int = typer.Option(0, help="Seed of the random input tensor."),
    json_out: Path | None = typer.Option(None, "--json", help="Write records + machine as JSON."),
    csv_out: Path | None = typer.Option(None, "--csv", help="Write records as CSV (machine as # lines)."),
) -> None:
    """Measure latency, throughput and memory of ONNX models side by side, each in its own process."""
    from vitqbench.bench.results import rich_table
    from vitqbench.bench.runner import BenchSettings, parse_batches, run_benchmark
    from vitqbench.files import check_output_file

    for path in (json_out, csv_out):
        if path is not None:
            check_output_file(path)  # before minutes of measuring, not after
    settings = BenchSettings(
        target=target_from(provider, provider_option),
        threads=threads,
        batches=parse_batches(batch),
        warmup=warmup,
        iters=iters,
        seconds=seconds,
        rounds=rounds,
        torch_baseline=torch_baseline,
        io_binding=io_binding,
        seed=seed,
    )
    result = run_benchmark(models, settings)
    table = rich_table(result)
    # Numbers must not be cut to fit an 80-column pipe; a wide table wraps in the terminal instead.
    wide = console.measure(table, options=console.options.update_width(1000)).maximum
    Console(width=max(console.width, wide), emoji=False).print(table)
    emulated = sorted({r.model for r in result.records if r.note})
    if emulated:
        console.print(
            f"note: {', '.join(emulated)}: emulated quantization (float arithmetic), not a deployment latency"
        )
    if json_out:
        result.write_json(json_out)
    if csv_out:
        result.write_csv(csv_out)
    failed = sorted({r.model for r in result.records if not r.ok})
    if failed:  # the others were measured and written; the exit code tells scripts that not all were
        console.print(f"[red]failed:[/red] {', '.join(failed)}")
        raise typer.Exit(1)


# ------------------------------------------------------------------------------------------------ eval
@app.command("eval")
def eval_(
    model: list[Path] = typer.Option(..., "--model", "-m", help="A vitqbench ONNX file (repeatable)."),
    id_: str = typer.Option(..., "--id", help="ID set as [NAME=]DATA: folder, image list or built-in (digits:test)."),
    ood: list[str] = typer.Option(
        [],
        "--ood",
        help="OOD set as [near:|far:]NAME=DATA (repeatable); OpenOOD's near/far groups are averaged apart.",
    ),
    fit: str | None = typer.Option(None, "--fit", help="DATA the feature scores are fitted on (ID train)."),
    scores: str | None = typer.Option(
        None, "--scores", help="Comma-separated scores, NAME[:KEY=VALUE]... (default: every score that can run)."
    ),
    baseline: str | None = typer.Option(
        None, "--baseline", help="Reference model for deltas (default: the first model)."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder for results and report."),
    provider: str = typer.Option("cpu", "--provider", help=PROVIDER_HELP),
    provider_option: list[str] = typer.Option([], "--provider-option", help=PROVIDER_OPTION_HELP),
    threads: int | None = typer.Option(None, "--threads", help="Intra-op threads (default: physical cores)."),
    batch_size: int = typer.Option(64, "--batch-size", help="Images per inference batch."),
    data_root: Path | None = typer.Option(None, "--data-root", help="Where image-list paths start."),
    cache_dir: Path | None = typer.Option(
        None, "--cache-dir", help="Cache folder (default: $VITQBENCH_CACHE or ~/.cache/vitqbench)."
    ),
    save_outputs: bool = typer.Option(False, "--save-outputs", help="Write per-sample arrays, OUT/outputs/."),
    bench_: bool = typer.Option(False, "--bench", help="Also measure latency and size of every model."),
    seed: int = typer.Option(0, "--seed", help="Seed of n= subsets and noise that name no seed= (recorded)."),
    strict: bool = typer.Option(False, "--strict", help="An unreadable image fails its dataset (default: skip)."),
    tune: bool = typer.Option(
        False, "--tune", help="Search each tunable score's OpenOOD grid by AUROC on --val-id vs --val-ood."
    ),
    val_id: str | None = typer.Option(None, "--val-id", help="ID validation DATA for --tune (OpenOOD's ID-val)."),
    val_ood: str | None = typer.Option(None, "--val-ood", help="OOD validation DATA for --tune (OOD-val)."),
    attention: bool = typer.Option(
        False, "--attention", help="Attention focus and drift per block, ID vs OOD (models from export --attention)."
    ),
    fpr_convention: str = FPR_CONVENTION_OPTION,
    plot_scores: str | None = PLOT_SCORES_OPTION,
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
    decode_cache: bool = typer.Option(
        True, "--decode-cache/--no-decode-cache", help="Keep decoded images in the cache (off: one-off runs)."
    ),
    executor: str = typer.Option("inprocess", "--executor", help=EXECUTOR_HELP),
    ray_address: str | None = typer.Option(None, "--ray-address", help=RAY_ADDRESS_HELP),
) -> None:
    """Evaluate ID accuracy and OOD detection of models x datasets, with quantization deltas."""
    from vitqbench.app import finish_run, parse_id_arg, parse_ood_args
    from vitqbench.evaluate import EvalConfig

    ood_specs, ood_groups = parse_ood_args(ood)
    id_name, id_spec = parse_id_arg(id_)
    config = EvalConfig(
        models=list(model),
        id=id_spec,
        id_name=id_name,
        ood=ood_specs,
        ood_groups=ood_groups,
        fit=fit,
        scores=scores,
        baseline=baseline,
        target=target_from(provider, provider_option),
        threads=threads,
        batch_size=batch_size,
        cache_dir=cache_dir,
        data_root=data_root,
        bench=bench_,
        seed=seed,
        strict=strict,
        progress=progress,
        fpr_convention=fpr_convention,
        decode_cache=decode_cache,
        tune=tune,
        attention=attention,
        val_id=val_id,
        val_ood=val_ood,
        executor=executor,
        ray_address=ray_address,
    )
    finish_run(config, out, save_outputs=save_outputs, console=console, plot_scores=plot_scores)


# ----------------------------------------------------------------------------------------- sensitivity
@app.command()
def sensitivity(
    model: Path = typer.Argument(..., help="An fp32 vitqbench ONNX file (from `vitqbench export`)."),
    scheme: list[str] = typer.Option(
        ["w4a4"], "--scheme", help="Unit precision(s) to measure (repeatable): w8a8, w6a6, w4a8, w4, w4a4."
    ),
    calib: str = typer.Option(..., "--calib", help="Calibration DATA (one calibration per precision)."),
    calib_size: int = typer.Option(256, "--calib-size", help="Calibration images (a seeded random subset)."),
    id_: str = typer.Option(..., "--id", help="ID set as [NAME=]DATA."),
    ood: list[str] = typer.Option(..., "--ood", help="OOD set as [near:|far:]NAME=DATA (repeatable)."),
    fit: str | None = typer.Option(None, "--fit", help="DATA the feature scores are fitted on (ID train)."),
    scores: str | None = typer.Option(None, "--scores", help="Comma-separated scores (default: all that can run)."),
    granularity: str = typer.Option("block", "--granularity", help="layer (each linear / attention matmul) or block."),
    budget: str | None = typer.Option(
        None, "--budget", help="Plan a mixed model within deltas in points, e.g. 'aupr_out>=-1.0,top1>=-0.5'."
    ),
    candidates: str | None = typer.Option(
        None, "--candidates", help="Precisions a plan may use besides fp32 (default: every --scheme)."
    ),
    plan_out: Path | None = typer.Option(None, "--plan-out", help="Where the plan goes (default: OUT/plan.json)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: sensitivity.{json,csv,md}, plots/, models/."),
    threads: int | None = typer.Option(None, "--threads", help="Intra-op threads (default: physical cores)."),
    batch_size: int = typer.Option(64, "--batch-size", help="Images per inference batch."),
    data_root: Path | None = typer.Option(None, "--data-root", help="Where image-list paths start."),
    cache_dir: Path | None = typer.Option(None, "--cache-dir", help="Cache folder (default: ~/.cache/vitqbench)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the calibration subset and of n= subsets."),
    fpr_convention: str = FPR_CONVENTION_OPTION,
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
    executor: str = typer.Option("inprocess", "--executor", help=EXECUTOR_HELP),
    ray_address: str | None = typer.Option(None, "--ray-address", help=RAY_ADDRESS_HELP),
) -> None:
    """Which layers' (or blocks') quantization hurts accuracy and OOD detection; with --budget, a mixed plan."""
    from vitqbench.app import finish_sensitivity, parse_id_arg, parse_ood_args
    from vitqbench.evaluate import EvalConfig
    from vitqbench.evaluate.sensitivity import SensitivityConfig
    from vitqbench.quant import CalibConfig

    ood_specs, ood_groups = parse_ood_args(ood)
    id_name, id_spec = parse_id_arg(id_)
    evaluation = EvalConfig(
        models=[model],
        id=id_spec,
        id_name=id_name,
        ood=ood_specs,
        ood_groups=ood_groups,
        fit=fit,
        scores=scores,
        threads=threads,
        batch_size=batch_size,
        cache_dir=cache_dir,
        data_root=data_root,
        seed=seed,
        fpr_convention=fpr_convention,
        executor=executor,
        ray_address=ray_address,
    )
    config = SensitivityConfig(
        model=model,
        calib=CalibConfig(data=calib, size=calib_size, seed=seed, data_root=data_root),
        eval=evaluation,
        out=out,
        precisions=[s.strip() for item in scheme for s in item.split(",") if s.strip()],
        granularity=granularity,
        budget=budget,
        candidates=[c.strip() for c in candidates.split(",") if c.strip()] if candidates else None,
        progress=progress,
    )
    finish_sensitivity(config, plan_out, console)


# ----------------------------------------------------------------------------------------------- sweep
@app.command()
def sweep(
    config: Path | None = typer.Argument(None, help="Sweep TOML file (or use --preset)."),
    preset: str | None = typer.Option(None, "--preset", help="A shipped study: paper, tiny."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output folder: models/, report, results."),
    data_root: Path | None = typer.Option(None, "--data-root", help="Where relative data paths start."),
    cache_dir: Path | None = typer.Option(
        None, "--cache-dir", help="Cache folder (default: $VITQBENCH_CACHE or ~/.cache/vitqbench)."
    ),
    provider: str = typer.Option("cpu", "--provider", help=PROVIDER_HELP),
    provider_option: list[str] = typer.Option([], "--provider-option", help=PROVIDER_OPTION_HELP),
    threads: int | None = typer.Option(None, "--threads", help="Intra-op threads (default: physical cores)."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Override the study's batch size."),
    pretrained: bool = typer.Option(
        True, "--pretrained/--no-pretrained", help="--no-pretrained: random init (offline stand-ins)."
    ),
    bench_: bool | None = typer.Option(None, "--bench/--no-bench", help="Override the study's bench."),
    save_outputs: bool = typer.Option(False, "--save-outputs", help="Write per-sample arrays, OUT/outputs/."),
    show: bool = typer.Option(False, "--show", help="Print the study's TOML (e.g. a preset) and exit."),
    tune: bool | None = typer.Option(
        None, "--tune/--no-tune", help="Override the study's tune (needs val_id and val_ood in [data])."
    ),
    fpr_convention: str = FPR_CONVENTION_OPTION,
    plot_scores: str | None = PLOT_SCORES_OPTION,
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
    decode_cache: bool = typer.Option(
        True, "--decode-cache/--no-decode-cache", help="Keep decoded images in the cache (off: one-off runs)."
    ),
    executor: str = typer.Option("inprocess", "--executor", help=EXECUTOR_HELP),
    ray_address: str | None = typer.Option(None, "--ray-address", help=RAY_ADDRESS_HELP),
) -> None:
    """Run a declarative study (models x precisions x datasets) from a TOML file or preset."""
    from vitqbench.app import finish_sweep
    from vitqbench.evaluate.sweep import SweepOptions, load_sweep_config, sweep_text
    from vitqbench.ood import headline_fpr

    if show:
        typer.echo(sweep_text(config, preset)[0])
        return
    if out is None:
        raise VitqbenchError("give --out DIR")
    headline_fpr(fpr_convention)  # a typo fails before any export
    study = load_sweep_config(config, preset)
    options = SweepOptions(
        out=out,
        data_root=data_root,
        cache_dir=cache_dir,
        target=target_from(provider, provider_option),
        threads=threads,
        batch_size=batch_size,
        pretrained=pretrained,
        bench=bench_,
        progress=progress,
        fpr_convention=fpr_convention,
        decode_cache=decode_cache,
        tune=tune,
        executor=executor,
        ray_address=ray_address,
    )
    finish_sweep(study, options, save_outputs=save_outputs, console=console, plot_scores=plot_scores)


# ----------------------------------------------------------------------------------------------- train
@app.command()
def train(
    data: str = typer.Option(..., "--data", help="Labelled DATA spec, e.g. digits:train or an image folder."),
    out: Path = typer.Option(..., "-o", "--out", help="Checkpoint to write (.safetensors)."),
    model: str = typer.Option("vit_tiny_patch16_224", "--model", help="timm architecture."),
    set_: list[str] = typer.Option(
        [], "--set", help="Model kwarg, key=value (default for vit_tiny: 28x28 input, 4x4 patches, dim 128, depth 6)."
    ),
    epochs: int | None = typer.Option(None, help="Training epochs (default: 60)."),
    batch_size: int = typer.Option(64, help="Batch size."),
    lr: float = typer.Option(2e-3, help="Peak learning rate (one-cycle schedule, AdamW)."),
    seed: int = typer.Option(0, help="Seed for init, split, shuffling and augmentation."),
    threads: int | None = typer.Option(None, help="torch CPU threads (default: torch's)."),
    augment: str = typer.Option(
        "shift", "--augment", help="none, shift (random +-2 px), randaugment (timm's) or mixup (timm's Mixup/CutMix)."
    ),
) -> None:
    """Train a small timm vision transformer on CPU and save a self-describing checkpoint."""
    from vitqbench.train import TrainConfig, train_model

    if out.suffix != ".safetensors":
        raise VitqbenchError(f"the checkpoint is written as safetensors: name it *.safetensors, not {out.name}")
    config = TrainConfig(
        data=data,
        model=model,
        model_kwargs=parse_model_kwargs(set_),
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        threads=threads,
        augment=augment,
    )
    if epochs is not None:
        config.epochs = epochs
    result = train_model(config, out)
    console.print(
        f"{out}: {result.num_train} training images, {result.seconds:.0f} s, final loss {result.losses[-1]:.3f}, "
        f"held-out accuracy {result.val_accuracy:.3f} on {result.num_val} images"
    )
    console.print(f"next: vitqbench export {out} -o model.onnx")


# ------------------------------------------------------------------------------------------------ demo
@app.command()
def demo(
    out: Path = typer.Option(Path("vitqbench-demo"), "--out", "-o", help="Output folder."),
    dataset: str = typer.Option("digits", "--dataset", help="digits or fashion-mnist."),
    epochs: int | None = typer.Option(None, help="Training epochs (default: 60; the checkpoint is cached)."),
    seed: int = typer.Option(0, help="Seed for training, calibration subsets and noise."),
    cache_dir: Path | None = typer.Option(
        None, "--cache-dir", help="Cache folder (default: $VITQBENCH_CACHE or ~/.cache/vitqbench)."
    ),
) -> None:
    """The whole study offline on real small data: train, export, quantize, eval, bench, report."""
    from vitqbench.demo import DemoConfig, run_demo

    run_demo(DemoConfig(out=out, dataset=dataset, epochs=epochs, seed=seed, cache_dir=cache_dir), console)


# ----------------------------------------------------------------------------------------------- cache
cache_app = typer.Typer(help="See or clear the cache: decoded images, model outputs, fitted scores, demo checkpoints.")
app.add_typer(cache_app, name="cache")
CACHE_DIR_OPTION = typer.Option(
    None, "--cache-dir", help="Cache folder (default: $VITQBENCH_CACHE or ~/.cache/vitqbench)."
)


@cache_app.command("info")
def cache_info_(cache_dir: Path | None = CACHE_DIR_OPTION) -> None:
    """What the cache holds, per part, and where."""
    from vitqbench.evaluate.cache import cache_info, resolve_cache_dir

    root = resolve_cache_dir(cache_dir)
    parts = cache_info(root)
    for part in parts:
        since = f", oldest {time.strftime('%Y-%m-%d', time.localtime(part.oldest))}" if part.oldest else ""
        console.print(
            f"{part.name:8s} {part.bytes / 2**20:10.1f} MiB  {part.files:6d} files{since}  ({part.description})",
            markup=False,
            highlight=False,
        )
    total = sum(p.bytes for p in parts)
    console.print(f"{root}: {total / 2**20:.1f} MiB in all", markup=False, highlight=False)


@cache_app.command("clear")
def cache_clear_(
    cache_dir: Path | None = CACHE_DIR_OPTION,
    older_than: float | None = typer.Option(
        None, "--older-than", help="Only entries not written or used for this many days (default: everything)."
    ),
) -> None:
    """Remove cache entries: all of them, or those unused for --older-than DAYS."""
    from vitqbench.evaluate.cache import clear_cache, resolve_cache_dir

    root = resolve_cache_dir(cache_dir)
    files, size = clear_cache(root, older_than)
    console.print(f"removed {files} file(s), {size / 2**20:.1f} MiB, from {root}", markup=False, highlight=False)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user errors become one line on stderr and exit code 2; Ctrl-C one line and 130."""

    def on_sigint(signum: int, frame: Any) -> None:
        raise Interrupted()

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        app(args=argv, prog_name="vitqbench")
    except VitqbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except ModuleNotFoundError as exc:
        if exc.name != "onnxruntime":
            raise
        print(f"error: ONNX Runtime is not installed: {INSTALL_CPU}, or {INSTALL_GPU} for CUDA", file=sys.stderr)
        raise SystemExit(2) from None
    except (Interrupted, KeyboardInterrupt) as exc:
        print(interrupted_message(exc), file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        signal.signal(signal.SIGINT, previous)


if __name__ == "__main__":
    main()
