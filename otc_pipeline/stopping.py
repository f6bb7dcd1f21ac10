"""Stopping a load on a signal: Ctrl-C (SIGINT), SIGTERM and SIGHUP all stop it the same way.

While a load runs, each of the three raises :class:`Stopped` in the loading
process, so the view rolls back and its run is closed ``failed`` with the
reason. From the moment a view's commit begins, a signal is only noted: the
commit and the report of what it did finish first, and the command then stops
before its next view (see :class:`Guard`). Only the first signal counts; later
ones are ignored while the first is being handled (kill -9 still ends the
process, and the next load of the view cleans up after it).

:func:`pause_point` is a test hook and nothing else (see its docstring).
"""

from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass, field
from types import FrameType, TracebackType
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def reason(signum: int) -> str:
    """What a run stopped by ``signum`` records as its error."""
    if signum == signal.SIGINT:
        return "interrupted by the user"
    return f"stopped by {signal.Signals(signum).name}"


class Stopped(KeyboardInterrupt):
    """The command was stopped by a signal; ``summaries`` say what each view it ran did."""

    def __init__(
        self, signum: int, summaries: list[Any] | None = None, not_loaded: list[str] | None = None
    ) -> None:
        super().__init__(reason(signum))
        self.signum = signum
        self.summaries: list[Any] = summaries or []
        self.not_loaded: list[str] = not_loaded or []

    @property
    def exit_code(self) -> int:
        """128 + the signal's number: 130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP."""
        return 128 + self.signum


@dataclass
class _State:
    signum: int | None = None  # the first stop signal received while handlers are installed
    holding: int = 0  # > 0: a commit is under way; note a signal, do not raise it
    previous: dict[int, Any] = field(default_factory=dict)  # handlers to put back


_state = _State()


def _on_signal(signum: int, frame: FrameType | None) -> None:
    if _state.signum is not None:
        return  # the first signal is being handled: let its rollback and record finish
    _state.signum = signum
    if not _state.holding:
        raise Stopped(signum)


def received() -> int | None:
    """The stop signal received so far (None if none), while a Guard is active."""
    return _state.signum


def check() -> None:
    """Raise Stopped now if a stop signal arrived while it could not be raised."""
    if _state.signum is not None:
        raise Stopped(_state.signum)


class Guard:
    """A stretch of a load that a stop signal may interrupt until :meth:`hold` is called.

    The outermost Guard of the main thread installs the handlers and puts the old
    ones back at its end. After ``hold()`` a signal is noted, not raised, until
    this Guard ends: what comes after a commit (telling the user what was
    committed, releasing the view lock) must not be cut short.
    """

    def __init__(self) -> None:
        self._held = False
        self._installed = False

    def __enter__(self) -> Guard:
        if not _state.previous and threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                _state.previous[signum] = signal.signal(signum, _on_signal)
            _state.signum = None
            self._installed = True
        return self

    def hold(self) -> None:
        if not self._held:
            _state.holding += 1
            self._held = True

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._held:
            _state.holding -= 1
            self._held = False
        if self._installed:
            for signum, handler in _state.previous.items():
                signal.signal(signum, handler)
            _state.previous.clear()
            _state.signum = None
            self._installed = False


class held(Guard):  # noqa: N801 - used like a function: `with stopping.held():`
    """A Guard that holds from its start: for a short record write a signal must not cut."""

    def __enter__(self) -> Guard:
        super().__enter__()
        self.hold()
        return self


def pause_point(name: str, view: str) -> None:
    """Test hook: wait here when OTC_TEST_PAUSE_AT names this point; nothing otherwise.

    The signal tests set OTC_TEST_PAUSE_AT=<point> (or <point>:<view>) and
    OTC_TEST_PAUSE_DIR=<folder> holding two FIFOs: the process writes the point's
    name and its pid into ``reached``, then waits until the test opens ``go`` —
    so a test sends its signal at an exact moment of a load without sleeping.
    Points: staged, merge, users-refresh, before-commit, commit, after-commit,
    and reading (in a reading process).
    """
    wanted = os.environ.get("OTC_TEST_PAUSE_AT")
    if wanted is None or wanted not in (name, f"{name}:{view}"):
        return
    folder = os.environ["OTC_TEST_PAUSE_DIR"]
    with open(os.path.join(folder, "reached"), "w") as reached:
        reached.write(f"{name} {os.getpid()}\n")
    with open(os.path.join(folder, "go")) as go:
        go.read()
