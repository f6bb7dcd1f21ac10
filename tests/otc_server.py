"""A stand-in for the OTC API on 127.0.0.1 that injects faults on a schedule.

Tests queue one ``Reply`` per expected request (500, 429 with Retry-After, a slow
answer, a reset mid-body, a truncated or malformed body, an HTML login page, 401…);
when the schedule is empty the server answers the view normally. It counts every
request, with its time, so tests can assert retries and waits.

Bodies are streamed in chunks from generators, never built whole, so the same
server can feed the benchmark a 200 MB view. Run it on its own for that:

    python tests/otc_server.py --timesheets 500000 [--envelope message] [--port 0]

prints the base URL on the first line and serves until interrupted.
"""

from __future__ import annotations

import argparse
import base64
import functools
import json
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

VIEW_GUIDS = {
    "tickets": "dc8570af-facd-4799-9cc0-99641d394fce",
    "timesheets": "1199f2db-1201-4611-b769-c8a941d3a5bf",
    "comments": "c59ca238-8249-48b9-bff9-092fd33ce916",
}
GUID_VIEWS = {guid: name for name, guid in VIEW_GUIDS.items()}
ENVELOPES = {
    "message": (b'{"message": {"data": [', b"]}}"),
    "data": (b'{"data": [', b"]}"),
    "list": (b"[", b"]"),
}
LOGIN_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head>"
    b'<body><form method="post" action="/login"><input name="user"></form></body></html>'
)

RecordSource = Sequence[dict[str, Any]] | Callable[[], Iterable[dict[str, Any]]]


# --- generated views ---------------------------------------------------------------------

_USERS = [(f"user{i:03d}", f"Test User {i:03d}") for i in range(350)]
_TEAMS = ["Cloud - Infrastructure", "Cloud - Security", "NOC", "Service Desk"]


