"""Transactions used in ways that cannot work are refused, typed, and leave nothing behind.

Nested blocks that ask for more than a savepoint gives, savepoint names SQLite would
take for others, a transaction used from a thread that did not begin it, and a wait
refused as a deadlock.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import atlas_actors as atlas
from atlas_actors.errors import (
    ConstraintError,
    DeadlockError,
    TransactionTimeout,
    ValidationError,
    WrongThreadError,
)
from atlas_actors.transaction.transaction import LEASE
from tests.helpers import wait_until


@pytest.fixture
def rows(db: atlas.Storage) -> atlas.Storage:
    db.execute("CREATE TABLE log(v TEXT)")
    return db


def _logged(db: atlas.Storage) -> list[str]:
    return [str(row.v) for row in db.query("SELECT v FROM log ORDER BY rowid")]


def test_a_nested_block_asking_for_a_stronger_level_is_refused(rows: atlas.Storage) -> None:
    with rows.transaction(isolation="read_committed") as outer:
        outer.execute("INSERT INTO log VALUES ('outer')")
        with pytest.raises(ValidationError, match=r"read_committed.*lost_update"):
            rows.transaction(isolation="serializable")
        with pytest.raises(ValidationError, match="isolation"):
            rows.transaction(isolation="chaos")
        with pytest.raises(ValidationError, match="timeout"):
            rows.transaction(timeout=-1)
        with pytest.raises(ValidationError, match="at most"):
            rows.transaction(timeout=1e12)
        # What the outer level gives, or less, is a savepoint of it.
        with rows.transaction(isolation="read_uncommitted") as inner:
            assert inner is outer
            outer.execute("INSERT INTO log VALUES ('inner')")
    assert _logged(rows) == ["outer", "inner"]


def test_a_nested_serializable_block_inside_repeatable_read_is_a_savepoint(
    rows: atlas.Storage,
) -> None:
    # repeatable_read prevents every anomaly serializable does (docs/isolation.md).
    with rows.transaction(isolation="repeatable_read") as outer, rows.transaction() as inner:
        assert inner is outer
        inner.execute("INSERT INTO log VALUES ('inner')")
    assert _logged(rows) == ["inner"]


def test_savepoint_names_match_as_sqlite_matches_them(rows: atlas.Storage) -> None:
    with rows.transaction() as tx:
        tx.savepoint("a")
        tx.execute("INSERT INTO log VALUES ('after a')")
        tx.savepoint("A")  # the same name to SQLite: the most recent one wins
        tx.execute("INSERT INTO log VALUES ('after A')")
        tx.rollback_to("a")  # SQLite rolls back to "A", which stays open
        assert tx.query("SELECT v FROM log") == [("after a",)]
        tx.release("A")  # releases "A" only: "a" is still open
        tx.rollback_to("A")  # ... and is the one SQLite takes now
        assert tx.query("SELECT v FROM log") == []
    assert _logged(rows) == []


@pytest.mark.parametrize("name", ["nested_1_1", "NESTED_12_3", "tx1", "TX42"])
def test_the_transactions_own_savepoint_names_are_reserved(rows: atlas.Storage, name: str) -> None:
    with rows.transaction() as tx:
        with pytest.raises(ValidationError, match="reserved"):
            tx.savepoint(name)
        tx.savepoint("nested")  # (a name that only looks alike is fine)


def test_a_savepoint_name_too_long_is_refused_for_its_length(rows: atlas.Storage) -> None:
    with rows.transaction() as tx:
        tx.savepoint("a" * 64)  # (the longest name taken)
        for name in ("a" * 65, "x" * 1000):
            for call in (tx.savepoint, tx.rollback_to, tx.release):
                with pytest.raises(ValidationError, match="at most 64 characters") as caught:
                    call(name)
                assert "letters, digits" not in str(caught.value)  # (its characters are fine)
        with pytest.raises(ValidationError, match="letters, digits and underscores"):
            tx.savepoint("1" + "a" * 70)  # (both wrong: its characters are named too)
        tx.rollback_to("a" * 64)  # the transaction goes on


def _in_thread(work: Callable[[], object]) -> BaseException | None:
    raised: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as error:
            raised.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(10)
    return raised[0] if raised else None


@pytest.mark.parametrize("isolation", ["serializable", "repeatable_read", "read_committed"])
def test_a_transaction_used_from_another_thread_is_refused_and_holds_nothing(
    rows: atlas.Storage, isolation: str
) -> None:
    tx = rows.transactions.begin(isolation)
    first = "SELECT count(*) FROM log" if isolation == "repeatable_read" else None
    error = _in_thread(
        lambda: tx.query(first) if first else tx.execute("INSERT INTO log VALUES ('x')")
    )
    assert isinstance(error, WrongThreadError)
    assert str(tx.owner) in str(error)
    if isolation != "repeatable_read":
        assert tx.state == "active"  # refused before it took anything
    # Nothing was taken for the other thread: an unrelated thread's write goes through
    # (before the fix, it could inherit the dead thread's lease hold).
    assert _in_thread(lambda: rows.write("INSERT INTO log VALUES ('unrelated')", timeout=3)) is None
    assert rows.transactions.status().lease_holder is None
    tx.execute("INSERT INTO log VALUES ('owner')")  # its owner goes on
    tx.commit()
    assert sorted(_logged(rows)) == ["owner", "unrelated"]


def test_a_second_transaction_refused_as_a_deadlock_is_reported_once(rows: atlas.Storage) -> None:
    before = rows.metrics.snapshot().get("errors.deadlock", 0)
    with rows.transaction() as first:
        first.execute("INSERT INTO log VALUES ('first')")
        second = rows.transactions.begin()
        with pytest.raises(DeadlockError):
            second.execute("INSERT INTO log VALUES ('second')")
        assert second.state == "active"  # refused before it waited: usable later
    assert rows.metrics.snapshot()["errors.deadlock"] == before + 1
    second.execute("INSERT INTO log VALUES ('second')")
    second.commit()
    assert _logged(rows) == ["first", "second"]


def test_an_abandoned_transaction_whose_lease_expired_is_forgotten(tmp_path: Path) -> None:
    """Begun, given the lease, then never ended: once the writer took the lease back
    (the timeout), the transaction is counted rolled back and no longer listed."""
    with atlas.open(tmp_path / "abandoned.db", cache=False) as db:
        db.execute("CREATE TABLE t(x)")
        tx = db.transactions.begin(timeout=0.2)
        tx.execute("INSERT INTO t VALUES (1)")  # holds the lease
        before = db.transactions.status().rolled_back
        assert wait_until(lambda: not db.transactions.status().active, timeout=5)
        assert db.transactions.status().rolled_back == before + 1
        assert db.query("SELECT count(*) AS n FROM t")[0].n == 0  # rolled back
        with pytest.raises(TransactionTimeout):  # its owner still hears why, once
            tx.execute("INSERT INTO t VALUES (2)")
        assert db.transactions.status().rolled_back == before + 1  # (not counted twice)


@pytest.mark.parametrize("isolation", ["serializable", "read_committed", "repeatable_read"])
def test_a_transaction_whose_lease_was_revoked_says_failed_once_status_drops_it(
    open_storage: Callable[..., atlas.Storage], isolation: str
) -> None:
    db = open_storage(cache=False)
    db.execute("CREATE TABLE t(x)")
    tx = db.transactions.begin(isolation, timeout=0.2)
    tx.query("SELECT count(*) FROM t")
    tx.execute("INSERT INTO t VALUES (1)")  # holds the lease
    before = db.transactions.status().rolled_back
    assert wait_until(lambda: tx.id not in [info.id for info in db.transactions.status().active])
    # What status() says and what the transaction says agree: it has ended.
    assert db.transactions.status().rolled_back == before + 1
    assert tx.state == "failed"
    errors = db.metrics.snapshot().get("errors.timeout", 0)
    assert errors == 1  # reported once, when it was found revoked
    raised = []
    for call in (
        lambda: tx.execute("INSERT INTO t VALUES (2)"),
        lambda: tx.query("SELECT 1"),
        tx.commit,
    ):
        with pytest.raises(TransactionTimeout, match="past its timeout") as caught:
            call()
        raised.append(caught.value)
    assert raised[0] is raised[1] is raised[2]  # the same error, each time
    tx.rollback()  # harmless
    assert tx.state == "failed"
    assert db.transactions.status().rolled_back == before + 1  # (not counted twice)
    assert db.metrics.snapshot().get("errors.timeout", 0) == 1  # (nor reported twice)
    assert db.query("SELECT count(*) AS n FROM t")[0].n == 0


def test_a_block_whose_lease_was_revoked_raises_the_timeout_on_leaving(
    open_storage: Callable[..., atlas.Storage],
) -> None:
    db = open_storage(cache=False)
    db.execute("CREATE TABLE t(x)")
    with pytest.raises(TransactionTimeout), db.transaction(timeout=0.2) as tx:
        tx.execute("INSERT INTO t VALUES (1)")
        assert wait_until(lambda: tx.state != "active")
        assert tx.state == "failed"
    assert db.metrics.snapshot().get("errors.timeout", 0) == 1
    assert db.query("SELECT count(*) AS n FROM t")[0].n == 0


def test_a_transaction_dropped_unended_is_forgotten_counted_and_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Begun, used to read, then dropped without commit() or rollback(): it stayed
    listed as active for good (one entry per such transaction)."""
    with atlas.open(tmp_path / "dropped.db", cache=False) as db:
        db.execute("CREATE TABLE t(x)")
        kept = db.transactions.begin(isolation="read_committed")
        dropped = db.transactions.begin(isolation="read_committed")
        dropped.query("SELECT count(*) FROM t")
        dropped_id = dropped.id
        before = db.transactions.status().rolled_back
        del dropped
        with caplog.at_level(logging.WARNING, logger="atlas_actors.transaction.transaction"):
            assert wait_until(lambda: db.transactions.status().rolled_back == before + 1)
        assert [tx.id for tx in db.transactions.status().active] == [kept.id]
        assert any(
            "dropped without commit() or rollback()" in r.getMessage()
            and str(dropped_id) in r.getMessage()
            for r in caplog.records
        )
        time.sleep(0.2)  # (several ticks: the one still held stays, and is counted once)
        assert [tx.id for tx in db.transactions.status().active] == [kept.id]
        assert db.transactions.status().rolled_back == before + 1
        kept.query("SELECT count(*) FROM t")
        kept.commit()
        assert db.transactions.status().active == ()


