"""The OTC API under a hostile server: a trickling body, a bad gzip body, hostile JSON.

A real HTTP server on 127.0.0.1 (tests/otc_server.py) with short settings.
"""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from otc_server import OtcServer, Reply, comment_records

from otc_pipeline.errors import ApiError
from otc_pipeline.sources.api import ApiSettings, breaker_state, fetch_view
from otc_pipeline.sources.records import RefusedRecord

PASSWORD = "s3cret-pw"


@pytest.fixture
def server() -> Iterator[OtcServer]:
    with OtcServer(password=PASSWORD) as srv:
        yield srv


def settings_for(server: OtcServer, tmp_path: Path, **overrides: str) -> ApiSettings:
    env = server.env(
        OTC_STATE_DIR=str(tmp_path / "state"),
        OTC_API_MIN_INTERVAL_S="0",
        OTC_API_VIEW_GAP_S="0",
        OTC_API_TIMEOUT_S="1",
        OTC_API_RETRIES="0",
        OTC_API_BACKOFF_S="0.05",
        OTC_API_BREAKER_FAILURES="1",
    )
    env.update(overrides)
    return ApiSettings.from_env(env)


def body_of(records: list[dict[str, object]]) -> bytes:
    return json.dumps({"message": {"data": records}}).encode()


def test_a_trickling_body_fails_within_the_deadline(server: OtcServer, tmp_path: Path) -> None:
    # 4 bytes every 0.2 s never leaves the connection idle for the 1 s timeout.
    body = body_of(list(comment_records(5)))  # about 60 s at this pace
    server.queue(Reply(body=body, trickle_s=0.2))
    settings = settings_for(server, tmp_path, OTC_API_DEADLINE_S="1.5")
    started = time.monotonic()
    with pytest.raises(ApiError, match="OTC_API_DEADLINE_S=1.5") as info:
        list(fetch_view("comments", settings))
    elapsed = time.monotonic() - started
    assert elapsed < 1.5 + 1.0  # the deadline, plus at most one idle timeout
    assert PASSWORD not in str(info.value)
    assert breaker_state(settings).open_until is not None  # a failed fetch


def test_the_deadline_defaults_to_a_few_timeouts(tmp_path: Path) -> None:
    settings = ApiSettings.from_env({"OTC_STATE_DIR": str(tmp_path), "OTC_API_TIMEOUT_S": "7"})
    assert settings.request_deadline_s == 28
    assert ApiSettings.from_env({"OTC_API_DEADLINE_S": "9"}).request_deadline_s == 9
    with pytest.raises(Exception, match="OTC_API_DEADLINE_S"):
        ApiSettings.from_env({"OTC_API_DEADLINE_S": "0"})


def test_a_bad_gzip_body_is_a_failed_fetch(server: OtcServer, tmp_path: Path) -> None:
    good = gzip.compress(body_of(list(comment_records(5))))
    server.queue(
        Reply(body=good[:20] + b"\x00" * 40 + good[60:], headers={"Content-Encoding": "gzip"})
    )
    settings = settings_for(server, tmp_path)
    with pytest.raises(ApiError, match="does not decode"):
        list(fetch_view("comments", settings))
    state = breaker_state(settings)
    assert state.failures == 1 and state.open_until is not None


def test_a_good_gzip_body_loads(server: OtcServer, tmp_path: Path) -> None:
    server.queue(
        Reply(
            body=gzip.compress(body_of(list(comment_records(5)))),
            headers={"Content-Encoding": "gzip"},
        )
    )
    assert len(list(fetch_view("comments", settings_for(server, tmp_path)))) == 5


def test_hostile_records_in_a_body_are_refused_records(server: OtcServer, tmp_path: Path) -> None:
    records = list(comment_records(3))
    good = json.dumps({"message": {"data": records}})
    deep = "[" * 20_000 + "]" * 20_000
    hostile = good.replace('"Comment 1:', deep + ', "x": "Comment 1:', 1)
    hostile = hostile.replace('"TKTCT-CommentID": 500002', '"TKTCT-CommentID": ' + "9" * 5000)
    server.queue(Reply(body=hostile.encode()))
    fetched = list(fetch_view("comments", settings_for(server, tmp_path)))
    assert [position for position, _ in fetched] == [1, 2, 3]
    assert isinstance(fetched[0][1], dict)
    refused = [record for _, record in fetched[1:]]
    assert all(isinstance(record, RefusedRecord) for record in refused)
    reasons = [record.reason for record in refused if isinstance(record, RefusedRecord)]
    assert "nested more than" in reasons[0] and "number of more than" in reasons[1]


def test_a_field_named_twice_in_a_body_is_a_refused_record(
    server: OtcServer, tmp_path: Path
) -> None:
    records = list(comment_records(3))
    good = json.dumps({"message": {"data": records}})
    twice = good.replace('"TKTCT-CommentID": 500002', '"TKTCT-CommentID": 500002, "TKTCT-CommentID": 7')
    assert twice != good
    # A decoy object before the records: only the record array's objects are records.
    twice = twice.replace('{"message": {', '{"message": {"paging": {"a": {"b": 1, "b": 2}}, ', 1)
    server.queue(Reply(body=twice.encode()))
    fetched = [record for _, record in fetch_view("comments", settings_for(server, tmp_path))]
    assert len(fetched) == 3
    refused = fetched[2]  # the third record, comment 500002
    assert isinstance(refused, RefusedRecord)
    assert refused.field == "TKTCT-CommentID" and "named 2 times" in refused.reason
    assert isinstance(fetched[0], dict) and isinstance(fetched[1], dict)
