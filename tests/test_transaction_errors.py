"""SQLite refusing a transaction's savepoint commands: typed errors, the writer freed."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import apsw
import pytest

import atlas_actors as atlas
from atlas_actors.errors import (
    AtlasError,
    BusyError,
    ConstraintError,
    DiskFullError,
    DiskIOError,
    OperationTimeout,
    SQLError,
    TransactionAborted,
    TransactionError,
    TransactionTimeout,
)
from atlas_actors.faults import FaultyVFS
from tests.helpers import wait_until


@pytest.fixture
def vfs() -> Iterator[FaultyVFS]:
    faulty = FaultyVFS()
    yield faulty
    faulty.unregister()


@pytest.fixture
def big(open_storage: Callable[..., atlas.Storage], vfs: FaultyVFS) -> atlas.Storage:
    """A storage on ``vfs`` whose table spans far more pages than a tiny page cache holds."""
    db = open_storage(vfs=vfs.name, cache_size_kib=20)  # (5 pages of 4 KiB)
    db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
    db.write_many("INSERT INTO t(v) VALUES (zeroblob(3000))", [()] * 300)
    return db


def _change_every_page(tx: atlas.Transaction) -> None:
    # With a page cache of a few pages (the fixture's), rolling the change back must read
    # pages again (from the WAL or the database file): a read failure then fails it.
    tx.execute("UPDATE t SET v = randomblob(3000)")


def _writer_works(db: atlas.Storage) -> None:
    """The writer serves others again, and nothing of the failed transaction stayed."""
    assert db.write("INSERT INTO t(v) VALUES (zeroblob(1))", timeout=5).rowcount == 1
    assert db.query("SELECT count(*) AS n, sum(length(v)) AS size FROM t") == [
        (301, 300 * 3000 + 1)
    ]
    assert db.query("SELECT count(*) AS n FROM t WHERE v = zeroblob(3000)")[0].n == 300


def test_a_refused_rollback_to_raises_typed_and_frees_the_writer(
    big: atlas.Storage, vfs: FaultyVFS
) -> None:
    tx = big.transactions.begin()
    tx.create_savepoint("a")
    _change_every_page(tx)
    vfs.fail_reads = apsw.IOError
    try:
        with pytest.raises(AtlasError) as raised:
            tx.rollback_to("a")
    finally:
        vfs.fail_reads = None
    assert isinstance(raised.value, DiskIOError)  # typed, not apsw's
    assert tx.state == "failed"  # SQLite rolled the batch back: the transaction with it
    with pytest.raises(TransactionError):
        tx.release("a")
    tx.rollback()  # harmless now
    _writer_works(big)
    assert big.metrics.get("errors") >= 1


def test_a_refused_rollback_still_gives_the_lease_back(big: atlas.Storage, vfs: FaultyVFS) -> None:
    tx = big.transactions.begin()
    _change_every_page(tx)
    vfs.fail_reads = apsw.IOError
    try:
        tx.rollback()  # SQLite rolled everything back itself: the rollback happened
    finally:
        vfs.fail_reads = None
    assert tx.state == "rolled_back"
    _writer_works(big)


# -- the tables a transaction wrote, looked up at commit (for the cache) -----------------

_READ = "SELECT v FROM kv WHERE k = ?"


@pytest.fixture
def kv(open_storage: Callable[..., atlas.Storage]) -> atlas.Storage:
    db = open_storage(cache_disk_min_seconds=0)
    db.execute("CREATE TABLE kv(k INTEGER PRIMARY KEY, v TEXT)")
    db.write_many("INSERT INTO kv VALUES (?, ?)", [(i, f"v{i}") for i in range(10)])
    return db


def _cached(db: atlas.Storage, k: int) -> str:
    """Read twice: a result is admitted to the cache the second time it is missed."""
    db.query(_READ, [k])
    return str(db.query(_READ, [k])[0].v)


def test_a_statement_new_to_the_analysis_invalidates_what_it_wrote(kv: atlas.Storage) -> None:
    assert _cached(kv, 1) == "v1"
    with kv.transaction() as tx:  # texts never run before: analysed at commit
        tx.execute("UPDATE kv SET v = 'a' WHERE k = 1 /* first */")
        tx.query("INSERT INTO kv VALUES (100, 'r') RETURNING k")  # a read that writes
    assert _cached(kv, 1) == "a"
    assert _cached(kv, 100) == "r"
    with kv.transaction() as tx:
        tx.query("UPDATE kv SET v = 'b' WHERE k = 100 RETURNING k")
    assert _cached(kv, 100) == "b"


def test_a_table_dropped_after_its_write_leaves_the_tables_unknown(kv: atlas.Storage) -> None:
    kv.execute("CREATE TABLE scratch(x)")
    assert _cached(kv, 2) == "v2"
    with kv.transaction() as tx:
        tx.execute("INSERT INTO scratch VALUES (1) /* new */")  # cannot be analysed at commit
        tx.execute("UPDATE kv SET v = 'c' WHERE k = 2 /* new too */")
        tx.execute("DROP TABLE scratch")
    assert _cached(kv, 2) == "c"
    assert tx.operations == 3


def test_a_lease_granted_after_its_wait_timed_out_goes_back_at_once(
    open_storage: Callable[..., atlas.Storage], db_path: Path
) -> None:
    # The writer took the request, then waited for SQLite's write lock (held by another
    # connection) past the caller's deadline: the caller gave up ("may have been
    # applied"), and the lease granted afterwards had nobody to give it back. It then
    # stopped every write until its own timeout, and made its thread's next write a
    # deadlock with itself. (The writer now stops waiting for the lock just before the
    # caller's deadline, so the caller mostly hears SQLITE_BUSY instead; a grant that
    # still comes late goes back as before.)
    db = open_storage(default_timeout=0.5, busy_timeout=3.0, transaction_timeout=20.0)
    db.execute("CREATE TABLE t(a)")
    other = apsw.Connection(str(db_path))
    other.execute("BEGIN IMMEDIATE")
    unlock = threading.Timer(0.8, other.execute, ["COMMIT"])
    unlock.start()
    try:
        with pytest.raises((OperationTimeout, BusyError)) as failed, db.transaction() as tx:
            tx.execute("INSERT INTO t VALUES (1)")
        if isinstance(failed.value, OperationTimeout):
            assert failed.value.applied is None  # the writer had taken the request
    finally:
        unlock.join()
        other.close()
    assert db.write("INSERT INTO t VALUES (2)", timeout=2).rowcount == 1  # this thread
    elsewhere = threading.Thread(target=db.write, args=("INSERT INTO t VALUES (3)",))
    elsewhere.start()
    elsewhere.join(2)
    assert not elsewhere.is_alive()
    assert [a for (a,) in db.query("SELECT a FROM t ORDER BY a")] == [2, 3]
    assert db.transactions.status().lease_holder is None


# -- what recover() and the counters make of a transaction's errors ---------------------


def test_recover_applies_the_strategy_of_a_statements_error_that_left_it_active(
    db: atlas.Storage,
) -> None:
    tx = db.transactions.begin()
    tx.execute("INSERT INTO tasks(title) VALUES ('a')")
    with pytest.raises(ConstraintError):
        tx.execute("INSERT INTO tasks(title) VALUES ('a')")  # UNIQUE: the transaction goes on
    assert tx.state == "active"
    result = db.errors.recover(tx)
    assert (result.strategy, result.recovered) == ("fix_input", False)
    assert tx.state == "rolled_back"
    assert db.query("SELECT count(*) FROM tasks") == [(0,)]


@pytest.mark.parametrize("isolation", ["serializable", "read_committed", "repeatable_read"])
@pytest.mark.parametrize(
    ("statement", "said", "code"),
    [
        ("INSERT OR ROLLBACK INTO u VALUES (1)", "UNIQUE", apsw.SQLITE_CONSTRAINT_PRIMARYKEY),
        (
            "UPDATE OR ROLLBACK u SET id = 1 WHERE id = 2",
            "UNIQUE",
            apsw.SQLITE_CONSTRAINT_PRIMARYKEY,
        ),
        # (the column's ON CONFLICT ROLLBACK; a trigger's RAISE(ROLLBACK, ...))
        ("INSERT INTO r VALUES (1)", "UNIQUE", apsw.SQLITE_CONSTRAINT_PRIMARYKEY),
        ("INSERT INTO u VALUES (13)", "no 13s", apsw.SQLITE_CONSTRAINT_TRIGGER),
    ],
)
def test_a_statement_that_made_sqlite_roll_back_the_transaction_says_so(
    db: atlas.Storage, isolation: str, statement: str, said: str, code: int
) -> None:
    db.execute("CREATE TABLE u(id INTEGER PRIMARY KEY)")
    db.execute("CREATE TABLE r(id INTEGER PRIMARY KEY ON CONFLICT ROLLBACK)")
    db.execute(
        "CREATE TRIGGER no13 BEFORE INSERT ON u WHEN new.id = 13 "
        "BEGIN SELECT RAISE(ROLLBACK, 'no 13s'); END"
    )
    db.write_many("INSERT INTO u VALUES (?)", [(1,), (2,)])
    db.write("INSERT INTO r VALUES (1)")
    tx = db.transactions.begin(isolation)
    tx.query("SELECT count(*) FROM u")
    tx.execute("INSERT INTO tasks(title) VALUES ('earlier')")
    with pytest.raises(TransactionAborted, match="rolled back by SQLite") as caught:
        tx.execute(statement)
    aborted = caught.value
    # Not a ConstraintError saying "nothing was changed": the earlier write is undone
    # and the transaction has ended. SQLite's error is its cause, with its codes.
    assert "nothing was changed" not in str(aborted)
    assert said in str(aborted) and statement in str(aborted)
    assert isinstance(aborted.__cause__, ConstraintError)
    assert tx.state == "failed" and tx._error is aborted
    diagnostics = db.errors.analyze(aborted)
    assert diagnostics.type == "TransactionAborted"
    assert diagnostics.context["cause"] == "ConstraintError"
    assert diagnostics.context["extended_result_code"] == code
    assert diagnostics.context["strategy"] == "fix_input"
    with pytest.raises(TransactionAborted) as again:
        tx.commit()
    assert again.value is aborted
    assert db.query("SELECT count(*) FROM tasks") == [(0,)]
    assert db.write("INSERT INTO tasks(title) VALUES ('after')").rowcount == 1  # writer free


def test_a_transaction_sqlite_rolled_back_for_a_full_disk_is_diagnosed_as_disk_full(
    open_storage: Callable[..., atlas.Storage],
) -> None:
    db = open_storage(disk_full_probe_interval=0.1)
    db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
    db.write("INSERT INTO t(v) VALUES (zeroblob(1000))")
    pages = db.query("PRAGMA page_count")[0][0]
    db.run_in_writer(lambda c: c.execute(f"PRAGMA max_page_count = {pages + 3}").fetchall())
    tx = db.transactions.begin()
    with pytest.raises(DiskFullError):
        for _ in range(50):
            tx.execute("INSERT INTO t(v) VALUES (zeroblob(4000))")
    assert tx.state == "failed"
    assert isinstance(tx._error, TransactionAborted)
    assert isinstance(tx._error.__cause__, DiskFullError)  # its codes kept
    diagnostics = db.errors.analyze(tx._error)
    assert diagnostics.type == "TransactionAborted"
    assert diagnostics.context["strategy"] == "read_only"
    assert diagnostics.context["extended_result_code"] == apsw.SQLITE_FULL
    # A transaction's full disk puts the writer in disk-full mode, as a plain write's
    # does: recover() does not retry while the mode holds.
    assert wait_until(lambda: db.disk_full)
    retried: list[int] = []
    result = db.errors.recover(tx, retry=lambda t: retried.append(1))
    assert (result.strategy, result.recovered, result.attempts, retried) == (
        "read_only",
        False,
        0,
        [],
    ), result
    assert "writes are refused until disk space returns" in result.detail


def test_a_statement_interrupted_by_the_lease_timeout_is_reported_once(
    open_storage: Callable[..., atlas.Storage], caplog: pytest.LogCaptureFixture
) -> None:
    db = open_storage()
    db.execute("CREATE TABLE t(v)")
    caplog.set_level(logging.WARNING, logger="atlas_actors.errors")
    with pytest.raises(TransactionTimeout), db.transaction(timeout=0.3) as tx:
        tx.execute("INSERT INTO t VALUES (1)")
        tx.query(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c "
            "WHERE x < 100000000) SELECT count(*) FROM c"
        )
    reported = [r for r in caplog.records if r.name == "atlas_actors.errors"]
    assert [r.atlas["type"] for r in reported] == ["TransactionTimeout"]  # type: ignore[attr-defined]
    counted = {k: v for k, v in db.metrics.snapshot().items() if k.startswith("errors")}
    assert counted == {"errors": 1, "errors.timeout": 1}


def test_a_failed_first_read_leaves_no_snapshot_to_conflict_with(db: atlas.Storage) -> None:
    db.execute("CREATE TABLE acct(id INTEGER PRIMARY KEY, bal INTEGER)")
    db.write("INSERT INTO acct VALUES (1, 100)")
    with db.transaction(isolation="repeatable_read") as tx:
        with pytest.raises(SQLError):
            tx.query("SELECT bal FROM acct WHERE idd = 1")  # a typo, caught
        balance = tx.query("SELECT bal FROM acct WHERE id = 1")[0].bal
        tx.execute("UPDATE acct SET bal = ? WHERE id = 1", [balance - 10])  # no conflict
    assert db.query("SELECT bal FROM acct") == [(90,)]