def test_a_dropped_transaction_holding_the_lease_gives_it_back_at_once(tmp_path: Path) -> None:
    """Every write waits behind the writer lease: a transaction dropped while holding
    it made them wait for its whole timeout (here 30 s) before it was taken back."""
    with atlas.open(tmp_path / "dropped-lease.db", cache=False) as db:
        db.execute("CREATE TABLE t(x)")
        tx = db.transactions.begin(timeout=30)
        tx.execute("INSERT INTO t VALUES ('dropped')")  # holds the lease
        del tx
        written: list[int] = []
        other = threading.Thread(
            target=lambda: written.append(db.write("INSERT INTO t VALUES ('other')").rowcount)
        )
        started = time.monotonic()
        other.start()
        other.join(10)
        assert written == [1] and time.monotonic() - started < 5
        # The thread that dropped it no longer holds the lease either.
        assert db.write("INSERT INTO t VALUES ('same')", timeout=5).rowcount == 1
        assert sorted(row.x for row in db.query("SELECT x FROM t")) == ["other", "same"]
        assert db.transactions.status().active == ()


def test_a_dropped_snapshot_gives_its_reader_back_at_its_timeout(tmp_path: Path) -> None:
    """A repeatable_read transaction pins a reader for its snapshot: dropped unended,
    the reader must still go back to the pool when its timeout ends the snapshot."""
    with atlas.open(tmp_path / "dropped-snapshot.db", cache=False, readers=2) as db:
        db.execute("CREATE TABLE t(x)")
        tx = db.transactions.begin(isolation="repeatable_read", timeout=0.3)
        tx.query("SELECT count(*) FROM t")  # pins a reader
        assert db.pool.status().active == 1
        del tx
        assert wait_until(lambda: db.pool.status().active == 0)
        assert wait_until(lambda: db.transactions.status().active == ())


