"""How far the reading processes are into their export file, for a progress bar.

A view's reader is a child process of the load (see pipeline.py, which names them
``otc-read-*``); the position of its open file is in ``/proc/<pid>/fdinfo`` on Linux,
so the load learns how many bytes were read without a word from the reader.
Elsewhere, for the API, or if readers cannot be seen, the answer is None and a
progress display shows counts only.
"""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

READER_PREFIX = "otc-read-"


class ReadMeter:
    """Bytes of one export file read so far, summed over the processes reading it.

    ``starts`` are the offsets readers begin at: 0, and the second half's start when
    a JSON export is read in two halves side by side.
    """

    def __init__(self, path: Path, starts: tuple[int, ...] = (0,)) -> None:
        self._path = os.path.realpath(path)
        self._starts = sorted({0, *starts})
        self._done: dict[int, int] = {}  # reader pid -> bytes it has read
        self._fds: dict[int, int] = {}

    def bytes_read(self) -> int | None:
        """Bytes read so far, or None when no reader's position could ever be seen."""
        for child in multiprocessing.active_children():
            if not child.name.startswith(READER_PREFIX) or child.pid is None:
                continue
            position = self._position(child.pid)
            if position is not None:
                start = max(s for s in self._starts if s <= position)
                self._done[child.pid] = max(self._done.get(child.pid, 0), position - start)
        if not self._done:
            return None
        return sum(self._done.values())

    def _position(self, pid: int) -> int | None:
        """The file offset of ``pid``'s descriptor open on the export, if it can be seen."""
        folder = f"/proc/{pid}/fd"
        known = self._fds.get(pid)
        try:
            names = [str(known)] if known is not None else os.listdir(folder)
        except OSError:
            return None
        for name in names:
            try:
                if os.readlink(f"{folder}/{name}") != self._path:
                    continue
                with open(f"/proc/{pid}/fdinfo/{name}") as info:
                    for line in info:
                        if line.startswith("pos:"):
                            self._fds[pid] = int(name)
                            return int(line.split()[1])
            except (OSError, ValueError):
                continue
        if known is not None:  # that descriptor closed: look through them all once more
            del self._fds[pid]
            return self._position(pid)
        return None