def timesheet_records(count: int, start: int = 0) -> Iterator[dict[str, Any]]:
    """``count`` distinct timesheet entries in the OTC field format, generated lazily."""
    base = datetime(2024, 1, 1)
    for i in range(start, start + count):
        username, full_name = _USERS[i % len(_USERS)]
        slot = i // len(_USERS)
        day = base + timedelta(days=slot // 32)
        minutes = 6 * 60 + (slot % 32) * 15
        yield {
            "TS-User Username": username,
            "TS-User Full Name": full_name,
            "TS-Date": day.strftime("%d/%m/%Y"),
            "TS-Time From": f"{minutes // 60:02d}:{minutes % 60:02d}",
            "TS-Time To": f"{(minutes + 15) // 60:02d}:{(minutes + 15) % 60:02d}",
            "TS-Hours": "0,25",
            "TS-Category": "Project",
            "TS-Sub Category": "Implementation",
            "TS-Type": "Billable",
            "TS-Crm ID": 100000 + i % 5000 if i % 7 else "",
            "TS-Description": f"Worked on change request {i} for the customer's firewall rules",
            "TS-Account Name": f"Account {i % 120}",
            "TS-Billable": "Yes" if i % 3 else "No",
        }


def comment_records(count: int, start: int = 0) -> Iterator[dict[str, Any]]:
    """``count`` ticket comments in the OTC field format."""
    base = datetime(2026, 1, 1, 8, 0)
    for i in range(start, start + count):
        username, _ = _USERS[i % len(_USERS)]
        yield {
            "TKTCT-CommentID": 500000 + i,
            "TKTCT-TicketID": 100000 + i % 5000,
            "TKTCT-Comment": f"Comment {i}: checked the logs, waiting on the customer",
            "TKTCT-UserID": 1000 + i % len(_USERS),
            "TKTCT-Username": username,
            "TKTCT-OwnerType": "Agent",
            "TKTCT-Created Time": (base + timedelta(minutes=i)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "TKTCT-VisibleCustomer": "Y" if i % 2 else "N",
            "TKTCT-Type": "Note",
            "TKTCT-Team": _TEAMS[i % len(_TEAMS)],
        }


def ticket_records(count: int, start: int = 0) -> Iterator[dict[str, Any]]:
    """``count`` tickets in the OTC field format."""
    base = datetime(2025, 6, 1, 9, 0)
    for i in range(start, start + count):
        yield {
            "TKT-Ticket ID": 100000 + i,
            "TKT-Title": f"Ticket {i}: VPN tunnel down",
            "TKT-Status": "Closed" if i % 4 == 0 else "In Progress",
            "TKT-Severity": "P3",
            "TKT-Category": "Incident",
            "TKT-Team": _TEAMS[i % len(_TEAMS)],
            "TKT-Assigned To User": " PendingAssignment" if i % 5 == 0 else "Test User 001",
            "TKT-Created Time": (base + timedelta(hours=i)).strftime("%d/%m/%Y %H:%M"),
            "TKT-Modified Time": (base + timedelta(hours=i + 2)).strftime("%Y-%m-%d %H:%M:%S"),
            "TKT-Account Name": f"Account {i % 120}",
            "TKT-Client Name": f"Client {i % 40}",
        }


def body_chunks(
    records: Iterable[dict[str, Any]], envelope: str = "message", per_chunk: int = 200
) -> Iterator[bytes]:
    """The view's JSON body in the given envelope, ``per_chunk`` records per piece."""
    head, tail = ENVELOPES[envelope]
    yield head
    batch: list[str] = []
    first = True
    for record in records:
        batch.append(json.dumps(record))
        if len(batch) >= per_chunk:
            yield ((b"" if first else b", ") + ", ".join(batch).encode())
            first, batch = False, []
    if batch:
        yield ((b"" if first else b", ") + ", ".join(batch).encode())
    yield tail


# --- the schedule ------------------------------------------------------------------------


@dataclass
class Reply:
    """What the server does for one request; the defaults answer the view normally."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"
    body: bytes | None = None  # a fixed body instead of the view
    envelope: str | None = None  # None: the server's envelope
    delay_s: float = 0.0  # wait before sending anything
    # Fault in the middle of the view's body, after this many records were sent:
    cut_after: int | None = None
    cut: str = (
        ""  # "reset" (RST), "close" (clean end: truncated JSON), "short" (Content-Length lies)
    )
    hold: threading.Event | None = None  # wait for this after `cut_after` records, then go on
    # Send a fixed body a few bytes at a time, this many seconds apart (a trickle).
    trickle_s: float = 0.0
    trickle_bytes: int = 4


def status(code: int, retry_after: str | None = None, body: bytes = b'{"error": "x"}') -> Reply:
    """An error status, optionally with Retry-After."""
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return Reply(status=code, headers=headers, body=body)


def html_login_page() -> Reply:
    """A login page with status 200, as a misconfigured proxy answers."""
    return Reply(body=LOGIN_PAGE, content_type="text/html; charset=utf-8")


@dataclass(frozen=True)
class SeenRequest:
    """One request the server received."""

    at: float  # time.monotonic()
    path: str
    view: str | None
    authorized: bool
    user_agent: str


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    otc: OtcServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that time out or hang up are part of the tests, not errors.
        pass


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    # HTTP/1.0: one request per connection, and a body may end at close.
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def finish(self) -> None:
        try:
            super().finish()
        except (OSError, ValueError):
            pass

    def do_GET(self) -> None:
        otc = self.server.otc
        query = parse_qs(urlsplit(self.path).query)
        view = GUID_VIEWS.get((query.get("id") or [""])[0])
        authorized = self.headers.get("Authorization") == otc.expected_authorization
        reply = otc._record(
            SeenRequest(
                time.monotonic(),
                self.path,
                view,
                authorized,
                self.headers.get("User-Agent", ""),
            )
        )
        try:
            self._answer(otc, reply, view, authorized)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _answer(self, otc: OtcServer, reply: Reply | None, view: str | None, ok: bool) -> None:
        if reply is None:
            if not ok:
                reply = status(401, body=b'{"error": "unauthorized"}')
            elif view is None:
                reply = status(404, body=b'{"error": "no such view"}')
            else:
                reply = Reply()
        if reply.delay_s:
            time.sleep(reply.delay_s)
        if reply.body is not None:
            self._start(reply, len(reply.body))
            if not reply.trickle_s:
                self.wfile.write(reply.body)
                return
            for at in range(0, len(reply.body), reply.trickle_bytes):
                self.wfile.write(reply.body[at : at + reply.trickle_bytes])
                self.wfile.flush()
                time.sleep(reply.trickle_s)
            return
        records = otc.records(view or "comments")
        chunks = body_chunks(records, reply.envelope or otc.envelope, otc.per_chunk)
        if reply.cut_after is None:
            self._start(reply, None)
            for chunk in chunks:
                self.wfile.write(chunk)
            return
        self._start(reply, 10**9 if reply.cut == "short" else None)
        head, tail = ENVELOPES[reply.envelope or otc.envelope]
        self.wfile.write(head)
        remaining = iter(otc.records(view or "comments"))
        sent = 0
        while sent < reply.cut_after:
            record = next(remaining, None)
            if record is None:
                break
            self.wfile.write((b", " if sent else b"") + json.dumps(record).encode())
            sent += 1
        if reply.hold is not None:
            # The streaming test: the client must see records before the rest is sent.
            reply.hold.wait(timeout=10)
            for record in remaining:
                self.wfile.write((b", " if sent else b"") + json.dumps(record).encode())
                sent += 1
            self.wfile.write(tail)
            return
        if reply.cut == "reset":
            # Give the client time to read what was sent, then drop the connection hard.
            time.sleep(0.2)
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        # "close" and "short": just stop; the connection ends cleanly after this.

    def _start(self, reply: Reply, length: int | None) -> None:
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        if length is not None:
            self.send_header("Content-Length", str(length))
        self.end_headers()


class OtcServer:
    """The fake OTC API: ``with OtcServer(...) as server: server.base_url``."""

    def __init__(
        self,
        views: Mapping[str, RecordSource] | None = None,
        envelope: str = "message",
        user: str = "otc-user",
        password: str = "s3cret-pw",
        per_chunk: int = 200,
    ) -> None:
        self.views: dict[str, RecordSource] = dict(
            views
            if views is not None
            else {
                "comments": list(comment_records(25)),
                "tickets": list(ticket_records(10)),
                "timesheets": list(timesheet_records(30)),
            }
        )
        self.envelope = envelope
        self.user = user
        self.password = password
        self.per_chunk = per_chunk
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        self.expected_authorization = f"Basic {token}"
        self.schedule: deque[Reply] = deque()
        self.seen: list[SeenRequest] = []
        self._lock = threading.Lock()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # schedule and bookkeeping

    def queue(self, *replies: Reply) -> None:
        """Answer the next requests with these replies, in order."""
        with self._lock:
            self.schedule.extend(replies)

    def _record(self, request: SeenRequest) -> Reply | None:
        with self._lock:
            self.seen.append(request)
            return self.schedule.popleft() if self.schedule else None

    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self.seen)

    def gaps(self) -> list[float]:
        """Seconds between consecutive requests."""
        with self._lock:
            times = [r.at for r in self.seen]
        return [b - a for a, b in zip(times, times[1:], strict=False)]

    def records(self, view: str) -> Iterable[dict[str, Any]]:
        source = self.views.get(view, [])
        return source() if callable(source) else source

    # lifecycle

    @property
    def base_url(self) -> str:
        assert self._httpd is not None, "start the server first"
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}/OTC/Data/View/data"

    def env(self, **overrides: str) -> dict[str, str]:
        """OTC_API_* variables that point at this server with the right credentials."""
        env = {
            "OTC_API_BASE_URL": self.base_url,
            "OTC_API_USER": self.user,
            "OTC_API_PASSWORD": self.password,
        }
        env.update(overrides)
        return env

    def start(self, port: int = 0) -> OtcServer:
        self._httpd = _HTTPServer(("127.0.0.1", port), _Handler)
        self._httpd.otc = self
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> OtcServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: Sequence[str] | None = None) -> None:
    """Serve generated views until interrupted (for scripts/bench)."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--timesheets", type=int, default=30)
    parser.add_argument("--tickets", type=int, default=10)
    parser.add_argument("--comments", type=int, default=25)
    parser.add_argument("--envelope", choices=sorted(ENVELOPES), default="message")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--user", default="otc-user")
    parser.add_argument("--password", default="s3cret-pw")
    args = parser.parse_args(argv)
    counts = {"timesheets": args.timesheets, "tickets": args.tickets, "comments": args.comments}
    makers = {
        "timesheets": timesheet_records,
        "tickets": ticket_records,
        "comments": comment_records,
    }
    views: dict[str, RecordSource] = {
        name: functools.partial(makers[name], count) for name, count in counts.items()
    }
    server = OtcServer(views, envelope=args.envelope, user=args.user, password=args.password)
    server.start(args.port)
    print(server.base_url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
