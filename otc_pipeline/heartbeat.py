"""A heartbeat for `otc load` in the healthchecks.io convention.

``OTC_HEARTBEAT_URL`` is pinged at ``/start`` when the command starts and at
``/<exit code>`` when it ends (``/0``, ``/1``, ``/75``, …), so the monitor
notices a failed run, a hung run, and a cron job that never ran at all. A
heartbeat that cannot be delivered (down, or slower than ``OTC_NOTIFY_TIMEOUT_S``)
is logged as a warning and never changes the command's outcome; the URL, which
holds the check's secret id, is never logged.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from functools import wraps
from typing import Any, TypeVar

from .errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 5.0

F = TypeVar("F", bound=Callable[..., Any])


def notify_timeout(environ: Mapping[str, str] | None = None) -> float:
    """``OTC_NOTIFY_TIMEOUT_S`` (default 5): how long a webhook or heartbeat call may take."""
    env = os.environ if environ is None else environ
    text = env.get("OTC_NOTIFY_TIMEOUT_S")
    if text is None or not text.strip():
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise ConfigError(f"OTC_NOTIFY_TIMEOUT_S must be a number of seconds > 0, not {text!r}")
    return value


def ping(suffix: str, body: str = "", environ: Mapping[str, str] | None = None) -> bool:
    """POST ``body`` to ``OTC_HEARTBEAT_URL/<suffix>``; False when unset or undelivered."""
    env = os.environ if environ is None else environ
    base = env.get("OTC_HEARTBEAT_URL")
    if not base:
        return False
    import httpx  # here: `otc --help` does not pay for it

    try:
        response = httpx.post(
            f"{base.rstrip('/')}/{suffix}",
            content=body.encode(),
            timeout=httpx.Timeout(notify_timeout(env)),
            headers={"User-Agent": "otc-pipeline"},
        )
    except Exception as exc:  # noqa: BLE001 - a heartbeat never changes the run's outcome
        log.warning(
            "the heartbeat (OTC_HEARTBEAT_URL) /%s was not delivered: %s",
            suffix,
            type(exc).__name__,
            extra={"event": "heartbeat_failed"},
        )
        return False
    if not response.is_success:
        log.warning(
            "the heartbeat (OTC_HEARTBEAT_URL) /%s was answered with HTTP %s",
            suffix,
            response.status_code,
            extra={"event": "heartbeat_failed"},
        )
        return False
    return True


def exit_code_of(exc: BaseException) -> int:
    """The exit code an exception ends the command with (typer/click Exit, SystemExit)."""
    code = getattr(exc, "exit_code", None)  # click.exceptions.Exit, OtcError
    if isinstance(code, int):
        return code
    if isinstance(exc, SystemExit):
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    if isinstance(exc, KeyboardInterrupt):
        return 130
    return 1


def around(command: F) -> F:
    """Ping ``/start`` before the command and ``/<exit code>`` after it, however it ends."""

    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ping("start")
        try:
            result = command(*args, **kwargs)
        except BaseException as exc:
            ping(str(exit_code_of(exc)))
            raise
        ping("0")
        return result

    return wrapper  # type: ignore[return-value]
