"""Noticing commits made by other processes, cheaply enough to check on every read.

SQLite's wal-index header (the ``-shm`` file of a WAL database) holds ``iChange``, a
counter every write transaction increments, whichever connection or process made it
(https://sqlite.org/walformat.html, "the WAL-index header"). Reading those 4 bytes
from a mapping of the file costs a memory read. This storage's own commits are counted
as they happen, so

    external commits = (iChange now - iChange last seen) - own commits since

and any external commit means the cache cannot know which tables changed: it drops
everything. The accounting errs in one direction only, the safe one: a step it cannot
attribute counts as another process's, so the detector may report a change that was
ours (a needless drop), never miss one that was not.

The writer calls :meth:`ExternalChanges.writer_holds_lock` right after ``BEGIN
IMMEDIATE`` (nobody else can commit until it commits), :meth:`before_commit` just
before its ``COMMIT`` and :meth:`after_commit` right after; readers call :meth:`moved` (a
memory read and a comparison: it runs on every cached read) and, when it did, :meth:`settle`
with the cache's drop. Every path drops before the counter's new value is published,
so no reader can take the published value as "nothing new" while old entries remain.

A write transaction moves the counter by exactly one when it writes WAL frames and not
at all otherwise, and SQLite's WAL hook tells the writer which it was, after the COMMIT
released the write lock, when another process may already have committed. So the one
step past the value announced by :meth:`before_commit` is unknown until
:meth:`after_commit`: a reader that sees only that step (it may be another process's
commit behind one of ours that wrote nothing) waits for the writer to settle it, a
matter of microseconds; one that sees more drops everything, which covers that step
whatever it was, and so does one whose wait runs out (a writer that died after its
COMMIT).
"""

from __future__ import annotations

import logging
import mmap
import os
import struct
import threading
import time
from collections.abc import Callable

import apsw

from atlas_actors.connection import raw_connection

__all__ = ["ExternalChanges", "ShmCounter", "database_file"]

WRITER_SETTLES = 0.05
"""Seconds a reader waits, at most, for the writer to settle a step that may be its COMMIT."""

_ICHANGE = struct.Struct("=I")  # native order, at offset 8 of the first header copy
# The wal-index header (https://sqlite.org/walformat.html#the_wal_index_file_format):
# two copies of WalIndexHdr (48 bytes each), then WalCkptInfo, whose first field is
# nBackfill; native byte order.
_HEADER_BYTES = 48
_HEADER = struct.Struct("=IIIBBHI")  # iVersion, unused, iChange, isInit, order, page, mxFrame
_FRAME = struct.Struct("=I")
_BACKFILL_OFFSET = 2 * _HEADER_BYTES
_WAL_INDEX_VERSION = 3007000
_ICHANGE_OFFSET = 8
_MASK = 0xFFFFFFFF
_EMPTY_WAL_WAIT = 0.2
"""Seconds a close waits, at most, for other processes' readers to leave the WAL."""

log = logging.getLogger(__name__)


