"""Leases of ``pool.acquire()`` that their holder forgets come back to the pool.

* A lease dropped without ``release()`` (garbage-collected) is given back on the tick,
  its open read transaction rolled back, with a warning naming the acquiring thread.
* A lease whose acquiring thread ended is taken back on the tick (nobody can use it as
  documented any more); later calls on it raise ``ValidationError``.
* A read transaction (``BEGIN``) kept open on a lease past ``transaction_timeout`` is
  rolled back on the tick so that the WAL can be checkpointed (DESIGN.md: a bounded
  WAL); the owner's next call raises ``TransactionTimeout``, never a silent autocommit
  read. Without either, the pool ran out of readers for good, or the WAL grew without
  bound behind one ``BEGIN``.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import atlas_actors as atlas
from atlas_actors.actors.pool import PooledConnection
from atlas_actors.errors import OperationTimeout, TransactionTimeout, ValidationError
from tests.helpers import wait_until

Open = Callable[..., atlas.Storage]


def _two_readers(open_storage: Open, **options: Any) -> atlas.Storage:
    options.setdefault("readers", 2)
    options.setdefault("max_readers", 2)
    db = open_storage(cache=False, **options)
    db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    return db


def _count(db: atlas.Storage) -> int:
    return int(db.query("SELECT count(*) AS n FROM t", timeout=2.0)[0].n)


def _lease_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "atlas_actors.actors.pool" and r.levelno == logging.WARNING
    ]


# -- defect 1: leases never released ----------------------------------------------------


def test_a_lease_dropped_unreleased_goes_back_rolled_back(
    open_storage: Open, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="atlas_actors.actors.pool")
    db = _two_readers(open_storage)
    lease = db.pool.acquire()
    lease.execute("BEGIN")
    assert lease.execute("SELECT count(*) AS n FROM t")[0].n == 0  # a snapshot, left open
    assert db.pool.status().active == 1
    del lease
    gc.collect()

    assert wait_until(lambda: db.pool.status().active == 0, timeout=3)
    (warning,) = [m for m in _lease_warnings(caplog) if "dropped without release()" in m]
    assert "MainThread" in warning  # where it was acquired
    # Its snapshot was rolled back: every connection (both are free) sees new writes.
    db.write("INSERT INTO t(v) VALUES ('new')")
    first, second = db.pool.acquire(), db.pool.acquire()
    try:
        assert first.execute("SELECT count(*) AS n FROM t")[0].n == 1
        assert second.execute("SELECT count(*) AS n FROM t")[0].n == 1
    finally:
        first.release()
        second.release()


def test_leases_leaked_by_ended_threads_do_not_starve_the_pool(
    open_storage: Open, caplog: pytest.LogCaptureFixture
) -> None:
    """Every connection acquired by a thread that ended: reads go on (they timed out)."""
    caplog.set_level(logging.WARNING, logger="atlas_actors.actors.pool")
    db = _two_readers(open_storage, default_timeout=2.0)

    def leak() -> None:
        db.pool.acquire().execute("SELECT 1")  # never released

    for index in range(2):
        thread = threading.Thread(target=leak, name=f"leaker-{index}")
        thread.start()
        thread.join()
    gc.collect()  # (CPython frees them with the frames already; any interpreter: now)

    assert wait_until(lambda: db.pool.status().active == 0, timeout=3)
    assert _count(db) == 0  # within its timeout: a reader is free
    warnings = "\n".join(_lease_warnings(caplog))
    assert "leaker-0" in warnings and "leaker-1" in warnings


def test_a_lease_whose_thread_ended_is_taken_back_and_refuses_later_calls(
    open_storage: Open, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="atlas_actors.actors.pool")
    db = _two_readers(open_storage)
    kept: list[PooledConnection] = []

    def acquire() -> None:
        lease = db.pool.acquire()
        lease.execute("BEGIN")
        lease.execute("SELECT count(*) FROM t")
        kept.append(lease)  # still referenced once this thread ends

    thread = threading.Thread(target=acquire, name="short-lived")
    thread.start()
    thread.join()
    (lease,) = kept

    assert wait_until(lambda: db.pool.status().active == 0, timeout=3)
    assert any("short-lived" in m and "ended" in m for m in _lease_warnings(caplog))
    with pytest.raises(ValidationError, match="thread that acquired it"):
        lease.execute("SELECT 1")
    with pytest.raises(ValidationError, match="thread that acquired it"):
        _ = lease.id
    lease.release()  # harmless
    # The connection it had serves others, with no snapshot of the dead thread's left.
    db.write("INSERT INTO t(v) VALUES ('new')")
    with db.pool.connection() as first, db.pool.connection() as second:
        assert first.execute("SELECT count(*) AS n FROM t")[0].n == 1
        assert second.execute("SELECT count(*) AS n FROM t")[0].n == 1


def test_a_lease_released_by_its_thread_is_left_alone(
    open_storage: Open, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="atlas_actors.actors.pool")
    db = _two_readers(open_storage)

    def work() -> None:
        with db.pool.connection() as lease:
            lease.execute("SELECT 1")

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    held = db.pool.acquire()  # the main thread's: alive, held across ticks
    try:
        time.sleep(0.3)
        assert db.pool.status().active == 1
        assert held.execute("SELECT 1 AS x")[0].x == 1
    finally:
        held.release()
    assert db.pool.status().active == 0
    assert _lease_warnings(caplog) == []


# -- defect 2: a read transaction on a lease pins the WAL --------------------------------


def _wal_size(db: atlas.Storage) -> int:
    return os.path.getsize(f"{db.path}-wal")


def _write_batch(db: atlas.Storage) -> None:
    db.write_all([("INSERT INTO t(v) VALUES (?)", ["x" * 1000])] * 50)


def test_a_read_transaction_past_transaction_timeout_is_ended_and_the_wal_shrinks(
    open_storage: Open, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="atlas_actors.actors.pool")
    limit = 128 * 1024
    db = _two_readers(open_storage, transaction_timeout=0.3, wal_size_limit=limit)
    lease = db.pool.acquire()
    lease.execute("BEGIN")
    assert lease.execute("SELECT count(*) AS n FROM t")[0].n == 0

    for _ in range(10):
        _write_batch(db)  # well within the timeout: the snapshot holds the WAL back
    assert _wal_size(db) > limit
    assert lease.execute("SELECT count(*) AS n FROM t")[0].n == 0  # still its snapshot

    assert wait_until(lambda: db.pool.status().active == 0, timeout=3)
    for _ in range(3):  # every later call: the typed timeout, never an autocommit read
        with pytest.raises(TransactionTimeout, match="past transaction_timeout"):
            lease.execute("SELECT count(*) AS n FROM t")
    lease.release()  # harmless
    with pytest.raises(TransactionTimeout):
        lease.execute("SELECT 1")
    assert any("read transaction open" in m for m in _lease_warnings(caplog))

    # Nothing pins the WAL now: the writer truncates it back under its limit.
    def shrunk() -> bool:
        _write_batch(db)
        return _wal_size(db) <= limit

    assert wait_until(shrunk, timeout=10)
    assert _count(db) > 500


def test_a_statement_running_past_the_timeout_is_not_cut_short(open_storage: Open) -> None:
    """The tick never ends a snapshot under a running statement: the next call fails."""
    db = _two_readers(open_storage, transaction_timeout=0.2)
    slow = (
        "SELECT (SELECT count(*) FROM t) AS n, (WITH RECURSIVE c(x) AS (SELECT 1 "
        "UNION ALL SELECT x + 1 FROM c WHERE x < 3000000) SELECT count(*) FROM c) AS m"
    )
    lease = db.pool.acquire()
    lease.execute("BEGIN")
    lease.execute("SELECT count(*) FROM t")
    time.sleep(0.1)
    started = time.monotonic()
    row = lease.execute(slow)[0]  # runs past the timeout, over several ticks
    assert time.monotonic() - started > 0.2
    assert (row.n, row.m) == (0, 3000000)
    with pytest.raises(TransactionTimeout, match="past transaction_timeout"):
        lease.execute("SELECT 1")
    assert wait_until(lambda: db.pool.status().active == 0, timeout=3)


def test_a_lease_without_a_read_transaction_is_not_timed_out(open_storage: Open) -> None:
    db = _two_readers(open_storage, transaction_timeout=0.2)
    with db.pool.connection() as lease:
        lease.execute("SELECT count(*) FROM t")
        lease.execute("BEGIN")
        lease.execute("SELECT count(*) FROM t")
        lease.execute("COMMIT")  # ended in time
        time.sleep(0.5)  # several ticks, past the timeout
        db.write("INSERT INTO t(v) VALUES ('new')")
        assert lease.execute("SELECT count(*) AS n FROM t")[0].n == 1
        assert db.pool.status().active == 1


def test_a_transactions_own_snapshot_timeout_still_ends_it(open_storage: Open) -> None:
    """A repeatable_read transaction's reader is a lease too: it fails as before."""
    db = _two_readers(open_storage, transaction_timeout=0.3)
    tx = db.transactions.begin("repeatable_read")
    assert tx.query("SELECT count(*) AS n FROM t")[0].n == 0
    assert wait_until(lambda: tx.state == "failed", timeout=3)
    with pytest.raises(TransactionTimeout, match="kept its snapshot"):
        tx.query("SELECT count(*) AS n FROM t")
    assert db.pool.status().active == 0