def test_a_thread_given_the_ident_of_an_ended_lease_holder_is_not_taken_for_it(
    tmp_path: Path,
) -> None:
    """Thread ids are reused: a thread that ended holding the lease (its transaction
    kept elsewhere) left its id recorded as the holder, so the next thread given that
    id had its plain write refused as a deadlock instead of waiting for the lease."""
    with atlas.open(tmp_path / "reuse.db", cache=False) as db:
        db.execute("CREATE TABLE t(x)")
        for _ in range(20):  # (a new thread usually gets the id of one just ended)
            ended, second = _lease_kept_after_its_thread_ended(db)
            if second[0] == ended:
                break
        else:
            pytest.skip("no thread was given the id of the one that ended")
        assert second == [ended, 1]
        assert db.transactions.status().active == ()
        assert db.transactions.graph.holders(LEASE) == {}


def _lease_kept_after_its_thread_ended(db: atlas.Storage) -> tuple[int, list[object]]:
    """A thread takes the lease and ends; another writes (the thread's id, and 1)."""
    kept: list[tuple[int, atlas.Transaction]] = []

    def begin_and_end_the_thread() -> None:
        tx = db.transactions.begin()
        tx.execute("INSERT INTO t VALUES ('kept')")  # holds the lease
        kept.append((threading.get_ident(), tx))

    first = threading.Thread(target=begin_and_end_the_thread)
    first.start()
    first.join()
    (ended, tx), results = kept[0], []

    def write() -> None:
        results.append(threading.get_ident())
        results.append(db.write("INSERT INTO t VALUES ('later')", timeout=10).rowcount)

    second = threading.Thread(target=write)
    second.start()
    time.sleep(0.2)  # its write waits behind the lease (it was refused at once)
    assert second.is_alive()
    tx.commit()  # (another thread may end it: the lease goes back)
    second.join(10)
    return ended, results


