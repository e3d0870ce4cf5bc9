"""recover() applies the strategy analyze() names; db.wal tells the truth whoever wrote.

Real files throughout: FaultyVFS for I/O faults, ``max_page_count`` for a full disk, a
second apsw connection (no WAL hook of the storage's) for another process's writes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import apsw
import pytest

import atlas_actors as atlas
from atlas_actors import errors
from atlas_actors.faults import FaultyVFS
from tests.helpers import wait_until


@pytest.fixture
def vfs() -> Iterator[FaultyVFS]:
    faulty = FaultyVFS()
    yield faulty
    faulty.unregister()


def _add_row(tx: atlas.Transaction) -> str:
    tx.execute("INSERT INTO t(v) VALUES ('retried')")
    return "done"


def _retried_rows(db: atlas.Storage) -> int:
    return int(db.query("SELECT count(*) FROM t WHERE v = 'retried'")[0][0])


def _commit_fails_with_an_io_error(db: atlas.Storage, vfs: FaultyVFS) -> atlas.Transaction:
    db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
    tx = db.transactions.begin()
    vfs.only, vfs.fail_writes = "-wal", apsw.IOError
    try:
        with pytest.raises(errors.DiskIOError), tx:
            _add_row(tx)
    finally:
        vfs.fail_writes = None
    diagnostics = db.errors.analyze(tx._error or tx._last_error)  # type: ignore[arg-type]
    assert diagnostics.context["strategy"] == "retry_then_verify"
    return tx


# -- I/O error: retry_then_verify -------------------------------------------------------


def test_recover_retries_an_io_failure_once_quick_check_passes(
    open_storage: Callable[..., atlas.Storage], vfs: FaultyVFS
) -> None:
    db = open_storage(vfs=vfs.name, cache=False)
    tx = _commit_fails_with_an_io_error(db, vfs)  # then the disk heals
    result = db.errors.recover(tx, retry=_add_row)
    assert (result.strategy, result.recovered, result.attempts, result.result) == (
        "retry_then_verify",
        True,
        1,
        "done",
    ), result
    assert "quick_check passed" in result.detail
    assert "COMMIT's outcome is uncertain" in result.detail
    assert _retried_rows(db) == 1


def test_recover_does_not_retry_an_io_failure_the_file_check_cannot_run_for(
    open_storage: Callable[..., atlas.Storage], vfs: FaultyVFS
) -> None:
    db = open_storage(vfs=vfs.name, cache=False)
    tx = _commit_fails_with_an_io_error(db, vfs)
    retried: list[int] = []
    vfs.only, vfs.fail_reads = Path(db.path).name, apsw.IOError  # the check cannot read
    try:
        result = db.errors.recover(tx, retry=lambda t: retried.append(1))
    finally:
        vfs.fail_reads = None
    assert (result.strategy, result.recovered, result.attempts) == (
        "retry_then_verify",
        False,
        0,
    ), result
    assert "could not run quick_check" in result.detail and "not retried" in result.detail
    assert retried == []


def _damage_a_leaf_page_of_t(db: atlas.Storage, offset: int, data: bytes) -> int:
    """Overwrite bytes of a leaf page of table t in the file, for real; its number.

    Everything is checkpointed first (the WAL truncated), so a fresh connection reads
    the page from the database file, as the damage left it.
    """
    db.write_many("INSERT INTO t(v) VALUES (?)", [["x" * 200] for _ in range(500)])
    db.wal.checkpoint("truncate")
    root = db.query("SELECT rootpage FROM sqlite_schema WHERE name = 't'")[0][0]
    page_size = db.query("PRAGMA page_size")[0][0]
    page = root + 3  # past the root (an interior page): a leaf
    with Path(db.path).open("r+b") as file:
        file.seek((page - 1) * page_size + offset)
        file.write(data)
    return int(page)


@pytest.mark.parametrize(
    ("offset", "data", "named"),
    [
        # Cell pointers zeroed (a leaf's header is 8 bytes): quick_check lists each one.
        (8, b"\x00" * 16, "Tree {root} page {page} cell 0: Offset 0 out of range"),
        # The page header smashed: quick_check itself fails with SQLITE_CORRUPT.
        (0, b"\xff" * 64, "database disk image is malformed"),
    ],
    ids=["cell-pointers", "page-header"],
)
def test_recover_does_not_retry_an_io_failure_when_quick_check_finds_damage(
    open_storage: Callable[..., atlas.Storage],
    vfs: FaultyVFS,
    offset: int,
    data: bytes,
    named: str,
) -> None:
    db = open_storage(vfs=vfs.name, cache=False)
    tx = _commit_fails_with_an_io_error(db, vfs)
    page = _damage_a_leaf_page_of_t(db, offset, data)  # the disk heals; the file does not
    root = db.query("SELECT rootpage FROM sqlite_schema WHERE name = 't'")[0][0]
    retried: list[int] = []
    result = db.errors.recover(tx, retry=lambda t: retried.append(1))
    assert (result.strategy, result.recovered, result.attempts) == (
        "retry_then_verify",
        False,
        0,
    ), result
    assert "quick_check found problems" in result.detail, result.detail
    assert named.format(root=root, page=page) in result.detail, result.detail
    assert "not retried" in result.detail and "restore from a backup" in result.detail
    assert retried == []


# -- disk full: read_only, then retry once writes are accepted again ---------------------


def test_recover_retries_a_disk_full_failure_once_the_storage_accepts_writes_again(
    open_storage: Callable[..., atlas.Storage],
) -> None:
    db = open_storage(max_page_count=60, disk_full_probe_interval=0.05, cache=False)
    db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
    with pytest.raises(errors.DiskFullError):
        for _ in range(1000):
            db.write("INSERT INTO t(v) VALUES (zeroblob(2000))")
    assert wait_until(lambda: db.disk_full)  # the writer refuses writes now
    failed = []
    for _ in range(2):
        tx = db.transactions.begin()
        with pytest.raises(errors.DiskFullError):
            tx.execute("INSERT INTO t(v) VALUES (zeroblob(2000))")
        failed.append(tx)
    retried: list[int] = []
    result = db.errors.recover(failed[0], retry=lambda t: retried.append(1))
    assert (result.strategy, result.recovered, retried) == ("read_only", False, [])
    assert "writes are refused until disk space returns" in result.detail
    # Space comes back (rows deleted: their pages are reused); a probe write finds out.
    assert wait_until(lambda: _deleted(db))
    assert wait_until(lambda: not db.disk_full)
    result = db.errors.recover(failed[1], retry=_add_row)
    assert (result.strategy, result.recovered, result.attempts, result.result) == (
        "read_only",
        True,
        1,
        "done",
    ), result
    assert _retried_rows(db) == 1


def _deleted(db: atlas.Storage) -> bool:
    try:
        db.write("DELETE FROM t WHERE id % 2 = 0")
    except errors.DiskFullError:
        return False
    return True


# -- db.wal.monitor(): frames whoever wrote them -----------------------------------------


def test_wal_monitor_counts_the_frames_another_process_wrote(
    open_storage: Callable[..., atlas.Storage],
) -> None:
    db = open_storage(cache=False, checkpoint_frames=100_000)
    db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
    db.write("INSERT INTO t(v) VALUES (1)")
    db.wal.checkpoint("passive")  # copies everything: nothing waits
    assert db.wal.monitor().frames == 0
    assert db.metrics.snapshot()["wal.pending_bytes"] == 0
    other = apsw.Connection(db.path)  # another process, as far as the storage can tell
    try:
        other.set_busy_timeout(5000)
        other.execute("PRAGMA wal_autocheckpoint=0")
        with other:
            for _ in range(300):
                other.execute("INSERT INTO t(v) VALUES (randomblob(4000))")
        stats = db.wal.monitor()
        page_size = db.query("PRAGMA page_size")[0][0]
        in_file = (stats.size - 32) // (24 + page_size)
        assert 300 <= stats.frames <= in_file, (stats, in_file)
        snapshot = db.metrics.snapshot()
        assert snapshot["wal.frames"] == stats.frames
        assert snapshot["wal.pending_bytes"] == stats.size > 300 * page_size
        # The other process checkpoints everything: nothing waits any more.
        other.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_PASSIVE)
        assert db.wal.monitor().frames == 0
        assert db.metrics.snapshot()["wal.pending_bytes"] == 0
    finally:
        other.close()


# -- db.wal.verify(): False is a verdict; no verdict raises -------------------------------


def test_wal_verify_raises_when_the_check_cannot_run(
    open_storage: Callable[..., atlas.Storage], vfs: FaultyVFS
) -> None:
    db = open_storage(vfs=vfs.name, cache=False)
    db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
    db.write("INSERT INTO t(v) VALUES (1)")
    assert db.wal.verify() is True
    vfs.fail_reads = apsw.IOError
    try:
        with pytest.raises(errors.DiskIOError, match="injected read failure"):
            db.wal.verify()
        result = db.errors.verify(full=False)
        assert result.unchecked and isinstance(result.error, errors.DiskIOError)
    finally:
        vfs.fail_reads = None
    assert db.wal.verify(full=True) is True


def test_wal_verify_says_false_for_a_damaged_file(tmp_path: Path) -> None:
    path = tmp_path / "damaged.db"
    connection = apsw.Connection(str(path))
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT)")
    with connection:
        for _ in range(500):
            connection.execute("INSERT INTO notes(body) VALUES (?)", ["x" * 200])
    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    root = connection.execute("SELECT rootpage FROM sqlite_schema WHERE name = 'notes'")
    page = root.fetchall()[0][0] + 3  # a leaf page of the table, past its root
    page_size = int(connection.execute("PRAGMA page_size").fetchall()[0][0])
    connection.close()
    data = bytearray(path.read_bytes())
    start = (page - 1) * page_size
    data[start : start + 64] = b"\xff" * 64  # smash the page header and cell pointers
    path.write_bytes(bytes(data))
    with atlas.open(path, verify_on_restart=False, cache=False) as db:
        assert db.wal.verify(full=True) is False
        assert db.errors.verify().unchecked is False
