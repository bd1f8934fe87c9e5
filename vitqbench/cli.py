"""The `vitqbench` command line: parse, call the library, print. No logic lives here."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from vitqbench.errors import VitqbenchError

app = typer.Typer(
    name="vitqbench",
    help="Deployment benchmark for quantized vision transformers on ONNX Runtime.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


def _not_available(command: str, issue: str) -> None:
    raise VitqbenchError(f"`vitqbench {command}` is not available yet ({issue})")


# ---------------------------------------------------------------------------------------------- export
@app.command()
def export(
    model: str = typer.Argument(..., help="timm model name (optionally .tag) or a vitqbench training checkpoint"),
    out: Path = typer.Option(..., "-o", "--out", help="Output ONNX file."),
) -> None:
    """Export a timm vision transformer to ONNX with `logits` and `features` outputs, verified."""
    _not_available("export", "being written")


# -------------------------------------------------------------------------------------------- quantize
@app.command()
def quantize() -> None:
    """Quantize an exported model to 8-bit static QDQ or 4-bit block-wise weights."""
    _not_available("quantize", "issue 3")


# ----------------------------------------------------------------------------------------------- bench
@app.command()
def bench() -> None:
    """Measure latency, throughput and memory of ONNX models side by side."""
    _not_available("bench", "issue 8")


# ------------------------------------------------------------------------------------------------ eval
@app.command("eval")
def eval_() -> None:
    """Evaluate ID accuracy and OOD detection of models x datasets, with quantization deltas."""
    _not_available("eval", "issue 6")


# ----------------------------------------------------------------------------------------------- sweep
@app.command()
def sweep() -> None:
    """Run a declarative study (models x precisions x datasets) from a TOML file or preset."""
    _not_available("sweep", "issue 6")


# ----------------------------------------------------------------------------------------------- train
@app.command()
def train() -> None:
    """Train a small timm vision transformer on CPU and save a self-describing checkpoint."""
    _not_available("train", "issue 7")


# ------------------------------------------------------------------------------------------------ demo
@app.command()
def demo() -> None:
    """The whole study offline on real small data: train, export, quantize, eval, bench, report."""
    _not_available("demo", "issue 7")


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user errors become one line on stderr and exit code 2."""
    try:
        app(args=argv, prog_name="vitqbench")
    except VitqbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
