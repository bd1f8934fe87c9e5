"""Progress, one way everywhere: on stderr, so stdout stays the command's result.

On a terminal it is a rich bar. In a log or a pipe a live bar is useless (rich would print its final
state at the end, cut to 80 columns), so each task prints a plain line instead: when it starts to be
slow, then at least every ``log_interval`` seconds, and when it finishes (step, count, rate, ETA).
"""

from __future__ import annotations

from collections.abc import Callable

from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, ProgressColumn, Task, TaskID, TextColumn
from rich.text import Text

LOG_INTERVAL = 10.0  # seconds between plain progress lines in a log


def progress_bar(
    *columns: str | ProgressColumn,
    enabled: bool = True,
    transient: bool = True,
    log_interval: float = LOG_INTERVAL,
    get_time: Callable[[], float] | None = None,
) -> Progress:
    """A bar on stderr, or plain lines every ``log_interval`` s where stderr is not a terminal
    (``log_interval=0``: a line at every update, e.g. one per training epoch). ``transient`` only
    matters on a terminal: the bar disappears when done instead of staying on screen."""
    console = Console(stderr=True, emoji=False)
    columns = tuple(_LiteralText.of(c) if type(c) is TextColumn else c for c in columns)
    if enabled and not console.is_terminal:
        return LogProgress(*columns, console=console, log_interval=log_interval, get_time=get_time)
    return Progress(*columns, console=console, transient=transient, disable=not enabled, get_time=get_time)


class _LiteralText(TextColumn):
    """A TextColumn whose markup is the template's only: the task's description is shown as written
    (rich would turn ``digits:train:0-5`` into an emoji and read ``[0-5]`` as markup)."""

    @classmethod
    def of(cls, column: TextColumn) -> _LiteralText:
        return cls(column.text_format, style=column.style, justify=column.justify, markup=column.markup)

    def render(self, task: Task) -> Text:
        description = escape(task.description) if self.markup else task.description
        template = self.text_format.replace("{task.description}", description.replace("{", "{{").replace("}", "}}"))
        text = template.format(task=task)
        if self.markup:
            return Text.from_markup(text, style=self.style, justify=self.justify, emoji=False)
        return Text(text, style=self.style, justify=self.justify)


class LogProgress(Progress):
    """A Progress without a live display: it prints plain lines as it advances."""

    def __init__(
        self,
        *columns: str | ProgressColumn,
        console: Console,
        log_interval: float,
        get_time: Callable[[], float] | None = None,
    ):
        super().__init__(*columns, console=console, disable=True, get_time=get_time)
        self.log_interval = log_interval
        self._printed: dict[TaskID, float] = {}  # task -> time of its last line
        self._finished: set[TaskID] = set()

    def add_task(self, *args, **kwargs) -> TaskID:
        task_id = super().add_task(*args, **kwargs)
        self._printed[task_id] = self.get_time()
        return task_id

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._maybe_print(task_id)

    def update(self, task_id: TaskID, *args, **kwargs) -> None:
        super().update(task_id, *args, **kwargs)
        if kwargs.get("advance") or kwargs.get("completed") is not None:  # not for a visibility change
            self._maybe_print(task_id)

    def _maybe_print(self, task_id: TaskID) -> None:
        task = self._tasks[task_id]
        now = self.get_time()
        if task_id in self._finished:
            return
        if task.finished:
            self._finished.add(task_id)
        elif now - self._printed[task_id] < self.log_interval:
            return
        self._printed[task_id] = now
        self.console.print(self.line(task), markup=False, highlight=False, soft_wrap=True)

    def line(self, task: Task) -> str:
        """``step: done/total (pct), rate/s, elapsed, eta[, description]`` in plain text."""
        text_column = next((c for c in self.columns if isinstance(c, TextColumn)), None)
        step = text_column.render(task).plain.strip() if text_column else task.description
        elapsed = task.elapsed or 0.0
        rate = task.completed / elapsed if elapsed > 0 else None
        count = f"{task.completed:g}" + (f"/{task.total:g}" if task.total else "")
        parts = [f"{step or 'progress'}: {count}"]
        if task.total:
            parts[0] += f" ({100 * task.completed / task.total:.0f} %)"
        if rate:
            parts.append(f"{rate:.3g}/s")
        parts.append(f"{_duration(elapsed)} elapsed")
        if task.finished:
            parts.append("done")
        elif rate and task.total:
            parts.append(f"eta {_duration((task.total - task.completed) / rate)}")
        if task.description and task.description not in step:  # e.g. training's loss, in a later column
            parts.append(task.description)
        return ", ".join(parts)


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, sec = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {sec:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"
