"""How far the reading processes are into their export file, for a progress bar.

A view's reader is a child process of the load (see pipeline.py, which names them
``otc-read-*``); the position of its open file is in ``/proc/<pid>/fdinfo`` on Linux,
so the load learns how many bytes were read without a word from the reader.
Elsewhere, or if readers cannot be seen, the answer is None and a progress
display shows counts only. An API body's progress comes from the reader itself,
through a :class:`BodyMeter` it inherits.
"""

from __future__ import annotations

import mmap
import multiprocessing
import os
import struct
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


class BodyMeter:
    """Bytes of an API response body received so far, and its Content-Length, if any.

    The loading process makes one (see :func:`install_body_meter`) before its reader
    forks; the reader's HTTP client writes into it: a shared anonymous page, so the
    figures cross the fork with no message and no lock (two 8-byte numbers, written
    by one process, read by the other).
    """

    def __init__(self) -> None:
        self._shared = mmap.mmap(-1, 16)
        self.received(0, None)

    def received(self, done: int, total: int | None) -> None:
        """The reader's side: ``done`` bytes of a body of ``total`` (None: not said)."""
        struct.pack_into("qq", self._shared, 0, done, -1 if total is None else total)

    def bytes_read(self) -> int:
        done, _ = struct.unpack_from("qq", self._shared, 0)
        return int(done)

    def size(self) -> int | None:
        """The body's Content-Length, once the response has said it."""
        _, total = struct.unpack_from("qq", self._shared, 0)
        return None if total < 0 else int(total)


_body_meter: BodyMeter | None = None


def install_body_meter() -> BodyMeter:
    """A meter for the next API body this process (or a reader it forks) receives."""
    global _body_meter
    _body_meter = BodyMeter()
    return _body_meter


def body_meter() -> BodyMeter | None:
    """The meter a reader reports its body's progress to (None: nobody is watching)."""
    return _body_meter
