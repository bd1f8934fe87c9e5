"""The one exception type the CLI turns into a single line on stderr."""


class VitqbenchError(Exception):
    """A problem with the user's input or environment, explained in one line."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (libraries raise multi-line ones), or its type name."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
