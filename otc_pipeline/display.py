"""What `otc load` shows while it runs: Rich progress bars on a terminal, stage lines with -v.

pipeline.py reports through :class:`~otc_pipeline.pipeline.LoadProgress`; this module
only draws what it is told. Per view: a bar with percentage, rows/s and ETA when the
source's size is known (a file's bytes read), a count and rate when not; a view that ends
is replaced at once by a check mark and its result line; waits (the API's pause between
views, a held lock) are shown as waits with what is awaited.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from functools import cache
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .pipeline import LoadProgress, RunSummary

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, ProgressColumn

# Rich is imported only for a live display (a terminal): a load under cron or with
# --json does not pay for it (about 30 ms of imports on this project's machine).


def size_text(size: float) -> str:
    """Bytes as people read them: 912 B, 4.2 MB."""
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"  # pragma: no cover - the loop always returns


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds + 0.5))
    return f"{seconds // 60}:{seconds % 60:02d}"


@cache
def _figures_column() -> type[ProgressColumn]:
    """The column class (made on first use, so that only a live display imports Rich)."""
    from rich.progress import ProgressColumn, Task
    from rich.text import Text

    class Figures(ProgressColumn):
        """Percentage, rows, rows/s and ETA of a view; the time left of a wait."""

        def render(self, task: Task) -> Text:
            return Text(_figures_text(task))

    return Figures


def _figures_text(task: Any) -> str:
    """What the figures column shows for a Rich task."""
    until = task.fields.get("until")
    if task.fields.get("kind") == "wait":
        return "" if until is None else f"{_clock(until - time.monotonic())} left"
    rows = int(task.fields.get("rows", 0))
    elapsed = task.elapsed or 0.0
    parts = []
    if task.total:
        parts.append(f"{min(task.percentage, 100):3.0f}%")
    parts.append(f"{rows:,} rows")
    if elapsed > 0.2:
        parts.append(f"{rows / elapsed:,.0f} rows/s")
    remaining = task.time_remaining
    if task.total and remaining is not None:
        parts.append(f"ETA {_clock(remaining)}")
    return "  ".join(parts)


class LoadDisplay(LoadProgress):
    """Draws a load: live bars on stderr when ``live``, timed stage lines when ``verbose``.

    ``show_result`` prints a finished view's result (text or JSON); it is called the
    moment the view ends, so results appear view by view, not all at the end.
    """

    def __init__(
        self,
        *,
        live: bool,
        verbose: bool,
        show_result: Callable[[LoadDisplay, RunSummary], None],
    ) -> None:
        self.live = live
        self.verbose = verbose
        self._show_result = show_result
        self._began = time.monotonic()
        self._progress: Progress | None = None
        if live:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn

            self.console: Console = Console(stderr=True, highlight=False)
            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(bar_width=24),
                _figures_column()(),
                console=self.console,
                transient=True,
                redirect_stdout=False,
                redirect_stderr=False,
            )
        self._views: dict[str, Any] = {}
        self._waits: list[Any] = []

    def __enter__(self) -> LoadDisplay:
        if self._progress is not None:
            self._progress.start()
            # Something on the screen at once: connecting can take a while.
            self._waits.append(
                self._progress.add_task("connecting to the database", total=None, kind="wait")
            )
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    # --- what the pipeline and commands report -----------------------------------------

    def note(self, text: str) -> None:
        self._say(text)

    def view_started(self, view: str, source: str, size: int | None) -> None:
        self._end_waits()
        self._say(f"{view}: reading {source}" + (f" ({size_text(size)})" if size else ""))
        if self._progress is not None:
            self._views[view] = self._progress.add_task(view, total=size or None, rows=0)

    def rows_read(
        self, view: str, rows: int, bytes_read: int | None, size: int | None = None
    ) -> None:
        self._end_waits()
        done = f", {size_text(bytes_read)} read" if bytes_read is not None else ""
        of = f" of {size_text(size)}" if size and bytes_read is not None else ""
        self._say(f"{view}: {rows:,} rows read and staged{done}{of}")
        task = self._views.get(view)
        if self._progress is not None and task is not None:
            if size:  # an API body's Content-Length, known once the response came
                self._progress.update(task, total=size)
            if bytes_read is not None:
                self._progress.update(task, completed=bytes_read, rows=rows)
            else:
                self._progress.update(task, rows=rows)

    def stage(self, view: str, what: str) -> None:
        self._say(f"{view}: {what}")
        task = self._views.get(view)
        if self._progress is not None and task is not None:
            self._progress.update(task, description=f"{view}: {what}")

    def view_finished(self, summary: RunSummary) -> None:
        self._end_waits()
        task = self._views.pop(summary.view, None)
        if self._progress is not None and task is not None:
            self._progress.remove_task(task)
            self._progress.refresh()  # the result line must not bring the bar back
        self._say(f"{summary.view}: {summary.status} in {summary.duration_s:.2f} s")
        self._show_result(self, summary)

    def waiting(self, what: str, seconds: float | None) -> None:
        self._end_waits()
        self._say(f"waiting {seconds:g} s: {what}" if seconds is not None else f"waiting: {what}")
        if self._progress is not None:
            until = None if seconds is None else time.monotonic() + seconds
            self._waits.append(
                self._progress.add_task(f"waiting: {what}", total=None, kind="wait", until=until)
            )

    # --- printing ------------------------------------------------------------------------

    def result(self, text: str, *, mark: str | None = None, err: bool = False) -> None:
        """A result line: above the bars (with its mark) on a terminal, else plain."""
        if self._progress is not None:
            style = {"✓": "green", "✗": "red", "!": "yellow"}.get(mark or "", "")
            prefix = f"[{style}]{mark}[/{style}] " if mark else "  "
            self.console.print(prefix + _escape(text))
            # The live lines went to the terminal on stderr; stdout redirected to a file
            # still gets every result.
            if not err and not sys.stdout.isatty():
                print(text, file=sys.stdout, flush=True)
            return
        print(text, file=sys.stderr if err else sys.stdout, flush=True)

    def _say(self, text: str) -> None:
        if not self.verbose:
            return
        line = f"[{time.monotonic() - self._began:7.2f} s] {text}"
        if self._progress is not None:
            self.console.print(_escape(line), style="dim")
        else:
            print(line, file=sys.stderr, flush=True)

    def _end_waits(self) -> None:
        if self._progress is not None and self._waits:
            for task in self._waits:
                self._progress.remove_task(task)
            self._progress.refresh()
        self._waits.clear()


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)
