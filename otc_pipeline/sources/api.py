"""The OTC API as a source: paced, retried, streamed, behind a circuit breaker.

``fetch_view(view_name, settings)`` makes one ``GET {base}?id={guid}`` and yields
``(position, record)`` pairs while the body is still arriving, so memory stays flat
however large the view. The legacy OTC system is fragile, so every call goes
through the same protections, each a setting (``ApiSettings.from_env``):

- pacing: at least ``OTC_API_MIN_INTERVAL_S`` between requests and at most
  ``OTC_API_MAX_PER_HOUR`` in any rolling hour, counted across processes;
- retries: 5xx, 408, 429, timeouts and dropped connections are retried up to
  ``OTC_API_RETRIES`` times with exponential backoff and jitter, honouring
  ``Retry-After`` on 429 and 503, but only while no record has been yielded;
- circuit breaker: after ``OTC_API_BREAKER_FAILURES`` consecutive failed
  *fetches* (each one having used up its retries, or having failed in a way no
  retry can fix) no request is made for ``OTC_API_BREAKER_COOLDOWN_S``. Counting
  fetches rather than HTTP attempts keeps the two settings independent: with
  attempts, 3 failures would cut a fetch's own 3 retries short. After the
  cooldown one fetch is let through; it closes the breaker on success and opens
  it again on failure. The breaker counts outages, not mistakes: a 4xx answer
  (401/403 wrong credentials, 404 wrong URL, …) fails the fetch at once and is
  not counted, and ``otc api check --ping`` neither consults nor changes it.
  ``otc api reset`` (:func:`reset_breaker`) closes it by hand.

Pacing and breaker state live in ``OTC_STATE_DIR/api-state.json`` (written
atomically under an ``fcntl`` lock) because cron starts a new process for every
run. Nothing here prints, and no message contains the password.
"""

from __future__ import annotations

