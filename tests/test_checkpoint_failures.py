"""Failures outside any write's own work: the automatic checkpoint, long busy waits.

Neither may crash the writer. A crash there comes back on the next commit (the WAL is
still past the threshold, the lock still held), and a few of them escalate the whole
storage to StorageUnavailable for good.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import apsw
import pytest

import atlas_actors as atlas
from atlas_actors.actors.writer import WriterActor
from atlas_actors.errors import BusyError
from atlas_actors.faults import FaultyVFS


def _restarts(db: atlas.Storage) -> int:
    return next(c.restarts for c in db.supervisor.status().children if c.role == "writer")


@pytest.mark.parametrize("failure", [apsw.FullError, apsw.IOError], ids=["full", "io"])
def test_a_failing_automatic_checkpoint_leaves_the_writer_serving(
    open_storage: Callable[..., atlas.Storage], failure: type[apsw.Error]
) -> None:
    # Writes to the database file fail (a checkpoint copies pages there); appends to the
    # WAL, which every write needs, still succeed.
    vfs = FaultyVFS()
    db = open_storage(vfs=vfs.name, cache=False, checkpoint_frames=2, verify_on_restart=False)
    db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
    vfs.only = Path(db.path).name
    vfs.fail_writes = failure
    for _ in range(12):  # each commit past checkpoint_frames tries a checkpoint
        assert db.write("INSERT INTO t(v) VALUES (randomblob(3000))").rowcount == 1
    assert _restarts(db) == 0 and db.health().status != "failed"
    vfs.fail_writes = None
    frames, copied = db.wal.checkpoint("passive")  # copies what was left behind
    assert copied == frames > 0
    assert db.query("SELECT count(*) FROM t") == [(12,)]


def test_a_busy_wait_of_many_retries_ends_in_a_typed_busy_error(
    open_storage: Callable[..., atlas.Storage], db_path: Path
) -> None:
    # A tiny backoff cap makes SQLite call the busy handler thousands of times within
    # the busy timeout: 2 ** 1024 overflowed a float inside SQLite's callback, which
    # crashed the writer instead of reporting the lock.
    db = open_storage(busy_timeout=1.0, busy_backoff_base=0.0001, busy_backoff_cap=0.0002)
    db.execute("CREATE TABLE t(x)")
    other = apsw.Connection(str(db_path))
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(BusyError):  # (its deadline passes: the lock is still held)
            db.write("INSERT INTO t VALUES (1)", timeout=1.5)
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert _restarts(db) == 0
    assert db.write("INSERT INTO t VALUES (2)").rowcount == 1


def test_a_wal_past_its_size_limit_is_truncated_while_readers_keep_overlapping(
    open_storage: Callable[..., atlas.Storage], db_path: Path
) -> None:
    # Two connections (another process's, say) take turns reading, so one always holds a
    # read transaction: PASSIVE checkpoints never finish and the WAL never starts over.
    # Past wal_size_limit the writer truncates it (waiting a moment for old readers).
    limit = 256 * 1024
    db = open_storage(cache=False, wal_size_limit=limit, checkpoint_frames=20)
    db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
    stop = threading.Event()

    def overlapping_readers() -> None:
        first, second = (apsw.Connection(str(db_path)) for _ in range(2))
        first.execute("BEGIN")
        first.execute("SELECT count(*) FROM t").fetchall()
        while not stop.is_set():
            for opening, closing in ((second, first), (first, second)):
                opening.execute("BEGIN")
                opening.execute("SELECT count(*) FROM t").fetchall()
                closing.execute("COMMIT")
                time.sleep(0.02)
        first.close()
        second.close()

    readers = threading.Thread(target=overlapping_readers)
    readers.start()
    wal = Path(f"{db_path}-wal")
    went_past, came_back = False, False
    deadline = time.monotonic() + 5  # (a truncation waits, then backs off: ~1 s at most)
    try:
        n = 0
        while not came_back and time.monotonic() < deadline:
            db.write("INSERT INTO t(v) VALUES (randomblob(2000))")
            n += 1
            if n % 100 == 0:
                db.write("DELETE FROM t WHERE id <= ?", [n - 50])  # the table stays small
            size = wal.stat().st_size
            went_past = went_past or size > limit
            came_back = went_past and size < limit
    finally:
        stop.set()
        readers.join(10)
    assert went_past and came_back  # without truncation it only ever grows


@pytest.mark.parametrize("mode", ["truncate", "restart", "full"])
def test_an_explicit_checkpoint_held_up_by_a_snapshot_gives_up_soon_and_says_why(
    open_storage: Callable[..., atlas.Storage], mode: Literal["truncate", "restart", "full"]
) -> None:
    # TRUNCATE waits for readers on old frames while it holds the write lock: here this
    # storage's own repeatable_read snapshot. Not for the whole busy timeout (every
    # write waiting behind it), and not with an error blaming another process.
    db = open_storage(cache=False, busy_timeout=4.0)
    db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY)")
    db.write("INSERT INTO t DEFAULT VALUES")
    snapshot = db.transactions.begin(isolation="repeatable_read")
    snapshot.query("SELECT count(*) FROM t")  # pins a reader on the WAL as it is
    db.write("INSERT INTO t DEFAULT VALUES")  # the WAL moves past that snapshot
    waited: list[float] = []

    def write_meanwhile() -> None:
        started = time.monotonic()
        db.write("INSERT INTO t DEFAULT VALUES")
        waited.append(time.monotonic() - started)

    meanwhile = threading.Timer(0.2, write_meanwhile)
    meanwhile.start()
    started = time.monotonic()
    with pytest.raises(BusyError, match="readers still use the WAL"):
        db.wal.checkpoint(mode)
    assert time.monotonic() - started < 2.5
    meanwhile.join(10)
    assert waited and waited[0] < 2.5
    snapshot.rollback()
    assert db.wal.checkpoint("truncate") is not None  # no reader left: it finishes
    assert db.query("SELECT count(*) FROM t") == [(3,)]


def test_a_wal_limit_below_checkpoint_frames_pages_holds_without_readers(
    open_storage: Callable[..., atlas.Storage], db_path: Path
) -> None:
    """The WAL was checkpointed only every checkpoint_frames frames (1000 of 4 KiB): a
    256 KiB limit let it reach 4 MB with nobody reading."""
    limit = 256 * 1024
    db = open_storage(wal_size_limit=limit, synchronous="NORMAL", cache=False)
    db.execute("CREATE TABLE w(id INTEGER PRIMARY KEY, b BLOB)")
    largest = 0
    for _ in range(600):
        db.write("INSERT INTO w(b) VALUES (zeroblob(3000))")
        largest = max(largest, (db_path.parent / f"{db_path.name}-wal").stat().st_size)
    assert db.config.checkpoint_frames * 4096 > 10 * limit
    assert largest <= 1.1 * limit  # (the checkpoint comes after the commit that passes it)


def test_a_truncate_that_emptied_the_wal_puts_off_no_later_one(
    open_storage: Callable[..., atlas.Storage], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a TRUNCATE that readers outlasted backs off (it held the write lock for
    nothing). One that emptied the WAL did not: the next is due as soon as the WAL
    passes its limit again. Before, every truncation put the next off by nine times
    its own length, and short overlapping reads let the WAL reach 100x its limit."""
    calls: list[str] = []
    checkpoint = WriterActor._checkpoint

    def readers_in_the_way_of_passive(self: WriterActor, mode: str) -> tuple[int, int]:
        calls.append(mode)
        frames, copied = checkpoint(self, mode)
        return (frames, 0) if mode == "PASSIVE" else (frames, copied)  # as with a reader

    monkeypatch.setattr(WriterActor, "_checkpoint", readers_in_the_way_of_passive)
    db = open_storage(wal_size_limit=64 * 1024, synchronous="NORMAL", cache=False)
    db.execute("CREATE TABLE w(id INTEGER PRIMARY KEY, b BLOB)")
    for _ in range(60):
        db.write("INSERT INTO w(b) VALUES (zeroblob(3000))")
    writer = db._writer_actor()
    assert writer is not None
    assert "TRUNCATE" in calls  # (it ran, and emptied the WAL: nobody reads)
    assert writer._truncate_after == 0.0


