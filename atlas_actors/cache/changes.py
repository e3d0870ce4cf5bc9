"""Noticing commits made by other processes, cheaply enough to check on every read.

SQLite's wal-index header (the ``-shm`` file of a WAL database) holds ``iChange``, a
counter every write transaction increments, whichever connection or process made it
(https://sqlite.org/walformat.html, "the WAL-index header"). Reading those 4 bytes
from a mapping of the file costs a memory read. This storage's own commits are counted
as they happen, so

    external commits = (iChange now - iChange last seen) - own commits since

and any external commit means the cache cannot know which tables changed: it drops
everything. The accounting is exact in one direction only, the safe one: an own commit
that writes nothing is never counted, so the detector may report a change that was
ours (a needless drop), never miss one that was not.

The writer calls :meth:`ExternalChanges.writer_holds_lock` right after ``BEGIN
IMMEDIATE`` (nobody else can commit until it commits), :meth:`before_commit` just
before its ``COMMIT`` and :meth:`after_commit` right after; readers call :meth:`check`.
A write transaction moves the counter by exactly one when it writes WAL frames and not
at all otherwise, and SQLite's WAL hook tells the writer which it was; if it wrote
nothing but a reader already took some increment for the announced one, that increment
was another process's, and ``after_commit`` says so.
"""

from __future__ import annotations

import mmap
import os
import struct
import threading
from collections.abc import Callable

__all__ = ["ExternalChanges", "ShmCounter", "shm_counter"]

_ICHANGE = struct.Struct("=I")  # native order, at offset 8 of the first header copy
_ICHANGE_OFFSET = 8


class ShmCounter:
    """Reads the wal-index ``iChange`` of a WAL database; close it with the storage.

    A read-only shared mapping of the ``-shm`` file: a plain memory read, which keeps
    the GIL (a ``pread`` per read would release it and invite a thread switch on every
    cached read). SQLite only truncates the file when no connection holds it open, and
    this storage holds connections open for as long as it reads the counter.

    The file descriptor stays open until :meth:`close`, after the storage's connections
    have closed: POSIX drops *every* lock a process holds on a file when it closes *any*
    descriptor of it, and SQLite's shared lock on the ``-shm`` file is what tells other
    processes that this one uses the wal-index (without it, the next process to open the
    database rebuilds the wal-index under our feet).
    """

    def __init__(self, database: str) -> None:
        self._fd = os.open(f"{database}-shm", os.O_RDONLY)
        try:
            self._map = mmap.mmap(self._fd, 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as error:
            os.close(self._fd)
            raise OSError(f"cannot map the wal-index: {error}") from error
        if len(self._map) < _ICHANGE_OFFSET + 4:
            self.close()
            raise OSError("the wal-index is too short to hold a header")
        self._unpack = _ICHANGE.unpack_from

    def __call__(self) -> int:
        """The counter's current value."""
        value: int = self._unpack(self._map, _ICHANGE_OFFSET)[0]
        return value

    def close(self) -> None:
        """Unmap and close the file (only once the storage's connections are closed)."""
        self._map.close()
        os.close(self._fd)


def shm_counter(database: str) -> ShmCounter | None:
    """A reader of ``database``'s wal-index change counter, or None without a wal-index."""
    try:
        counter = ShmCounter(database)
    except OSError:
        return None
    return counter


class ExternalChanges:
    """Counts commits not made by this storage; thread-safe."""

    def __init__(self, counter: Callable[[], int]) -> None:
        self._counter = counter
        self._lock = threading.Lock()
        self._seen = counter()
        self._own = 0

    def check(self) -> bool:
        """True if another process committed since the last check (or writer sync)."""
        value = self._counter()
        if value == self._seen:
            return False
        with self._lock:
            return self._advance(value)

    def writer_holds_lock(self) -> bool:
        """The writer holds the write lock: settle the count; True if others committed."""
        with self._lock:
            return self._advance(self._counter())

    def before_commit(self) -> None:
        """The writer (holding the write lock) will COMMIT: announce one increment."""
        with self._lock:
            self._own += 1

    def after_commit(self, wrote: bool) -> bool:
        """Settle the announcement (``wrote``: the WAL hook fired for the COMMIT).

        True if a reader took another process's commit for the announced one.
        """
        if wrote:
            return False  # ours happened; readers account for it as they see it
        with self._lock:
            if self._own > 0:
                self._own -= 1  # nothing was written: withdraw the announcement
                return False
            return True

    def _advance(self, value: int) -> bool:
        delta = (value - self._seen) & 0xFFFFFFFF
        self._seen = value
        ours = min(delta, self._own)
        self._own -= ours
        return delta > ours
