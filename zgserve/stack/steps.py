"""Progress of long steps: one line each, a spinner while it runs, then ✓ (or ✗) and its time.

On a terminal the lines are live (several steps may run at once); otherwise each line is
printed once, when its step ends, so logs of CI runs stay readable::

    with Steps(console) as steps:
        async with steps.step("Starting the model server") as step:
            ...
            step.detail("SmolLM2-135M at http://127.0.0.1:8001")
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Self

from rich.console import Console, RenderableType
from rich.progress import Progress, ProgressColumn, Task, TaskID, TextColumn
from rich.spinner import Spinner
from rich.text import Text


class _StateColumn(ProgressColumn):
    """A spinner while the step runs, ✓ when it succeeded, ✗ when it failed, – when it was stopped."""

    def __init__(self) -> None:
        super().__init__()
        self._spinner = Spinner("dots", style="cyan")

    def render(self, task: Task) -> RenderableType:
        state = task.fields.get("state", "running")
        if state == "done":
            return Text("✓", style="green")
        if state == "failed":
            return Text("✗", style="bold red")
        if state == "stopped":
            return Text("–", style="dim")
        return self._spinner.render(task.get_time())


class _SecondsColumn(ProgressColumn):
    def render(self, task: Task) -> RenderableType:
        seconds = task.fields.get("seconds")
        if seconds is None:
            seconds = task.elapsed or 0.0
        return Text(f"{seconds:6.2f} s", style="dim")


class Step:
    """A running step; :meth:`detail` adds a note shown after its title."""

    def __init__(self, steps: Steps, title: str, task: TaskID | None) -> None:
        self._steps = steps
        self.title = title
        self.note = ""
        self._task = task
        self.started = time.monotonic()

    def detail(self, note: str) -> None:
        self.note = note
        self._steps._update(self)

    @property
    def line(self) -> str:
        return self.title + (f" [dim]— {self.note}[/]" if self.note else "")

    @property
    def task(self) -> TaskID | None:
        return self._task


class Steps:
    """The progress display; use as a context manager around the steps."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._progress: Progress | None = None
        if console.is_terminal:
            self._progress = Progress(
                _StateColumn(),
                TextColumn("{task.description}"),
                _SecondsColumn(),
                console=console,
                transient=False,
                refresh_per_second=10,
            )

    def __enter__(self) -> Self:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop the live display (idempotent); later output prints below the steps."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    @contextlib.asynccontextmanager
    async def step(self, title: str) -> AsyncIterator[Step]:
        """Show ``title`` while the body runs; mark it done, or failed if the body raises."""
        task = None
        if self._progress is not None:
            task = self._progress.add_task(title, total=None, state="running")
        step = Step(self, title, task)
        try:
            yield step
        except asyncio.CancelledError:
            self._finish(step, "stopped")
            raise
        except BaseException:
            self._finish(step, "failed")
            raise
        self._finish(step, "done")

    def record(self, title: str, seconds: float) -> None:
        """A step that already finished (e.g. reported by a callback), shown as done."""
        if self._progress is not None:
            self._progress.add_task(title, total=1, completed=1, state="done", seconds=seconds)
        else:
            self.console.print(f"  [green]✓[/] {title} [dim]({seconds:.2f} s)[/]")

    def _update(self, step: Step) -> None:
        if self._progress is not None and step.task is not None:
            self._progress.update(step.task, description=step.line)

    def _finish(self, step: Step, state: str) -> None:
        seconds = time.monotonic() - step.started
        if self._progress is not None and step.task is not None:
            self._progress.update(
                step.task, description=step.line, state=state, seconds=seconds, total=1, completed=1
            )
        elif state == "done":
            self.console.print(f"  [green]✓[/] {step.line} [dim]({seconds:.2f} s)[/]")
        elif state == "stopped":
            self.console.print(f"  [dim]– {step.line} (stopped after {seconds:.2f} s)[/]")
        else:
            self.console.print(f"  [bold red]✗[/] {step.line} [dim]({seconds:.2f} s)[/]")
