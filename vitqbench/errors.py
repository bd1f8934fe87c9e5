"""The one exception type the CLI turns into a single line on stderr."""


class VitqbenchError(Exception):
    """A problem with the user's input or environment, explained in one line."""


def first_line(exc: BaseException | str) -> str:
    """The first line of an error message (libraries raise multi-line ones), or the exception's type name."""
    text = str(exc).strip()
    if text:
        return text.splitlines()[0]
    return "unknown error" if isinstance(exc, str) else type(exc).__name__