def test_a_transaction_with_a_longer_timeout_keeps_its_snapshot(open_storage: Open) -> None:
    db = _two_readers(open_storage, transaction_timeout=0.2)
    with db.transaction("repeatable_read", timeout=30) as tx:
        assert tx.query("SELECT count(*) AS n FROM t")[0].n == 0
        db.write("INSERT INTO t(v) VALUES ('later')")
        time.sleep(0.5)
        assert tx.query("SELECT count(*) AS n FROM t")[0].n == 0  # the same snapshot
    assert tx.state == "committed"


def test_a_transaction_handed_on_by_an_ended_thread_keeps_its_reader(
    open_storage: Open,
) -> None:
    """A transaction's reader is the transaction's: another thread may finish it."""
    db = _two_readers(open_storage)
    begun: list[Any] = []

    def begin() -> None:
        tx = db.transactions.begin("repeatable_read", timeout=30)
        tx.query("SELECT count(*) AS n FROM t")
        begun.append(tx)

    thread = threading.Thread(target=begin)
    thread.start()
    thread.join()
    (tx,) = begun
    db.write("INSERT INTO t(v) VALUES ('later')")
    time.sleep(0.3)  # several ticks
    assert db.pool.status().active == 1  # still pinned
    assert tx.query("SELECT count(*) AS n FROM t")[0].n == 0  # the same snapshot
    tx.commit()
    assert tx.state == "committed"
    assert db.pool.status().active == 0


