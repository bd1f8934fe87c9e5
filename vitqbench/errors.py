"""The one exception type the CLI turns into a single line on stderr."""


# One install hint everywhere (README, the missing-ORT error, the unavailable-provider error).
INSTALL_CPU = "pip install -e '.[cpu]'"
INSTALL_GPU = "pip install -e '.[gpu]'"
SWAP_TO_GPU = "pip uninstall -y onnxruntime && pip install 'onnxruntime-gpu>=1.20'"


class VitqbenchError(Exception):
    """A problem with the user's input or environment, explained in one line."""


def first_line(exc: BaseException | str) -> str:
    """The first line of an error message (libraries raise multi-line ones), or the exception's type name."""
    text = str(exc).strip()
    if text:
        return text.splitlines()[0]
    return "unknown error" if isinstance(exc, str) else type(exc).__name__
