"""The run's progress: one live table (stage, status, progress within it, elapsed, cost so far) on a terminal, one
line per event otherwise; at the end a table of each stage's outputs, time, tokens and cost."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text


@dataclass
class _Row:
    status: str = "waiting"
    started: float | None = None
    seconds: float | None = None
    done: int = 0
    total: Callable[[], int | None] | None = None
    poll: Callable[[], str] | None = None
    cost: float = 0.0
    detail: str = ""


def _fmt_seconds(s: float | None) -> str:
    if s is None:
        return ""
    return f"{s:.1f} s" if s < 60 else f"{int(s // 60)} min {s % 60:02.0f} s"


class Display:
    """Progress of a run: `start`, `tick`, `finish` per stage; `note` for events such as a server starting."""

    def __init__(self, names: list[str], console: Console | None = None, live: bool | None = None) -> None:
        self.console = console or Console(highlight=False)
        self.live = self.console.is_terminal if live is None else live
        self.rows = {n: _Row() for n in names}
        self.t0 = time.monotonic()
        self.note_text = ""
        self._lock = threading.Lock()
        self._live: Live | None = None

    def __enter__(self) -> Display:
        if self.live:
            self._live = Live(get_renderable=self._render, console=self.console, refresh_per_second=4, transient=True)
            self._live.start()
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def _print(self, text: str) -> None:
        if not self.live:
            self.console.print(text)

    def start(self, name: str, total: Callable[[], int | None] | None, poll: Callable[[], str] | None) -> None:
        """A stage starts (or is being checked)."""
        with self._lock:
            row = self.rows[name]
            row.status, row.started, row.total, row.poll, row.done = "running", time.monotonic(), total, poll, 0
        self._print(f"{name}: running")

    def tick(self, name: str, n: int = 1) -> None:
        """Progress within a stage."""
        with self._lock:
            self.rows[name].done += n

    def progress(self, name: str, done: int, total: int | None) -> None:
        """Progress within a stage, as reported by the stage itself."""
        with self._lock:
            row = self.rows[name]
            row.done = done
            if total is not None:
                row.total = lambda: total

    def note(self, text: str) -> None:
        """An event worth a line (a server starting)."""
        self.note_text = text
        self._print(text)

    def finish(self, name: str, status: str, seconds: float | None, cost: float | None, detail: str = "") -> None:
        """A stage is done, skipped (up to date), kept (not selected) or failed."""
        with self._lock:
            row = self.rows[name]
            row.status, row.seconds, row.cost, row.detail = status, seconds, cost or 0.0, detail
            row.poll = row.total = None
        self.note_text = ""
        self._print(f"{name}: {status}" + (f" in {_fmt_seconds(seconds)}" if seconds is not None else "") + detail)

    def _render(self) -> Any:
        table = Table(title="huarizo run", title_justify="left", expand=False)
        for col in ("stage", "status", "progress", "elapsed", "cost"):
            table.add_column(col, justify="right" if col in ("elapsed", "cost") else "left")
        spent = 0.0
        with self._lock:
            rows = list(self.rows.items())
        for name, row in rows:
            spent += row.cost
            progress: Any = Text(row.detail.strip(" ,()"))
            elapsed = _fmt_seconds(row.seconds)
            if row.status == "running" and row.started is not None:
                elapsed = _fmt_seconds(time.monotonic() - row.started)
                progress = self._progress(row)
            style = {"running": "bold", "failed": "red", "done": "green"}.get(row.status, "dim")
            table.add_row(
                name, Text(row.status, style=style), progress, elapsed, f"${row.cost:.4f}" if row.cost else ""
            )
        footer = Text(f"elapsed {_fmt_seconds(time.monotonic() - self.t0)}, cost so far ${spent:.4f}", style="dim")
        parts: list[Any] = [table, footer]
        if self.note_text:
            parts.append(Text(self.note_text, style="dim"))
        return Group(*parts)

    @staticmethod
    def _progress(row: _Row) -> Any:
        total = None
        info = ""
        try:
            total = row.total() if row.total is not None else None
            info = row.poll() if row.poll is not None else ""
        except Exception:  # a file being written; the next refresh reads it again
            pass
        if total:
            grid = Table.grid(padding=(0, 1))
            grid.add_row(
                ProgressBar(total=total, completed=min(row.done, total), width=24), f"{row.done}/{total}", info
            )
            return grid
        return Text(info or "…")


def summary_table(summary: dict[str, Any]) -> Table:
    """The end-of-run table: each stage's status, outputs, time, tokens and cost."""
    table = Table(title=f"huarizo run: {summary['run_dir']}", title_justify="left")
    for col in ("stage", "status", "outputs", "time", "tokens", "cost"):
        table.add_column(col, justify="right" if col in ("time", "tokens", "cost") else "left")
    for name, s in summary["stages"].items():
        outputs = ", ".join(f"{k}: {v}" for k, v in list(s.get("outputs", {}).items())[:3])
        cost = s.get("cost")
        table.add_row(
            name,
            s.get("status", ""),
            outputs,
            _fmt_seconds(s.get("seconds")),
            f"{s.get('tokens', 0):,}" if s.get("tokens") else "",
            "unknown" if cost is None else f"${cost:.4f}" if cost else "",
        )
    return table