def test_a_waiter_gets_a_connection_a_dropped_lease_gave_back(open_storage: Open) -> None:
    """A read waiting for a reader is served once the tick takes a lost lease back."""
    db = _two_readers(open_storage, default_timeout=3.0)
    held = db.pool.acquire()
    lost = db.pool.acquire()
    try:
        with pytest.raises(OperationTimeout):
            db.pool.acquire(timeout=0.05)  # none free, none can be added
        result: list[int] = []
        reader = threading.Thread(target=lambda: result.append(_count(db)))
        reader.start()
        time.sleep(0.1)  # queued for a reader
        del lost
        gc.collect()
        reader.join(5)
        assert result == [0]
    finally:
        held.release()


def test_a_stale_look_at_a_dropped_lease_never_takes_back_the_next_ones_connection(
    open_storage: Open,
) -> None:
    """The tick copies the leases, then acts on each: a lease released and dropped in
    between, its connection lent again meanwhile, was given back from under its new
    borrower, and the pool lent that connection to a third caller too."""
    db = open_storage(readers=1, max_readers=1, cache=False)
    pool = db.pool
    first = pool.acquire()
    connection = first._live()
    seen = pool._lent[connection]  # what the tick's copy holds
    first.release()
    del first
    gc.collect()
    assert seen[0]() is None  # the lease the tick saw is gone
    second = pool.acquire(timeout=1)  # the same (only) connection, lent again
    assert second._live() is connection
    pool.give_back(connection, "dropped without release()", seen[1], seen[0])
    assert pool.status().active == 1
    with pytest.raises(OperationTimeout):
        pool.acquire(timeout=0.2)  # still the second's, not lent to a third caller
    assert second.execute("SELECT 1 AS x")[0].x == 1
    second.release()


# -- release() of something that is no lease ---------------------------------------------


def test_release_of_anything_but_a_lease_raises_validation_error(open_storage: Open) -> None:
    """``pool.release(None)`` (or a str, or another pool's connection) raised an untyped
    AttributeError from inside the pool."""
    db = _two_readers(open_storage)
    other = open_storage(db.path + "-other", readers=1, max_readers=1, cache=False)
    foreign = other.pool.acquire()
    before = db.pool.status()
    for wrong in (None, "reader-0#2", 42, object(), db.writer_connection, foreign._live()):
        with pytest.raises(ValidationError, match=r"pass the object pool\.acquire\(\) returned"):
            db.pool.release(wrong)  # type: ignore[arg-type]
    assert db.pool.status() == before
    lease = db.pool.acquire()
    db.pool.release(lease)  # the lease itself, as documented
    db.pool.release(lease)  # (twice is harmless)
    assert db.pool.status() == before
    other.pool.release(foreign)
    assert other.pool.status().active == 0