class ShmCounter:
    """Reads the wal-index ``iChange`` of a WAL database; close it with the storage.

    A read-only shared mapping of the ``-shm`` file: a plain memory read, which keeps
    the GIL (a ``pread`` per read would release it and invite a thread switch on every
    cached read).

    It holds a connection of its own to the database, from before the mapping until
    :meth:`close`, after the storage's connections: while one is open, the wal-index
    stays the one every process uses (SQLite deletes it, and the next process to open
    the database builds another, only when the last connection closes; this one keeps
    its shared lock on it), so no commit can happen without moving the counter. The
    storage's last connection closing no longer leaves a moment for another process to
    open, commit and close unseen before the cache records the files (``actors/cache.py``).

    The file descriptor stays open until :meth:`close`, after that connection has
    closed: POSIX drops *every* lock a process holds on a file when it closes *any*
    descriptor of it, and SQLite's shared lock on the ``-shm`` file is what tells other
    processes that this one uses the wal-index.
    """

    def __init__(self, database: str, vfs: str | None = None) -> None:
        self._hold = _hold(database, vfs)
        # The file SQLite opened (``database`` may be a relative path, a symbolic link
        # or a ``file:`` URI): its wal-index is next to it.
        file = self._hold.filename
        if not file:
            self._hold.close()
            raise OSError(f"{database} is not a database file: it has no wal-index")
        self.file: str = file
        """The database file SQLite opened (absolute): its -wal and -shm are next to it."""
        self._path = f"{file}-shm"
        try:
            self._fd = os.open(self._path, os.O_RDONLY)
        except OSError:
            self._hold.close()
            raise
        try:
            self._map = mmap.mmap(self._fd, 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as error:
            self._hold.close()
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

    def schema_version(self) -> int:
        """The database's schema cookie, read through the held connection.

        Asked when another process committed (rarely, then): it may have changed the
        schema, which this storage's own writer notices only at its next write.
        """
        return int(self._hold.pragma("schema_version"))

    def frames(self, tries: int = 3) -> int | None:
        """Frames in the WAL not yet checkpointed, as the wal-index says: every process's.

        ``mxFrame`` (the last valid frame) unless ``nBackfill`` (frames checkpointed)
        reached it, then 0: the next commit starts the WAL over. None if the header is
        not initialised, or a writer kept changing it (SQLite's readers compare the two
        copies of the header and retry, as this does).
        """
        data = self._map
        try:
            if len(data) < _BACKFILL_OFFSET + 4:
                return None
            return self._frames(data, tries)
        except ValueError:
            return None  # unmapped meanwhile: the storage closed

    @staticmethod
    def _frames(data: mmap.mmap, tries: int) -> int | None:
        for _ in range(tries):
            header = data[:_HEADER_BYTES]
            if header != data[_HEADER_BYTES : 2 * _HEADER_BYTES]:
                continue  # a writer is between updating the two copies
            version, _unused, _change, initialised, _order, _page, last = _HEADER.unpack(
                header[: _HEADER.size]
            )
            if version != _WAL_INDEX_VERSION or not initialised:
                return None
            (backfilled,) = _FRAME.unpack_from(data, _BACKFILL_OFFSET)
            return 0 if backfilled >= last else int(last)
        return None

    def empty_wal(self, wait: float = _EMPTY_WAL_WAIT) -> bool:
        """Copy the WAL into the database file and truncate it (a TRUNCATE checkpoint).

        Through the held connection, once the storage's own have closed. False if it
        could not finish: other processes' readers on the WAL for longer than ``wait``
        seconds, or another process checkpointing.
        """
        self._hold.set_busy_timeout(int(wait * 1000))
        try:
            self._hold.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)
        except apsw.Error as error:
            log.info("the WAL could not be emptied at close: %s", error)
            return False
        return True

    def close(self) -> None:
        """Unmap, close the held connection, close the file (after the storage's connections).

        If the held connection is the database's last, SQLite deletes the WAL (and the
        ``-shm``) as it closes: after :meth:`empty_wal`, without touching the database file.
        """
        self._map.close()
        try:
            self._hold.close()
        except apsw.Error as error:  # (a failing VFS: the storage closes all the same)
            log.warning("closing the wal-index's held connection failed: %s", error)
        finally:
            os.close(self._fd)


def _hold(database: str, vfs: str | None) -> apsw.Connection:
    """A connection that has read ``database`` once, so it holds the wal-index open.

    Through the storage's ``vfs``, as its other connections: a VFS may be what makes the
    file readable at all (one that encrypts, say).
    """
    try:
        connection = raw_connection(
            database, apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_URI, vfs
        )
    except apsw.Error as error:
        raise OSError(f"cannot open {database}: {error}") from error
    try:
        connection.set_busy_timeout(5000)
        # A read transaction opens the wal-index (a WAL database's connection keeps it
        # and its shared lock on the file until it closes).
        connection.execute("PRAGMA schema_version").fetchall()
    except apsw.Error as error:
        connection.close()
        raise OSError(f"cannot read {database}: {error}") from error
    return connection


def database_file(database: str, vfs: str | None = None) -> str | None:
    """The absolute name of the file SQLite opens for ``database``; None if there is none.

    ``database`` as the storage's connections open it: a path, relative or through a
    symbolic link, or a ``file:`` URI (with or without an authority, percent-encoded,
    with parameters). SQLite resolves it (``sqlite3_db_filename``: the VFS's full path
    name), so the ``-wal`` and ``-shm`` files are this name's, and nothing here parses
    a URI. None for an in-memory or temporary database, or a name that cannot be
    opened (the writer's open says why).

    The file is created if missing, as the writer's open would a moment later.
    """
    flags = apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE | apsw.SQLITE_OPEN_URI
    try:
        connection = raw_connection(database, flags, vfs)
    except apsw.Error as error:
        log.debug("cannot open %s to learn its file name: %s", database, error)
        return None
    try:
        return connection.filename or None
    finally:
        connection.close()


