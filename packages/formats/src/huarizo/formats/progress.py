"""Progress of long work, shown with rich on stderr (stdout stays clean for pipes): one bar per job, with a count, an
optional line of figures (`info`) and the time spent. A bar that is not enabled shows nothing and costs nothing."""

from __future__ import annotations

from types import TracebackType
from typing import Any


class ProgressBar:
    """A rich progress bar; a context manager (closed on exit).

    `total` is the work to do (items, or bytes with `unit="bytes"`), `completed` what was done before (a resumed
    run); `advance()` counts work done, `update()` sets the count and the info line.
    """

    def __init__(
        self,
        description: str,
        total: float | None,
        *,
        enabled: bool = True,
        completed: float = 0,
        unit: str = "",
        info: str = "",
    ) -> None:
        self._bar: Any = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        count = DownloadColumn() if unit == "bytes" else MofNCompleteColumn()
        columns = [TextColumn(f"[bold]{description}[/]"), BarColumn(), count]
        columns += [TextColumn(unit)] if unit and unit != "bytes" else []
        columns += [TextColumn("{task.fields[info]}"), TimeElapsedColumn()]
        self._bar = Progress(*columns, console=Console(stderr=True))
        self._task = self._bar.add_task(description, total=total, completed=completed, info=info)
        self._bar.start()

    def advance(self, n: float = 1) -> None:
        """Count `n` more units of work done."""
        if self._bar is not None:
            self._bar.advance(self._task, n)

    def update(self, *, completed: float | None = None, info: str | None = None) -> None:
        """Set the work done and / or the info line."""
        if self._bar is not None:
            fields = {} if info is None else {"info": info}
            self._bar.update(self._task, completed=completed, **fields)

    def close(self) -> None:
        """Stop showing the bar (its last state stays on the terminal)."""
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
