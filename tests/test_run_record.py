"""A run's record commits with its rows: whatever signal arrives around the commit,
rows committed <=> run success/partial with the right counts, and rows not committed
<=> run failed/interrupted with the table exactly as before. Real `otc` processes on
both databases, held at the moment of commit by the test-only pause points."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from otc_process import (
    SIGNALS,
    Pause,
    finish,
    run_otc,
    runs_of,
    start_otc,
    table_state,
)

from otc_pipeline import pipeline
from otc_pipeline.db import make_engine
from otc_pipeline.sample import write_sample
from otc_pipeline.stopping import reason


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    """Two small export folders: `old` loaded first, `new` the reload under test."""
    root = tmp_path_factory.mktemp("exports")
    return {
        seed_name: write_sample(
            root / seed_name, tickets=40, timesheets=800, comments=60, fmt="json", seed=seed
        )
        for seed_name, seed in (("old", 1), ("new", 2))
    }


def _load_in_process(db_url: str, view: str, source: Path, dry_run: bool = False) -> object:
    engine = make_engine(db_url)
    try:
        return pipeline.load_view(engine, view, source, dry_run=dry_run)
    finally:
        engine.dispose()


# Where the signal lands, and whether the view's commit then happens (SIGKILL, SIGOTHER).
POINTS = {
    "before-commit": (False, False),  # before the commit: a signal rolls back
    "commit": (False, True),  # the commit has begun: a handled signal waits for it
    "after-commit": (True, True),  # committed: nothing can undo it, nor its record
}


# Every signal at the commit itself; the moments around it with a handled signal and a kill.
CASES = [
    *[("commit", name) for name in SIGNALS],
    ("before-commit", "SIGINT"),
    ("before-commit", "SIGKILL"),
    ("after-commit", "SIGTERM"),
    ("after-commit", "SIGKILL"),
]


@pytest.mark.parametrize(("point", "signal_name"), CASES)
def test_a_signal_at_commit_leaves_record_and_rows_agreeing(
    db_url: str,
    exports: dict[str, dict[str, Path]],
    tmp_path: Path,
    point: str,
    signal_name: str,
) -> None:
    _load_in_process(db_url, "timesheets", exports["old"]["timesheets"])
    source = exports["new"]["timesheets"]
    expected = _load_in_process(db_url, "timesheets", source, dry_run=True)
    before = table_state(db_url, "timesheets")

    pause = Pause(tmp_path / "pause", point)
    process = start_otc(db_url, "load", "timesheets", "--from", str(source), pause=pause)
    pause.wait(process)
    signum = SIGNALS[signal_name]
    os.kill(process.pid, signum)
    pause.release(process)
    code, out, err = finish(process)
    pause.close()

    committed = POINTS[point][0 if signal_name == "SIGKILL" else 1]
    run = runs_of(db_url, "timesheets")[-1]
    after = table_state(db_url, "timesheets")
    if committed:
        assert after != before
        assert run["load_status"] == "success"
        assert run["last_load_time"] is not None
        for count in ("fetched", "inserted", "updated", "unchanged", "duplicates", "rejected"):
            assert run[f"records_{count}"] == getattr(expected, count), count
        assert run["latest_source_time"] == expected.latest_source_time  # type: ignore[attr-defined]
        assert run["error_message"] is None
        if signal_name != "SIGKILL":
            # The signal came once the commit had begun: the load says what it committed.
            assert code == 0, err
            assert f"timesheets: success — {expected.fetched:,} fetched" in out  # type: ignore[attr-defined]
        if signal_name == "SIGKILL":
            # The rows are all there: the same export again changes nothing.
            again = run_otc(db_url, "load", "timesheets", "--from", str(source), "--json")
            assert again.returncode == 0, again.stderr
            assert '"inserted": 0, "updated": 0' in again.stdout
    else:
        assert after == before
        assert run["last_load_time"] is None
        if signal_name == "SIGKILL":
            assert code == 128 + 9
            assert run["load_status"] == "running"
            again = run_otc(db_url, "load", "timesheets", "--from", str(source))
            assert again.returncode == 0, again.stderr
            killed, reloaded = runs_of(db_url, "timesheets")[-2:]
            assert killed["load_status"] == "interrupted"
            assert reloaded["load_status"] == "success"
        else:
            assert code == 128 + signum, err
            assert run["load_status"] == "failed"
            assert run["error_message"] == reason(signum)
            assert run["records_inserted"] == run["records_updated"] == 0
            assert f"Error: timesheets: {reason(signum)}" in err


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGKILL"])
def test_load_all_records_each_view_with_its_own_commit(
    db_url: str, exports: dict[str, dict[str, Path]], tmp_path: Path, signal_name: str
) -> None:
    """A signal at the commit of timesheets: tickets and timesheets committed and
    recorded so, comments never started; exit 128 + N (a later view was stopped)."""
    folder = exports["new"]["tickets"].parent
    pause = Pause(tmp_path / "pause", "after-commit:timesheets")
    process = start_otc(db_url, "load", "all", "--from", str(folder), pause=pause)
    pause.wait(process)
    signum = SIGNALS[signal_name]
    os.kill(process.pid, signum)
    pause.release(process)
    code, out, err = finish(process)
    pause.close()

    assert code == 128 + signum
    for view in ("tickets", "timesheets"):
        (run,) = runs_of(db_url, view)
        assert run["load_status"] == "success"
        assert table_state(db_url, view)[0] == run["records_inserted"] > 0
    assert runs_of(db_url, "comments") == []
    assert table_state(db_url, "comments")[0] == 0
    if signal_name != "SIGKILL":
        assert "tickets: success" in out and "timesheets: success" in out
        assert f"Error: {reason(signum)}; not loaded: comments" in err