def test_after_a_truncate_the_next_checkpoint_comes_within_the_limit(
    open_storage: Callable[..., atlas.Storage], db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A TRUNCATE leaves 0 frames, and the next checkpoint was due checkpoint_frames
    (1000) frames later: with reads keeping each PASSIVE from finishing, the WAL went
    from empty to 16 times a 256 KiB limit between two TRUNCATEs, which all succeeded."""
    checkpoint = WriterActor._checkpoint

    def readers_in_the_way_of_passive(self: WriterActor, mode: str) -> tuple[int, int]:
        frames, copied = checkpoint(self, mode)
        return (frames, 0) if mode == "PASSIVE" else (frames, copied)  # as with a reader

    monkeypatch.setattr(WriterActor, "_checkpoint", readers_in_the_way_of_passive)
    limit = 256 * 1024
    db = open_storage(wal_size_limit=limit, synchronous="NORMAL", cache=False)
    db.execute("CREATE TABLE w(id INTEGER PRIMARY KEY, b BLOB)")
    wal = Path(f"{db_path}-wal")
    largest = 0
    for _ in range(600):  # (two or three frames a commit: it passes the limit at 63)
        db.write("INSERT INTO w(b) VALUES (zeroblob(6000))")
        largest = max(largest, wal.stat().st_size)
    assert largest < 2.2 * limit, f"the WAL reached {largest / limit:.1f} times its limit"


def test_the_truncate_finishes_while_this_storage_s_reads_keep_starting(
    open_storage: Callable[..., atlas.Storage], monkeypatch: pytest.MonkeyPatch
) -> None:
    """16 threads whose reads (a few ms in SQLite each) overlap all the time: SQLite's
    read marks were never all free, reads that began shared the old ones, and most
    automatic TRUNCATEs were outlasted (1 to 3 of 4 to 6 finished in 3 s; the WAL
    stayed at 10-16 times its limit). New reads now wait while a TRUNCATE runs."""
    outcomes: list[bool] = []
    truncate = WriterActor._truncate_wal

    def counted(self: WriterActor) -> None:
        truncate(self)
        outcomes.append(self._truncate_after == 0.0)  # (0: it emptied the WAL)

    monkeypatch.setattr(WriterActor, "_truncate_wal", counted)
    db = open_storage(wal_size_limit=256 * 1024, synchronous="NORMAL", cache=False)
    db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, b BLOB)")
    sql = (
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 50000) "
        "SELECT count(*) FROM c, (SELECT count(*) FROM t)"
    )
    stop = threading.Event()
    failed: list[BaseException] = []

    def read() -> None:
        try:
            while not stop.is_set():
                db.query(sql)
        except BaseException as error:
            failed.append(error)

    readers = [threading.Thread(target=read) for _ in range(16)]
    for thread in readers:
        thread.start()
    try:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            db.write("INSERT INTO t(b) VALUES (randomblob(2500))")
    finally:
        stop.set()
        for thread in readers:
            thread.join(10)
    assert not failed  # a held read waits, never fails
    finished = sum(outcomes)
    # (One outlasted now and then, a GC pause say, backs off by design: ~1 s.)
    assert finished >= 6 and finished >= 2 * (len(outcomes) - finished), outcomes


def test_a_read_held_by_the_truncation_waits_briefly_and_succeeds(
    open_storage: Callable[..., atlas.Storage],
) -> None:
    """While the writer truncates the WAL, new reads wait: until it ends, at most the
    hold's seconds, at most half the read's timeout; then they run as usual."""
    db = open_storage(cache=False)
    db.execute("CREATE TABLE t(x)")
    db.write("INSERT INTO t VALUES (1)")
    pool = db.pool

    def timed_read(**options: float) -> float:
        started = time.monotonic()
        assert db.query("SELECT x FROM t", **options) == [(1,)]
        return time.monotonic() - started

    for _ in range(3):
        timed_read()  # (past the statement's first runs: the fast path)
    with pool.hold_reads(0.3):
        assert 0.25 < timed_read() < 1.0  # the hold never ended: its 0.3 s
        assert timed_read(timeout=0.1) < 0.1  # half its own timeout at most
        ended = threading.Timer(0.1, lambda: pool.held.ended.set() if pool.held else None)
        ended.start()
        assert timed_read() < 0.25  # the hold ended after 0.1 s: so did the wait
        ended.join()
    assert timed_read() < 0.1  # no hold: no wait
    # A statement on a pool.acquire() lease starts a read transaction too: it waits
    # alike (it ignored the hold, and leased reads kept the WAL from being truncated).
    with pool.connection() as lease:
        started = time.monotonic()
        with pool.hold_reads(0.3):
            assert lease.execute("SELECT x FROM t") == [(1,)]
        assert time.monotonic() - started > 0.25
        lease.execute("BEGIN")
        lease.execute("SELECT x FROM t")
        with pool.hold_reads(0.3):  # inside its own read transaction: no wait
            started = time.monotonic()
            assert lease.execute("SELECT x FROM t") == [(1,)]
            assert time.monotonic() - started < 0.1
        lease.execute("COMMIT")
