"""SQLite refusing a transaction's savepoint commands: typed errors, the writer freed."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import apsw
import pytest

import atlas_actors as atlas
from atlas_actors.errors import AtlasError, DiskIOError, OperationTimeout, TransactionError
from atlas_actors.faults import FaultyVFS


@pytest.fixture
def vfs() -> Iterator[FaultyVFS]:
    faulty = FaultyVFS()
    yield faulty
    faulty.unregister()


@pytest.fixture
def big(open_storage: Callable[..., atlas.Storage], vfs: FaultyVFS) -> atlas.Storage:
    """A storage on ``vfs`` whose table spans far more pages than a tiny page cache holds."""
    db = open_storage(vfs=vfs.name)
    db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
    db.write_many("INSERT INTO t(v) VALUES (zeroblob(3000))", [()] * 300)
    return db


def _change_every_page(tx: atlas.Transaction) -> None:
    # With a page cache of a few pages, rolling the change back must read pages again
    # (from the WAL or the database file): a read failure then fails the rollback.
    tx.execute("PRAGMA cache_size = 5")
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
    # deadlock with itself.
    db = open_storage(default_timeout=0.5, busy_timeout=3.0, transaction_timeout=20.0)
    db.execute("CREATE TABLE t(a)")
    other = apsw.Connection(str(db_path))
    other.execute("BEGIN IMMEDIATE")
    unlock = threading.Timer(0.8, other.execute, ["COMMIT"])
    unlock.start()
    try:
        with pytest.raises(OperationTimeout) as timed_out, db.transaction() as tx:
            tx.execute("INSERT INTO t VALUES (1)")
        assert timed_out.value.applied is None  # the writer had taken the request
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
