"""Test against the servicedesk schema: a pytest plugin and factory-boy factories.

Installing ``otc-pipeline[testing]`` registers the pytest plugin
(:mod:`otc_pipeline.testing.plugin`) through the ``pytest11`` entry point; its
fixtures (``otc_engine``, ``otc_session``, ``otc_factories``, ``otc_load``…)
need no setup in your project. The factories live in
:mod:`otc_pipeline.testing.factories`.

This module stays import-light on purpose: pytest imports the plugin, and with
it this package, in every run of every project that has otc-pipeline
installed, so nothing here may pull in SQLAlchemy or factory-boy.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

__all__ = ["NoTestSession", "bind_session", "current_session"]


class NoTestSession(RuntimeError):
    """A factory was asked to create a row while no test session was bound."""


_session: Session | None = None


def current_session() -> Session:
    """The session the factories write to (the current test's ``otc_session``)."""
    if _session is None:
        raise NoTestSession(
            "no otc-pipeline test session is bound: request the otc_session or "
            "otc_factories fixture in this test, or wrap the code in "
            "otc_pipeline.testing.bind_session(session); Factory.build() needs no session"
        )
    return _session


@contextmanager
def bind_session(session: Session) -> Iterator[Session]:
    """Make the factories write to ``session`` until the block ends."""
    global _session
    previous = _session
    _session = session
    try:
        yield session
    finally:
        _session = previous