# -- leases still out when the storage closes ---------------------------------------------


def _files_open_under(directory: str) -> list[str]:
    """Names of the files under ``directory`` this process has open (Linux: /proc)."""
    names = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # (closed meanwhile, or listdir's own)
        if target.startswith(directory):
            names.append(os.path.basename(target))
    return sorted(names)


needs_proc = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")


@needs_proc
def test_a_lease_dropped_after_close_closes_its_connection(open_storage: Open) -> None:
    """No tick runs once the storage is closed, and no reader closes a connection still
    lent: one dropped unreleased after db.close() kept its connection and the database's
    files open for as long as the storage object lived."""
    db = open_storage(readers=1, max_readers=1, cache=False)
    db.execute("CREATE TABLE t(x)")
    directory = os.path.dirname(db.path)
    lease = db.pool.acquire()
    lease.execute("SELECT x FROM t")
    connection = lease._live()
    db.close()
    assert connection.state is not atlas.ConnectionState.CLOSED  # lent: its holder's still
    del lease
    gc.collect()
    assert connection.state is atlas.ConnectionState.CLOSED
    assert _files_open_under(directory) == []


@needs_proc
def test_a_lease_dropped_before_close_and_not_yet_taken_back_is_closed_by_it(
    open_storage: Open,
) -> None:
    # No tick between the drop and close() (liveness_interval): close() itself must
    # close what the tick would have given back.
    db = open_storage(readers=1, max_readers=1, cache=False, liveness_interval=60.0)
    db.execute("CREATE TABLE t(x)")
    directory = os.path.dirname(db.path)
    lease = db.pool.acquire()
    connection = lease._live()
    del lease
    gc.collect()
    started = time.monotonic()
    db.close()
    assert time.monotonic() - started < 1  # (a reader waits 1 s for a connection still lent)
    assert connection.state is atlas.ConnectionState.CLOSED
    assert _files_open_under(directory) == []


@needs_proc
def test_a_snapshot_left_open_at_close_gives_its_reader_back(open_storage: Open) -> None:
    """The transaction manager holds a repeatable_read transaction with a pinned reader
    (for the tick): one left open at close() kept that reader's connection, and the
    database's files, open for good, dropped or not."""
    db = open_storage(readers=1, max_readers=1, cache=False)
    db.execute("CREATE TABLE t(x)")
    db.write("INSERT INTO t VALUES (1)")
    directory = os.path.dirname(db.path)
    tx = db.transactions.begin("repeatable_read")
    assert tx.query("SELECT x FROM t")[0].x == 1
    db.close()
    assert _files_open_under(directory) == []
    assert all(c.state is atlas.ConnectionState.CLOSED for c in db.connections())
    with pytest.raises(atlas.errors.StorageClosedError):
        tx.query("SELECT x FROM t")
    tx.rollback()  # (harmless once ended)


def test_connections_after_close_list_a_lent_connection_once(open_storage: Open) -> None:
    """Its reader, stopped by the close, left it unusable, so the reader's role seemed
    served by nothing and its connection was listed a second time."""
    db = open_storage(readers=2, max_readers=2, cache=False)
    lease = db.pool.acquire()
    lease.execute("SELECT 1")
    lent = lease._live().id
    db.close()
    infos = [(c.id, c.state) for c in db.connections()]
    ids = [connection_id for connection_id, _ in infos]
    assert len(ids) == len(set(ids)), infos
    assert (lent, atlas.ConnectionState.ACTIVE) in infos  # (lent: ACTIVE until given back)
    lease.release()


def test_a_snapshot_in_a_statement_at_close_ends_at_its_owners_next_call(
    open_storage: Open,
) -> None:
    """close() waits a moment for a statement running on a pinned snapshot; past that it
    gave up for good: the transaction went on reading, and committed, on a closed
    storage, with its reader's connection open."""
    db = open_storage(readers=1, max_readers=1, cache=False)
    db.execute("CREATE TABLE t(x)")
    db.write("INSERT INTO t VALUES (1)")
    directory = os.path.dirname(db.path)
    tx = db.transactions.begin("repeatable_read")
    assert tx.query("SELECT x FROM t")[0].x == 1
    lock = tx._reader_lock
    assert lock is not None
    with lock:  # (as the owner does while its statement runs)
        closing = threading.Thread(target=db.close, kwargs={"timeout": 0.2})
        closing.start()
        closing.join(10)
    with pytest.raises(atlas.errors.StorageClosedError):
        tx.query("SELECT x FROM t")
    assert tx.state == "failed"
    with pytest.raises(atlas.errors.StorageClosedError):
        tx.commit()
    assert _files_open_under(directory) == []