class ExternalChanges:
    """Counts commits not made by this storage; thread-safe."""

    def __init__(self, counter: Callable[[], int], writer_settles: float = WRITER_SETTLES) -> None:
        self._counter = counter
        self.counter = counter
        """What it reads (a :class:`ShmCounter` in a storage)."""
        self._writer_settles = writer_settles
        self._lock = threading.Lock()
        self._settled = threading.Condition(self._lock)
        self._seen = counter()
        self._pending: int | None = None
        # The counter's value when the writer announced its COMMIT, until it settles
        # it: the step from there is ours if that COMMIT wrote frames, else another's.

    def moved(self) -> bool:
        """True if the counter moved since the last settled value (no lock: the fast path).

        The move may be this storage's own commit; :meth:`settle` tells.
        """
        return self._counter() != self._seen

    def settle(self, on_change: Callable[[], object] | None = None) -> bool:
        """Account for the counter's moves; True if another process committed.

        ``on_change`` (dropping the cache) runs *before* the new value is published,
        under the lock: a reader that finds the counter equal to the published value
        (:meth:`moved` is False) is then sure the drop for every commit up to it is
        done, and one that finds it different waits here for the drop in progress.
        Without ``on_change``, the caller drops after the return, and a reader may hit
        an old entry until it has.

        A single move that may be the writer's announced COMMIT is waited on until the
        writer settles it (:meth:`after_commit`), for ``writer_settles`` seconds at most;
        then it is taken for another process's.
        """
        with self._lock:
            value = self._counter()
            deadline = None
            while self._unsure(value):
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self._writer_settles
                elif now >= deadline:
                    self._pending = None  # never settled: count it as another's
                    break
                self._settled.wait(deadline - now)
                value = self._counter()
            return self._settle(value, on_change)

    def check(self, on_change: Callable[[], object] | None = None) -> bool:
        """True if another process committed since the last check (or writer sync).

        :meth:`moved`, then :meth:`settle` if it did (``on_change``: as there).
        """
        if self._counter() == self._seen:
            return False
        return self.settle(on_change)

    def writer_holds_lock(self, on_change: Callable[[], object] | None = None) -> bool:
        """The writer holds the write lock: settle the count; True if others committed.

        An announcement still pending here was never settled (a writer that died after
        its COMMIT): its step is taken for another process's. ``on_change``: as for
        :meth:`settle`.
        """
        with self._lock:
            self._pending = None
            self._settled.notify_all()
            return self._settle(self._counter(), on_change)

    def before_commit(self) -> None:
        """The writer (holding the write lock) will COMMIT: announce its step."""
        with self._lock:
            self._pending = self._counter()

    def after_commit(self, wrote: bool, on_change: Callable[[], object] | None = None) -> bool:
        """Settle the announcement (``wrote``: the WAL hook fired for the COMMIT).

        The announced step is ours if the COMMIT wrote, another process's if not; every
        other move since the last settled value is another's. True if there was any:
        ``on_change`` then ran before the new value was published (as for :meth:`settle`).
        """
        with self._lock:
            pending, self._pending = self._pending, None
            self._settled.notify_all()
            return self._settle(self._counter(), on_change, pending if wrote else None)

    def _unsure(self, value: int) -> bool:
        """True if the only move up to ``value`` is the announced step (under the lock)."""
        pending = self._pending
        return pending is not None and pending == self._seen and value == (pending + 1) & _MASK

    def _settle(
        self, value: int, on_change: Callable[[], object] | None, own: int | None = None
    ) -> bool:
        # Under the lock, and not _unsure(value). Nothing is published until on_change
        # has returned (if it raises, the next check tries again). ``own``: the value
        # our step, known to have been written, starts from.
        seen = self._seen
        delta = (value - seen) & _MASK
        if not delta:
            return False
        if own is not None and (own - seen) & _MASK < delta and delta == 1:
            self._seen = value  # just our own step
            return False
        if on_change is not None:
            on_change()
        if self._pending is not None and (self._pending - seen) & _MASK < delta:
            self._pending = None  # whichever the announced step was, the drop covers it
        self._seen = value
        return True
