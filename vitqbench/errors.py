"""The one exception type the CLI turns into a single line on stderr."""


# One install hint everywhere (README, the missing-ORT error, the unavailable-provider error).
INSTALL_CPU = "pip install -e '.[cpu]'"
INSTALL_GPU = "pip install -e '.[gpu]'"
SWAP_TO_GPU = "pip uninstall -y onnxruntime && pip install 'onnxruntime-gpu>=1.20'"


class VitqbenchError(Exception):
    """A problem with the user's input or environment, explained in one line."""


def check_seed(seed: object, what: str = "--seed") -> int:
    """A seed every consumer accepts (numpy's default_rng, torch.manual_seed, noise workers)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise VitqbenchError(f"{what} must be a whole number in 0..{2**32 - 1}, got {seed!r}")
    return seed


def first_line(exc: BaseException | str) -> str:
    """The first line of an error message (libraries raise multi-line ones), or the exception's type name."""
    text = str(exc).strip()
    if text:
        return text.splitlines()[0]
    return "unknown error" if isinstance(exc, str) else type(exc).__name__


class DiskFull(VitqbenchError):
    """No space left where vitqbench writes: it stops the run (every later write would fail too)."""


class Interrupted(BaseException):
    """Ctrl-C, as the CLI raises it instead of KeyboardInterrupt (which typer turns into a silent exit).

    A BaseException, so that no ``except Exception`` in the library mistakes it for a failed cell. A
    study that is interrupted sets ``cells_kept`` (on this or on a KeyboardInterrupt) before re-raising."""

    cells_kept: int | None = None


def interrupted_message(exc: BaseException) -> str:
    kept = getattr(exc, "cells_kept", None)
    return "interrupted" if kept is None else f"interrupted; {kept} cell(s) kept, re-run to resume"

