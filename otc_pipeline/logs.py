"""Where otc's events go on stderr: warning lines, or one JSON object per event.

Modules log to the ``otc_pipeline`` logger with an ``event`` name (and ``view``,
``run_id`` and other fields where they apply); nothing else prints. The CLI picks
the format with ``--log-format`` / ``OTC_LOG_FORMAT``:

- ``text`` (default): warnings as ``warning: …`` lines; events the command's own
  output already shows (each view's result) are left out;
- ``json``: every event, one JSON object per line, for journald and Loki:
  ``{"time": "2026-01-31T02:00:01.123456Z", "level", "event", "message", "view",
  "run_id", …}`` with UTC timestamps.

A program that uses the Python API configures the ``otc_pipeline`` logger as it
likes; :func:`configure` is only for the command line.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from .errors import ConfigError

LOGGER_NAME = "otc_pipeline"
FORMATS = ("text", "json")
# Attributes every LogRecord has; anything else was passed as an event's field.
_RECORD_ATTRIBUTES = set(vars(logging.LogRecord("x", 0, "x", 0, "x", None, None))) | {
    "message",
    "asctime",
    "printed",
    "event",
}

_current = {"format": "text"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC), level, event, message and the event's fields."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat().replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "event": getattr(record, "event", "message"),
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRIBUTES:
                data[key] = value
        return json.dumps(data, default=str)


class _TextFormatter(logging.Formatter):
    """``warning: …``, in the lower case of the command's other output."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"


class _Stderr(logging.Handler):
    """Writes to whatever sys.stderr is when the record comes (test runners swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:  # noqa: BLE001 - logging must never end a load
            self.handleError(record)


class _NotPrinted(logging.Filter):
    """Text mode: drop events the command's own output already shows."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "printed", False)


def configure(log_format: str) -> None:
    """Send the ``otc_pipeline`` logger to stderr in ``text`` or ``json``."""
    if log_format not in FORMATS:
        raise ConfigError(f"--log-format must be text or json, not {log_format!r}")
    _current["format"] = log_format
    logger = logging.getLogger(LOGGER_NAME)
    for handler in [h for h in logger.handlers if isinstance(h, _Stderr)]:
        logger.removeHandler(handler)
    handler = _Stderr()
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
        handler.setLevel(logging.INFO)
    else:
        handler.setFormatter(_TextFormatter())
        handler.setLevel(logging.WARNING)
        handler.addFilter(_NotPrinted())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    # The command line owns stderr: no second copy through the root logger.
    logger.propagate = False


def is_json() -> bool:
    """Whether the command line writes JSON events (then it prints no text to stderr)."""
    return _current["format"] == "json"


def event(
    name: str, message: str, *, level: int = logging.INFO, printed: bool = False, **fields: Any
) -> None:
    """Log one event; ``printed`` marks what the command's own output already shows."""
    logging.getLogger(LOGGER_NAME).log(
        level, message, extra={"event": name, "printed": printed, **fields}
    )
