"""`otc load` on a real terminal (a pty): progress bars with a percentage, then cleared."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from otc_pipeline.sample import write_sample


def run_on_a_terminal(args: list[str], cwd: Path, answer: bytes = b"") -> tuple[int, str]:
    """Run ``python -m otc_pipeline ARGS`` with stdin, stdout and stderr on one pty."""
    leader, follower = pty.openpty()
    # 120 columns: room for every progress column.
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120"}
    env.pop("NO_COLOR", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "otc_pipeline", *args],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        cwd=cwd,
        env=env,
        close_fds=True,
    )
    os.close(follower)
    if answer:
        os.write(leader, answer)
    output = b""
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # EIO: every end of the terminal is closed
            break
        if not data:
            break
        output += data
    os.close(leader)
    return process.wait(timeout=120), output.decode("utf-8", "replace")


@pytest.fixture(scope="module")
def big_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("terminal")
    write_sample(folder, tickets=10, timesheets=20000, comments=10, fmt="csv", seed=2)
    return folder / "timesheets.csv"


def test_a_file_load_shows_a_bar_with_percentage_then_clears(
    big_export: Path, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'otc.db'}"
    code, screen = run_on_a_terminal(
        [
            "load",
            "timesheets",
            "--from",
            str(big_export),
            "--database-url",
            url,
            "--chunk-size",
            "1000",
        ],
        tmp_path,
    )
    assert code == 0, screen
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen)  # without colours and cursor moves
    frames = [frame for frame in text.split("\r") if "timesheets ━" in frame]
    assert frames, screen  # Rich's bar
    assert any(re.search(r" \d+%  [\d,]+ rows  [\d,]+ rows/s  ETA \d+:\d\d", f) for f in frames), (
        frames
    )
    # The result appears with a check mark the moment the view ends ...
    assert "✓ timesheets: success — 20,000 fetched" in text
    # ... and its bar is gone from then on (no frame redraws it).
    after = text[text.index("✓ timesheets: success") :]
    assert "━" not in after, after
    # The live lines are erased when the load ends: after the last erase, no bar.
    last_erase = screen.rfind("\x1b[2K")
    assert last_erase != -1 and "━" not in screen[last_erase:]


def test_no_progress_without_a_terminal_or_with_json(big_export: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'otc.db'}"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "otc_pipeline",
            "load",
            "timesheets",
            "--from",
            str(big_export),
            "--database-url",
            url,
            "--chunk-size",
            "1000",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "━" not in done.stderr and "\x1b[" not in done.stderr + done.stdout
    code, screen = run_on_a_terminal(
        ["load", "timesheets", "--from", str(big_export), "--database-url", url, "--json"],
        tmp_path,
    )
    assert code == 0 and "━" not in screen and "\x1b[" not in screen


def test_downgrade_on_a_terminal_asks_first(big_export: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'otc.db'}"
    upgrade = subprocess.run(
        [sys.executable, "-m", "otc_pipeline", "db", "upgrade", "--database-url", url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert upgrade.returncode == 0, upgrade.stderr
    code, screen = run_on_a_terminal(
        ["db", "downgrade", "base", "--database-url", url], tmp_path, answer=b"n\n"
    )
    assert "removes:" in screen and "table etl_metadata (0 rows)" in screen
    assert "Remove them? [y/N]" in screen
    assert code == 2 and "downgrade cancelled; nothing was changed" in screen
