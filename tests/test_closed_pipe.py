"""Output into a closed pipe (`otc runs | head -1`) ends quietly, like a Unix tool."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from otc_pipeline import pipeline
from otc_pipeline.db import make_engine


def test_output_into_a_closed_pipe_ends_quietly_with_141(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'otc.db'}"
    engine = make_engine(url)
    try:
        for number in range(3):
            pipeline.load_view(engine, "comments", [{"comment_id": number, "ticket_id": 1}])
    finally:
        engine.dispose()
    # The reader has gone before the first line is written: every write meets EPIPE.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        ended = subprocess.run(
            [sys.executable, "-m", "otc_pipeline", "runs", "--database-url", url],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write_end)
    assert ended.stderr == ""
    assert ended.returncode == 141  # 128 + SIGPIPE, as a shell reports `yes | head -1`