def test_the_thread_that_dropped_a_lease_holder_writes_without_a_deadlock_error(
    tmp_path: Path,
) -> None:
    """Until the tick swept it, a plain write from the thread that dropped a transaction
    holding the lease was refused as a deadlock behind a transaction nobody can end."""
    with atlas.open(tmp_path / "same-thread.db", cache=False, transaction_timeout=30) as db:
        db.execute("CREATE TABLE t(x)")
        for n in range(5):
            tx = db.transactions.begin()
            tx.execute("INSERT INTO t VALUES ('dropped')")
            del tx  # (collected at once: no cycle holds it)
            assert db.write("INSERT INTO t VALUES (?)", [n], timeout=5).rowcount == 1
        assert [row.x for row in db.query("SELECT x FROM t")] == [0, 1, 2, 3, 4]


def test_a_dropped_transaction_kept_by_its_caught_error_gives_the_lease_back_soon(
    tmp_path: Path,
) -> None:
    """An error a transaction raised and keeps (for recover()) holds its frame, so the
    dropped transaction sits in a reference cycle that only a full garbage collection
    frees: every write waited out its whole timeout (here 30 s)."""
    thresholds = gc.get_threshold()
    gc.set_threshold(1_000_000_000)  # (no automatic collection frees it meanwhile)
    try:
        _drop_a_transaction_in_a_cycle(tmp_path)
    finally:
        gc.set_threshold(*thresholds)


def _drop_a_transaction_in_a_cycle(tmp_path: Path) -> None:
    with atlas.open(tmp_path / "cycle.db", cache=False) as db:
        db.execute("CREATE TABLE t(x UNIQUE)")
        db.write("INSERT INTO t VALUES (1)")

        def leave_it_open() -> None:
            tx = db.transactions.begin(timeout=30)
            tx.execute("INSERT INTO t VALUES (2)")  # holds the lease
            with contextlib.suppress(ConstraintError):
                tx.execute("INSERT INTO t VALUES (1)")  # caught, and kept by the transaction

        leave_it_open()
        written: list[int] = []
        other = threading.Thread(
            target=lambda: written.append(db.write("INSERT INTO t VALUES (3)").rowcount)
        )
        started = time.monotonic()
        other.start()
        other.join(8)
        assert written == [1] and time.monotonic() - started < 5
        assert sorted(row.x for row in db.query("SELECT x FROM t")) == [1, 3]