def test_a_snapshot_pinned_when_the_storage_fails_serves_no_more_reads(
    open_storage: Open,
) -> None:
    """Once the storage failed (restart intensity), every call raises StorageUnavailable:
    a repeatable_read transaction's pinned reader still served its reads."""
    db = open_storage(readers=1, max_readers=1, cache=False, restart_max=1, restart_window=30)
    db.execute("CREATE TABLE t(x)")
    db.write("INSERT INTO t VALUES (1)")
    tx = db.transactions.begin("repeatable_read")
    assert tx.query("SELECT x FROM t")[0].x == 1
    for _ in range(3):
        with contextlib.suppress(atlas.errors.AtlasError):
            db.supervisor.kill("writer")
        if wait_until(lambda: db.health().status == "failed", timeout=1):
            break
    assert db.health().status == "failed"
    with pytest.raises(atlas.errors.StorageUnavailable):
        tx.query("SELECT x FROM t")
    readers = [c for c in db.connections() if c.role != "writer"]
    assert all(c.state is atlas.ConnectionState.CLOSED for c in readers), readers


def test_a_reader_stopped_with_its_connection_lent_shows_its_next_one_too(
    open_storage: Open,
) -> None:
    # During the restart's backoff: the lent connection (ACTIVE) beside the role's next
    # one (CONNECTING), as docs/architecture.md says; not the lent one alone, or twice.
    db = open_storage(
        readers=1,
        max_readers=1,
        cache=False,
        restart_backoff_initial=2.0,
        restart_backoff_jitter=0.0,
    )
    lease = db.pool.acquire()
    lease.execute("SELECT 1")
    lent = lease._live().id
    db.supervisor.kill("reader-0", how="stop")
    assert wait_until(
        lambda: (
            [c.state for c in db.supervisor.status().children if c.role == "reader-0"]
            == ["restarting"]
        )
    )
    infos = sorted((c.id or "", c.state.value) for c in db.connections() if c.role == "reader-0")
    assert infos == [("", "connecting"), (lent, "active")]
    lease.release()


@needs_proc
def test_a_snapshot_pinned_while_close_runs_ends_too(open_storage: Open) -> None:
    """B waited for the reader A's snapshot held; close() ended A's snapshot, the reader
    went to B after close() had taken its list of pinned snapshots, and B went on
    reading, then committed, on the closed storage, its reader's connection open."""
    db = open_storage(readers=1, max_readers=1, cache=False)
    db.execute("CREATE TABLE t(x)")
    db.write("INSERT INTO t VALUES (1)")
    directory = os.path.dirname(db.path)
    first = db.transactions.begin("repeatable_read", timeout=60)
    assert first.query("SELECT x FROM t")[0].x == 1
    outcomes: list[str] = []
    second: list[atlas.Transaction] = []

    def waits_for_the_reader() -> None:
        tx = db.transactions.begin("repeatable_read", timeout=60)
        second.append(tx)
        for _ in range(2):
            try:
                tx.query("SELECT x FROM t")
                outcomes.append("read")
            except atlas.errors.AtlasError as error:
                outcomes.append(type(error).__name__)

    waiting = threading.Thread(target=waits_for_the_reader)
    waiting.start()
    assert wait_until(lambda: db.pool.status().waiting_requests == 1)
    db.close(timeout=3)
    waiting.join(10)
    assert outcomes == ["StorageClosedError", "StorageClosedError"]
    with pytest.raises(atlas.errors.StorageClosedError):
        second[0].commit()
    assert _files_open_under(directory) == []


def test_a_read_only_transaction_left_open_at_close_does_not_commit(open_storage: Open) -> None:
    """Its commit() after close() said committed, although every call must say the
    storage is closed (and close() rolled it back)."""
    db = open_storage(cache=False)
    db.execute("CREATE TABLE t(x)")
    open_ones = []
    for isolation in ("read_committed", "read_uncommitted", "serializable"):
        tx = db.transactions.begin(isolation)
        if isolation != "serializable":
            tx.query("SELECT count(*) FROM t")
        open_ones.append(tx)
    db.close()
    for tx in open_ones:
        with pytest.raises(atlas.errors.StorageClosedError):
            tx.commit()
        assert tx.state == "failed"
    status = db.transactions.status()
    assert (status.committed, status.rolled_back) == (0, 3)