import contextlib
import email.utils
import fcntl
import json
import math
import os
import tempfile
import time
from collections.abc import Generator, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import ijson
from tenacity import (
    RetryCallState,
    RetryError,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from ..errors import ApiError, ApiRejected, ApiUnavailable, ConfigError, first_line
from ..readmeter import body_meter
from ..settings import mask_url_text, parses_cleanly
from ..version import __version__
from ..views import known_view
from .json_guard import JsonGuard

SourceRecord = tuple[int, dict[str, Any]]

DEFAULT_BASE_URL = "https://webhook.orro.support/OTC/Data/View/data"
USER_AGENT = f"otc-pipeline/{__version__}"
STATE_FILE_NAME = "api-state.json"
HOUR_S = 3600.0
# A body may trickle a few bytes at a time and never trip the idle timeout: every
# request also ends by OTC_API_DEADLINE_S, by default this many idle timeouts.
DEADLINE_TIMEOUTS = 4
# The view used by `otc api check --ping`: the smallest one (10 days of comments).
PING_VIEW = "comments"

# Where the list of records sits in each envelope the OTC deployments answer with:
# {"message": {"data": [...]}}, {"data": [...]} and a bare [...].
_ENVELOPE_PREFIXES = {"message.data": "message.data.item", "data": "data.item", "": "item"}
# Bytes kept of an answer that is not a view, to show the user what came back.
_EXCERPT_CHARS = 120

# Indirection so tests can observe waits; production always sleeps for real.
_sleep = time.sleep


# --- settings ---------------------------------------------------------------------------


def default_state_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_STATE_HOME/otc-pipeline``, else ``~/.local/state/otc-pipeline``."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "otc-pipeline"


@dataclass(frozen=True, repr=False)
class ApiSettings:
    """How to reach the OTC API and how gently to treat it (all from OTC_API_* variables)."""

    base_url: str = DEFAULT_BASE_URL
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    min_interval_s: float = 5.0
    max_per_hour: int = 100
    view_gap_s: float = 30.0
    timeout_s: float = 120.0
    deadline_s: float | None = None  # None: DEADLINE_TIMEOUTS x timeout_s
    retries: int = 3
    backoff_s: float = 10.0
    backoff_max_s: float = 300.0
    breaker_failures: int = 3
    breaker_cooldown_s: float = 600.0
    state_dir: Path = field(default_factory=default_state_dir)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ApiSettings:
        """Read the OTC_API_* variables and OTC_STATE_DIR; ConfigError names a bad one."""
        env = os.environ if environ is None else environ
        state_dir = env.get("OTC_STATE_DIR")
        return cls(
            base_url=env.get("OTC_API_BASE_URL") or DEFAULT_BASE_URL,
            user=env.get("OTC_API_USER") or None,
            password=env.get("OTC_API_PASSWORD") or None,
            min_interval_s=_number(env, "OTC_API_MIN_INTERVAL_S", 5.0, minimum=0),
            max_per_hour=_whole(env, "OTC_API_MAX_PER_HOUR", 100, minimum=1),
            view_gap_s=_number(env, "OTC_API_VIEW_GAP_S", 30.0, minimum=0),
            timeout_s=_number(env, "OTC_API_TIMEOUT_S", 120.0, minimum=0.001),
            # Unset: 0.0 here, then None: DEADLINE_TIMEOUTS idle timeouts.
            deadline_s=_number(env, "OTC_API_DEADLINE_S", 0.0, minimum=0.001) or None,
            retries=_whole(env, "OTC_API_RETRIES", 3, minimum=0),
            backoff_s=_number(env, "OTC_API_BACKOFF_S", 10.0, minimum=0),
            backoff_max_s=_number(env, "OTC_API_BACKOFF_MAX_S", 300.0, minimum=0),
            breaker_failures=_whole(env, "OTC_API_BREAKER_FAILURES", 3, minimum=1),
            breaker_cooldown_s=_number(env, "OTC_API_BREAKER_COOLDOWN_S", 600.0, minimum=0),
            state_dir=Path(state_dir).expanduser() if state_dir else default_state_dir(env),
        )

    @property
    def request_deadline_s(self) -> float:
        """Seconds one request may take from sending it to the end of its body."""
        if self.deadline_s is not None:
            return self.deadline_s
        return DEADLINE_TIMEOUTS * self.timeout_s

    def __repr__(self) -> str:
        # The password is never shown, not even when written into the base URL.
        shown = {
            name: getattr(self, name)
            for name in self.__dataclass_fields__
            if name not in ("base_url", "password")
        }
        fields = ", ".join(f"{name}={value!r}" for name, value in shown.items())
        password = "'***'" if self.password else "None"
        return f"ApiSettings(base_url={self.masked_base_url!r}, password={password}, {fields})"

    @property
    def masked_base_url(self) -> str:
        """The base URL with any user or password written into it removed.

        One that does not parse cleanly (an unencoded '@', '/', '#'… in the password
        moves httpx's idea of the host) is masked from '//' to its last '@'.
        """
        try:
            url = httpx.URL(self.base_url)
        except (httpx.InvalidURL, TypeError):
            return mask_url_text(self.base_url) if "@" in self.base_url else "<unparseable URL>"
        if "@" in self.base_url and not parses_cleanly(self.base_url, str(url)):
            return mask_url_text(self.base_url)
        return str(url.copy_with(userinfo=b"")) if url.userinfo else str(url)

    def require_credentials(self) -> None:
        """Raise ConfigError naming the variable when the user or password is missing."""
        missing = [
            name
            for name, value in (("OTC_API_USER", self.user), ("OTC_API_PASSWORD", self.password))
            if not value
        ]
        if missing:
            raise ConfigError(
                f"{' and '.join(missing)} not set; set {'/'.join(missing)} to the OTC API "
                "account, or load from a file with --from FILE"
            )
        try:
            url = httpx.URL(self.base_url)
        except (httpx.InvalidURL, TypeError):
            url = None
        if self.base_url.count("@") > 1:
            raise ConfigError(
                f"OTC_API_BASE_URL holds more than one '@' ({self.masked_base_url}); write "
                "an '@' in the user name or password as %40, or leave the credentials to "
                "OTC_API_USER and OTC_API_PASSWORD"
            )
        if url is None or url.scheme not in ("http", "https") or not url.host:
            raise ConfigError(
                f"OTC_API_BASE_URL is not an http(s) URL ({self.masked_base_url}); "
                f"unset it to use {DEFAULT_BASE_URL}"
            )


def _number(env: Mapping[str, str], name: str, default: float, minimum: float) -> float:
    text = env.get(name)
    if text is None or text.strip() == "":
        return default
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value >= minimum or value == float("inf"):
        raise ConfigError(f"{name} must be a number of seconds >= {minimum:g}, not {text!r}")
    return value


def _whole(env: Mapping[str, str], name: str, default: int, minimum: int) -> int:
    text = env.get(name)
    if text is None or text.strip() == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number >= {minimum}, not {text!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be a whole number >= {minimum}, not {text!r}")
    return value


def view_gap(settings: ApiSettings) -> float:
    """Seconds to wait between two views of ``otc load all --from api``."""
    return settings.view_gap_s


def wait_between_views(settings: ApiSettings) -> None:
    """Sleep the gap the legacy system expects between two views."""
    if settings.view_gap_s > 0:
        _sleep(settings.view_gap_s)


# --- state shared by every process: request times and the breaker --------------------


class _StateFile:
    """``api-state.json``: recent request times and the breaker, under an fcntl lock."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / STATE_FILE_NAME
        self.lock_path = directory / (STATE_FILE_NAME + ".lock")

    @contextlib.contextmanager
    def locked(self) -> Iterator[dict[str, Any]]:
        """The state, exclusively ours until the block ends; changes are saved atomically."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            lock = open(self.lock_path, "a+")  # noqa: SIM115 - closed in finally
        except OSError as exc:
            raise ConfigError(
                f"cannot use the state directory {self.directory} ({exc.strerror}); "
                "set OTC_STATE_DIR to a writable directory"
            ) from None
        try:
            # Blocks while another otc process reserves a request slot, so two
            # cron runs never both see "the last request was long ago".
            fcntl.flock(lock, fcntl.LOCK_EX)
            state = self._read()
            before = json.dumps(state, sort_keys=True)
            yield state
            if json.dumps(state, sort_keys=True) != before:
                self._write(state)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
            lock.close()

    def snapshot(self) -> dict[str, Any]:
        """The state as it is now, without changing it."""
        if not self.path.exists():
            return _empty_state()
        with self.locked() as state:
            return dict(json.loads(json.dumps(state)))

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return _empty_state()
        except (OSError, ValueError):
            # Writes are atomic, so this is a hand-edited or foreign file: start
            # afresh rather than block every load until someone deletes it.
            return _empty_state()
        state = _empty_state()
        if isinstance(data, dict):
            requests = data.get("requests")
            if isinstance(requests, list):
                state["requests"] = [float(t) for t in requests if isinstance(t, int | float)]
            breaker = data.get("breaker")
            if isinstance(breaker, dict):
                state["breaker"].update({k: breaker[k] for k in state["breaker"] if k in breaker})
        return state

    def _write(self, state: dict[str, Any]) -> None:
        fd, tmp = tempfile.mkstemp(prefix=".api-state.", suffix=".tmp", dir=self.directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(state, out, indent=1)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def _empty_state() -> dict[str, Any]:
    return {"requests": [], "breaker": {"failures": 0, "open_until": None, "last_error": None}}


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _reserve_request_slot(settings: ApiSettings, state_file: _StateFile) -> float:
    """Wait until a request is allowed, record it, and return the seconds waited."""
    with state_file.locked() as state:
        now = time.time()
        recent = sorted(t for t in state["requests"] if now - HOUR_S < t <= now)
        wait = 0.0
        if recent:
            # min() guards against a clock set back: never wait more than the interval.
            wait = min(recent[-1] + settings.min_interval_s - now, settings.min_interval_s)
        if len(recent) >= settings.max_per_hour:
            frees_at = recent[len(recent) - settings.max_per_hour] + HOUR_S
            if frees_at - now > settings.backoff_max_s:
                raise ApiUnavailable(
                    f"the OTC API hourly cap is used up: {len(recent)} requests in the last "
                    f"hour (OTC_API_MAX_PER_HOUR={settings.max_per_hour}); the next request "
                    f"is allowed at {_when(frees_at)}, run the load again after that"
                )
            wait = max(wait, frees_at - now)
        wait = max(wait, 0.0)
        if wait > 0:
            # Sleeping with the lock held makes a concurrent process queue behind us.
            _sleep(wait)
            now = time.time()
        state["requests"] = [t for t in recent if t > now - HOUR_S] + [now]
        return wait


def _check_breaker(settings: ApiSettings, state_file: _StateFile) -> None:
    with state_file.locked() as state:
        breaker = state["breaker"]
        open_until = breaker.get("open_until")
        now = time.time()
        if isinstance(open_until, int | float) and now < open_until:
            raise ApiUnavailable(
                f"the OTC API circuit breaker is open after {breaker.get('failures')} "
                f"consecutive failed fetches (last: {breaker.get('last_error')}); no requests "
                f"until {_when(open_until)} (in {open_until - now:.0f} s); loads resume by "
                "themselves after that, or run `otc api reset` to try now"
            )


def _record_fetch(settings: ApiSettings, state_file: _StateFile, error: str | None) -> None:
    """Count a failed fetch (opening the breaker at the threshold) or close it on success."""
    with state_file.locked() as state:
        breaker = state["breaker"]
        if error is None:
            breaker.update(failures=0, open_until=None, last_error=None)
            return
        failures = int(breaker.get("failures") or 0) + 1
        # Only "what failed": the advice part belongs to the original error.
        breaker.update(failures=failures, last_error=error.split("; ")[0][:200])
        if failures >= settings.breaker_failures:
            breaker["open_until"] = time.time() + settings.breaker_cooldown_s


@dataclass(frozen=True)
class BreakerState:
    """What the circuit breaker is doing now (for ``otc api check``)."""

    failures: int
    open_until: float | None
    last_error: str | None
    requests_last_hour: int
    last_request_at: float | None


def breaker_state(settings: ApiSettings) -> BreakerState:
    """The breaker and recent requests as the state file records them."""
    return _describe(_StateFile(settings.state_dir).snapshot())


def reset_breaker(settings: ApiSettings) -> BreakerState:
    """Close the breaker and forget its failed fetches; returns the state it cleared.

    The request times are kept: the hourly cap protects the OTC system whatever
    the breaker says.
    """
    with _StateFile(settings.state_dir).locked() as state:
        before = _describe(state)
        state["breaker"].update(failures=0, open_until=None, last_error=None)
    return before


def _describe(state: dict[str, Any]) -> BreakerState:
    now = time.time()
    breaker = state["breaker"]
    open_until = breaker.get("open_until")
    recent = [t for t in state["requests"] if now - HOUR_S < t <= now]
    return BreakerState(
        failures=int(breaker.get("failures") or 0),
        open_until=float(open_until)
        if isinstance(open_until, int | float) and open_until > now
        else None,
        last_error=breaker.get("last_error"),
        requests_last_hour=len(recent),
        last_request_at=max(recent) if recent else None,
    )


# --- one HTTP attempt and its body ------------------------------------------------------


class _Transient(Exception):
    """A failure worth retrying (before any record was yielded)."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


def _transport_reason(exc: httpx.TransportError, settings: ApiSettings) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return f"no answer within OTC_API_TIMEOUT_S={settings.timeout_s:g} s ({type(exc).__name__})"
    if isinstance(exc, httpx.RemoteProtocolError):
        return f"the connection was dropped ({first_line(exc)})"
    return f"connection failed ({type(exc).__name__}: {first_line(exc)})"


def _deadline_reason(settings: ApiSettings) -> str:
    return (
        f"the answer took longer than OTC_API_DEADLINE_S={settings.request_deadline_s:g} s "
        "(the body arrived too slowly)"
    )


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(when.timestamp() - (time.time() if now is None else now), 0.0)


class _Body:
    """A response body parsed while it arrives, in whichever envelope it came."""

    def __init__(
        self,
        response: httpx.Response,
        latency_s: float,
        settings: ApiSettings,
        deadline: float | None = None,
    ) -> None:
        self.response = response
        self.latency_s = latency_s
        self._settings = settings
        # time.monotonic() by which the body must have ended
        self._deadline = deadline if deadline is not None else math.inf
        self._chunks = response.iter_bytes()
        self._records: list[Any] = ijson.sendable_list()
        self._parser: Any = None  # ijson items coroutine, once the envelope is known
        self._events: list[Any] = ijson.sendable_list()
        self._sniffer: Any = ijson.parse_coro(self._events)
        self._pending: list[bytes] = []  # chunks read before the envelope was known, as sent
        self._started = False
        self._excerpt = b""
        self._ended = False
        # Keeps hostile values (deep nesting, huge numbers, lone surrogates) from ijson.
        # Until the envelope is known this one guards the sniffer; then a guard told the
        # records' prefix reads the body again from its start (see _parse).
        self._guard = JsonGuard()
        # Where the loading process watches the body arrive (a progress bar), if it does:
        # bytes off the wire, as Content-Length counts them (compressed or not).
        self._meter = body_meter()
        length = response.headers.get("content-length", "")
        self._length = int(length) if length.isdigit() else None

    def _next_chunk(self) -> bytes | None:
        try:
            for chunk in self._chunks:
                if time.monotonic() > self._deadline:
                    raise _Transient(_deadline_reason(self._settings))
                if chunk:
                    if self._meter is not None:
                        self._meter.received(self.response.num_bytes_downloaded, self._length)
                    return chunk
        except httpx.TransportError as exc:
            raise _Transient(_transport_reason(exc, self._settings)) from None
        except httpx.DecodingError as exc:
            # A gzip or deflate body that does not decode: a failed fetch, like bad JSON.
            raise ApiError(
                f"the OTC API answered a body that does not decode ({first_line(exc)}); "
                "nothing of the view is loaded, try again later and report it to the OTC "
                "team if it persists"
            ) from None
        return None

    def _feed(self, chunk: bytes) -> None:
        if not self._started:
            stripped = chunk.lstrip()
            if not stripped:
                return
            if stripped.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte order mark
                chunk = stripped = stripped[3:].lstrip()
                if not chunk:
                    return
            self._started = True
            if stripped[:1] == b"<":
                raise ApiError(_html_message(self._settings))
        if len(self._excerpt) < _EXCERPT_CHARS:
            self._excerpt += chunk[: _EXCERPT_CHARS - len(self._excerpt)]
        if self._parser is None:
            self._pending.append(chunk)
        self._parse(self._guard.feed(chunk))

    def _parse(self, chunk: bytes) -> None:
        if not chunk:
            return
        if self._parser is not None:
            self._send(chunk)
            return
        try:
            self._sniffer.send(chunk)
        except (ijson.JSONError, UnicodeDecodeError, ArithmeticError) as exc:
            raise ApiError(self._malformed(exc)) from None
        for prefix, event, _value in self._events:
            if event == "start_array" and prefix in _ENVELOPE_PREFIXES:
                records_prefix = _ENVELOPE_PREFIXES[prefix]
                self._parser = ijson.items_coro(self._records, records_prefix)
                self._sniffer = None
                # Told the prefix, the guard also finds fields named twice in a record.
                self._guard = JsonGuard(records_prefix)
                pending, self._pending = self._pending, []
                for earlier in pending:
                    self._send(self._guard.feed(earlier))
                break
        del self._events[:]

    def _send(self, chunk: bytes) -> None:
        try:
            self._parser.send(chunk)
        except (ijson.JSONError, UnicodeDecodeError, ArithmeticError) as exc:
            raise ApiError(self._malformed(exc)) from None

    def _finish(self) -> None:
        self._ended = True
        if self._started:
            sniffing = self._guard
            self._parse(sniffing.end())
            if self._guard is not sniffing:  # the envelope was known only at the end
                self._parse(self._guard.end())
        if not self._started:
            raise ApiError(
                "the OTC API answered with an empty body, not JSON; check OTC_API_BASE_URL "
                f"({self._settings.masked_base_url}) and try again later"
            )
        if self._parser is None:
            try:
                self._sniffer.close()
            except ijson.JSONError:
                raise ApiError(self._truncated()) from None
            raise ApiError(
                "the OTC API answered JSON without a list of records (expected "
                '{"message": {"data": [...]}}, {"data": [...]} or [...]; got '
                f"{self._excerpt_text()}); check OTC_API_BASE_URL "
                f"({self._settings.masked_base_url})"
            )
        try:
            self._parser.close()
        except ijson.JSONError:
            raise ApiError(self._truncated()) from None

    def _excerpt_text(self) -> str:
        text = self._excerpt.decode("utf-8", "replace").replace("\n", " ").strip()
        return text + ("…" if len(self._excerpt) >= _EXCERPT_CHARS else "")

    def _malformed(self, exc: Exception) -> str:
        return (
            f"the OTC API answered malformed JSON ({first_line(exc)}); nothing of the view "
            "is loaded, try again later and report it to the OTC team if it persists"
        )

    def _truncated(self) -> str:
        return (
            "the OTC API's answer ended before the JSON was complete (truncated body); "
            "nothing of the view is loaded, run the load again"
        )

    def read_to_first_record(self) -> None:
        """Read until one record is parsed or the body ends (the part worth retrying)."""
        while not self._records and not self._ended:
            chunk = self._next_chunk()
            if chunk is None:
                self._finish()
            else:
                self._feed(chunk)

    def records(self) -> Iterator[dict[str, Any]]:
        """Every record, parsed as the bytes arrive; _Transient when the connection drops."""
        while True:
            if self._records:
                batch = list(self._records)
                del self._records[:]
                yield from map(self._guard.checked, batch)
            if self._ended:
                return
            chunk = self._next_chunk()
            if chunk is None:
                self._finish()
            else:
                self._feed(chunk)


def _html_message(settings: ApiSettings) -> str:
    return (
        "the OTC API answered with an HTML page, not JSON (a login page?); check "
        f"OTC_API_BASE_URL ({settings.masked_base_url}) and OTC_API_USER / OTC_API_PASSWORD"
    )


def _check_response(response: httpx.Response, settings: ApiSettings, view_name: str) -> None:
    status = response.status_code
    label = f"HTTP {status} {response.reason_phrase}".strip()
    if status in (401, 403):
        raise ApiRejected(
            f"the OTC API refused the credentials ({label}); check OTC_API_USER and "
            f"OTC_API_PASSWORD (and OTC_API_BASE_URL: {settings.masked_base_url})"
        )
    if status in (408, 429) or status >= 500:
        retry_after = None
        if status in (429, 503):
            retry_after = parse_retry_after(response.headers.get("retry-after"))
        if retry_after is not None and retry_after > settings.backoff_max_s:
            raise ApiError(
                f"the OTC API is busy ({label}) and asked for {retry_after:.0f} s before the "
                f"next request, more than OTC_API_BACKOFF_MAX_S={settings.backoff_max_s:g}; "
                "run the load again later"
            )
        raise _Transient(label, retry_after)
    if status == 404:
        raise ApiRejected(
            f"the OTC API has no {view_name} view at {settings.masked_base_url} ({label}); "
            "check OTC_API_BASE_URL"
        )
    if 400 <= status < 500:
        # A request the API will refuse however often it is made: no outage to count.
        raise ApiRejected(
            f"the OTC API refused the {view_name} request ({label}); check OTC_API_BASE_URL "
            f"({settings.masked_base_url}), OTC_API_USER and OTC_API_PASSWORD"
        )
    if not 200 <= status < 300:
        raise ApiError(
            f"the OTC API answered {label} for the {view_name} view; check OTC_API_BASE_URL "
            f"({settings.masked_base_url}) and try again later"
        )
    content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if "html" in content_type:
        raise ApiError(_html_message(settings))
    # Some deployments label JSON as text/plain; anything else is not a view.
    if content_type and "json" not in content_type and content_type != "text/plain":
        raise ApiError(
            f"the OTC API answered {content_type}, not JSON; check OTC_API_BASE_URL "
            f"({settings.masked_base_url})"
        )


def _attempt(
    client: httpx.Client,
    settings: ApiSettings,
    state_file: _StateFile,
    view_name: str,
    guid: str,
) -> _Body:
    """One paced request, read up to its first record."""
    _reserve_request_slot(settings, state_file)
    started = time.monotonic()
    deadline = started + settings.request_deadline_s
    try:
        request = client.build_request("GET", settings.base_url, params={"id": guid})
        response = client.send(request, stream=True)
    except httpx.TransportError as exc:
        raise _Transient(_transport_reason(exc, settings)) from None
    try:
        if time.monotonic() > deadline:
            raise _Transient(_deadline_reason(settings))
        _check_response(response, settings, view_name)
        body = _Body(response, time.monotonic() - started, settings, deadline)
        body.read_to_first_record()
        return body
    except BaseException:
        response.close()
        raise


def _backoff_wait(settings: ApiSettings) -> Any:
    # OTC_API_BACKOFF_S, doubling, plus up to half of it as jitter so that several
    # cron jobs hit by the same outage do not come back in step.
    backoff = wait_exponential(
        multiplier=settings.backoff_s, max=settings.backoff_max_s, exp_base=2
    ) + wait_random(0, settings.backoff_s / 2)

    def wait(retry_state: RetryCallState) -> float:
        seconds = min(float(backoff(retry_state)), settings.backoff_max_s)
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None else None
        if isinstance(exc, _Transient) and exc.retry_after is not None:
            # The larger of the two: Retry-After: 0 must not turn into a tight loop.
            seconds = max(seconds, exc.retry_after)
        return seconds

    return wait


def _open(
    client: httpx.Client,
    settings: ApiSettings,
    state_file: _StateFile,
    view_name: str,
    guid: str,
) -> _Body:
    attempts = settings.retries + 1
    retrying = Retrying(
        stop=stop_after_attempt(attempts),
        wait=_backoff_wait(settings),
        retry=retry_if_exception_type(_Transient),
        sleep=lambda seconds: _sleep(seconds),
    )
    try:
        for attempt in retrying:
            with attempt:
                return _attempt(client, settings, state_file, view_name, guid)
    except RetryError as exc:
        last = exc.last_attempt.exception()
        noun = "attempt" if attempts == 1 else "attempts"
        raise ApiError(
            f"the OTC API {view_name} request gave up after {attempts} {noun}: last error: "
            f"{last}; the OTC API may be down or overloaded, try again later"
        ) from None
    raise AssertionError("tenacity ended without a result")  # pragma: no cover


def _scrub(text: str, settings: ApiSettings) -> str:
    if settings.password:
        text = text.replace(settings.password, "***")
    return text


@dataclass
class FetchStats:
    """What one fetch saw, filled in while records are yielded (for --ping)."""

    status_code: int | None = None
    latency_s: float | None = None
    records: int = 0
    complete: bool = False


def fetch_view(
    view_name: str,
    settings: ApiSettings,
    stats: FetchStats | None = None,
    *,
    breaker: bool = True,
) -> Generator[SourceRecord, None, None]:
    """Yield ``(position, record)`` for every record of the view, as the body arrives.

    Raises ConfigError at once for an unknown view or missing credentials. While
    iterating it raises ApiError (ApiUnavailable when no request was made); a failure
    after the first record is never retried, so the caller must discard what it got.
    With ``breaker=False`` (``otc api check --ping``) the circuit breaker is neither
    consulted nor changed; pacing and the hourly cap still apply.
    """
    view = known_view(view_name)
    settings.require_credentials()
    return _fetch(view_name, view.guid, settings, stats or FetchStats(), breaker)


def _fetch(
    view_name: str, guid: str, settings: ApiSettings, stats: FetchStats, breaker: bool
) -> Generator[SourceRecord, None, None]:
    state_file = _StateFile(settings.state_dir)
    client = httpx.Client(
        auth=(settings.user or "", settings.password or ""),
        headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
        timeout=httpx.Timeout(settings.timeout_s),
        # A redirect to a login page then shows up as the HTML page it is.
        follow_redirects=True,
    )
    body: _Body | None = None
    try:
        try:
            if breaker:
                _check_breaker(settings, state_file)
            body = _open(client, settings, state_file, view_name, guid)
            stats.status_code = body.response.status_code
            stats.latency_s = body.latency_s
            position = 0
            try:
                for record in body.records():
                    position += 1
                    stats.records = position
                    yield position, record
            except _Transient as exc:
                raise ApiError(
                    f"the OTC API {view_name} answer broke off after {position} records: "
                    f"{exc}; nothing of the view is loaded, run the load again"
                ) from None
        except (ApiUnavailable, ApiRejected) as exc:
            # Not an outage: the API was not called, or it refused a wrong request.
            raise _scrubbed(exc, settings) from None
        except ApiError as exc:
            error = _scrubbed(exc, settings)
            if breaker:
                _record_fetch(settings, state_file, str(error))
            raise error from None
        stats.complete = True
        if breaker:
            _record_fetch(settings, state_file, None)
    finally:
        if body is not None:
            body.response.close()
        client.close()


def _scrubbed(exc: ApiError, settings: ApiSettings) -> ApiError:
    text = _scrub(str(exc), settings)
    return exc if text == str(exc) else type(exc)(text)


# --- otc api check ----------------------------------------------------------------------


def api_check(settings: ApiSettings, ping: bool = False) -> list[str]:
    """Lines describing the API settings and breaker; with ``ping`` one paced request."""
    state = breaker_state(settings)
    now = time.time()
    lines = [
        f"base URL: {settings.masked_base_url}"
        + (" (OTC_API_BASE_URL)" if settings.base_url != DEFAULT_BASE_URL else " (default)"),
        f"user: {settings.user}" if settings.user else "user: not set (set OTC_API_USER)",
        "password: set" if settings.password else "password: not set (set OTC_API_PASSWORD)",
        f"pacing: at least {settings.min_interval_s:g} s between requests, at most "
        f"{settings.max_per_hour} per hour, {settings.view_gap_s:g} s between views",
        f"timeout: {settings.timeout_s:g} s idle, {settings.request_deadline_s:g} s per "
        f"request; retries: {settings.retries}, backoff "
        f"{settings.backoff_s:g} s doubling to {settings.backoff_max_s:g} s",
        f"requests in the last hour: {state.requests_last_hour} of {settings.max_per_hour}"
        + (
            f" (last {now - state.last_request_at:.0f} s ago)"
            if state.last_request_at is not None
            else ""
        ),
    ]
    if state.open_until is not None:
        lines.append(
            f"breaker: open until {_when(state.open_until)} after {state.failures} consecutive "
            f"failed fetches (last: {state.last_error})"
        )
    else:
        lines.append(
            f"breaker: closed ({state.failures} of {settings.breaker_failures} failed fetches, "
            f"cooldown {settings.breaker_cooldown_s:g} s)"
        )
    lines.append(f"state: {settings.state_dir / STATE_FILE_NAME}")
    if ping:
        stats = FetchStats()
        started = time.monotonic()
        # A ping is a question, not a load: it never opens (or closes) the breaker.
        for _ in fetch_view(PING_VIEW, settings, stats, breaker=False):
            pass
        lines.append(
            f"ping: HTTP {stats.status_code}, first answer after {stats.latency_s or 0:.2f} s, "
            f"{stats.records} {PING_VIEW} records in {time.monotonic() - started:.2f} s "
            "(nothing loaded)"
        )
    return [_scrub(line, settings) for line in lines]


def api_reset(settings: ApiSettings) -> list[str]:
    """Close the circuit breaker by hand; lines saying what was cleared."""
    cleared = reset_breaker(settings)
    if cleared.open_until is not None:
        first = (
            f"breaker: closed; it was open until {_when(cleared.open_until)} after "
            f"{cleared.failures} consecutive failed fetches (last: {cleared.last_error})"
        )
    elif cleared.failures:
        first = (
            f"breaker: was closed; cleared {cleared.failures} failed "
            f"{'fetch' if cleared.failures == 1 else 'fetches'} (last: {cleared.last_error})"
        )
    else:
        first = "breaker: was closed with no failed fetches; nothing to clear"
    lines = [
        first,
        f"requests in the last hour: {cleared.requests_last_hour} of {settings.max_per_hour} "
        "(kept: the hourly cap still applies)",
        f"state: {settings.state_dir / STATE_FILE_NAME}",
    ]
    return [_scrub(line, settings) for line in lines]
