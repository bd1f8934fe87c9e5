"""Rich progress bars, one way everywhere: on stderr, so stdout stays the command's result."""

from __future__ import annotations

from rich.console import Console
from rich.progress import Progress, ProgressColumn


def progress_bar(*columns: str | ProgressColumn, enabled: bool = True, transient: bool = True) -> Progress:
    """A bar on stderr. A transient bar is off when stderr is not a terminal: rich would leave a
    blank line in logs and pipes where the bar was; a kept bar prints its final state there."""
    console = Console(stderr=True, emoji=False)
    return Progress(
        *columns, console=console, transient=transient, disable=not enabled or (transient and not console.is_terminal)
    )
