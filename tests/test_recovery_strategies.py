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


@pytest.fixture
def vfs() -> Iterator[FaultyVFS]:
    faulty = FaultyVFS()
    yield faulty
    faulty.unregister()


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
