"""SQLite refusing a transaction's savepoint commands: typed errors, the writer freed."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import apsw
import pytest

import atlas_actors as atlas
from atlas_actors.errors import AtlasError, DiskIOError, TransactionError
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
