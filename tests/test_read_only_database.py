"""A database file (or directory) this process may not write: served read-only, or refused.

Real files and real permissions. Root ignores permission bits, so as root the file (or
directory) is also made immutable (``chattr +i``), which binds root as well; where that
cannot be done the test is skipped and says why.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import apsw
import pytest

import atlas_actors as atlas
from atlas_actors.errors import ReadOnlyError, StorageUnavailable
from atlas_actors.storage import _read_only_uri_parameters

MakeReadOnly = Callable[[Path], None]


def _refuses_writes(path: Path) -> bool:
    """Whether this process really cannot write ``path`` (a file or a directory)."""
    try:
        if path.is_dir():
            probe = path / ".write-probe"
            probe.touch()
            probe.unlink()
        else:
            os.close(os.open(path, os.O_RDWR))
    except OSError:
        return True
    return False


@pytest.fixture
def make_read_only() -> Iterator[MakeReadOnly]:
    """``make_read_only(path)``: chmod a-w (and, as root, chattr +i); undone afterwards."""
    done: list[tuple[Path, int, bool]] = []

    def _make(path: Path) -> None:
        mode = path.stat().st_mode & 0o7777
        path.chmod(mode & ~0o222)
        immutable = False
        if os.geteuid() == 0:
            # Root writes whatever the mode bits say; the immutable attribute stops it.
            chattr = shutil.which("chattr")
            if chattr is None:
                path.chmod(mode)
                pytest.skip("running as root without chattr: no way to make a file read-only")
            result = subprocess.run([chattr, "+i", str(path)], capture_output=True, text=True)
            if result.returncode != 0:
                path.chmod(mode)
                pytest.skip(f"running as root and chattr +i failed: {result.stderr.strip()}")
            immutable = True
        done.append((path, mode, immutable))
        if not _refuses_writes(path):
            pytest.skip(f"{path} is still writable for this process after chmod a-w")

    yield _make
    for path, mode, immutable in reversed(done):
        if immutable:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        path.chmod(mode)


def _wal_database(path: Path) -> None:
    """A database made by atlas (WAL mode), closed: no -wal or -shm file left."""
    with atlas.open(path) as db:
        db.execute("CREATE TABLE t(x)")
        db.write("INSERT INTO t VALUES (1)")


def _rollback_database(path: Path) -> None:
    """A database in rollback-journal mode, as the sqlite3 shell or module makes them."""
    connection = sqlite3.connect(path)
    try:
        connection.execute("CREATE TABLE t(x)")
        connection.execute("INSERT INTO t VALUES (1)")
        connection.commit()
    finally:
        connection.close()


@pytest.fixture
def read_only_db(
    db_path: Path, make_read_only: MakeReadOnly, open_storage: Callable[..., atlas.Storage]
) -> atlas.Storage:
    _wal_database(db_path)
    make_read_only(db_path)
    return open_storage()


def test_a_read_only_file_opens_serves_reads_and_says_so_at_once(
    read_only_db: atlas.Storage, db_path: Path
) -> None:
    db = read_only_db
    health = db.health()
    assert health.status == "read_only"
    assert health.failure is not None
    assert "read-only" in health.failure
    assert f"chmod u+w {db_path}" in health.failure
    assert db.query("SELECT x FROM t") == [(1,)]
    assert db.submit_query("SELECT count(*) FROM t").get(5) == [(1,)]
    with db.transaction(isolation="repeatable_read") as tx:
        assert tx.query("SELECT x FROM t") == [(1,)]
    # A check of the file that passes lifts a stop for corruption, never this one.
    assert db.resume_writes() is False
    assert db.health().status == "read_only"
    # Metrics say which it is (a dashboard's "writes stopped" panel is for the check).
    snapshot = db.metrics.snapshot()
    assert snapshot["storage.read_only"] == 1.0
    assert snapshot["storage.writes_stopped"] == 0.0


_WRITES: dict[str, Callable[[atlas.Storage], Any]] = {
    "write": lambda db: db.write("INSERT INTO t VALUES (2)"),
    "execute": lambda db: db.execute("CREATE TABLE u(y)"),
    "write_many": lambda db: db.write_many("INSERT INTO t VALUES (?)", [[2], [3]]),
    "write_all": lambda db: db.write_all([("INSERT INTO t VALUES (2)", None)]),
    "writer.execute": lambda db: db.writer.execute("INSERT INTO t VALUES (2)").get(5),
    "writer.write_all": lambda db: db.writer.write_all([("DELETE FROM t", None)]).get(5),
    "run_in_writer": lambda db: db.run_in_writer(lambda c: c.execute("DELETE FROM t")),
    "serializable": lambda db: db.transactions.run(
        lambda tx: tx.execute("INSERT INTO t VALUES (2)"), retries=0
    ),
    "repeatable_read": lambda db: db.transactions.run(
        lambda tx: (tx.query("SELECT 1"), tx.execute("INSERT INTO t VALUES (2)")),
        isolation="repeatable_read",
        retries=0,
    ),
    "checkpoint": lambda db: db.wal.checkpoint(),
}


@pytest.mark.parametrize("call", list(_WRITES))
def test_every_write_fails_fast_in_the_caller_with_what_to_do(
    read_only_db: atlas.Storage, db_path: Path, call: str
) -> None:
    db = read_only_db
    started = db.writer_counters.started
    errors = db.metrics.get("errors.read_only")
    for attempt in range(2):
        begun = time.monotonic()
        with pytest.raises(ReadOnlyError) as caught:
            _WRITES[call](db)
        assert time.monotonic() - begun < 1.0
        message = str(caught.value)
        assert f"{str(db_path)!r} is read-only" in message
        assert "make the file and its directory writable" in message
        assert f"chmod u+w {db_path}" in message
        assert "open the storage again" in message
        # Each refusal is its own error, reported (logged, counted) on its own.
        assert db.metrics.get("errors.read_only") == errors + attempt + 1
    assert db.writer_counters.started == started  # never queued into the writer
    assert db.query("SELECT x FROM t") == [(1,)]  # and the runtime keeps serving


def test_a_read_only_file_in_rollback_journal_mode_is_served_without_the_cache(
    db_path: Path,
    make_read_only: MakeReadOnly,
    open_storage: Callable[..., atlas.Storage],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # What the sqlite3 module makes, and what is often shipped read-only. It cannot be
    # put in WAL mode, and without a wal-index no other process's writes could be seen:
    # reads are not cached.
    _rollback_database(db_path)
    make_read_only(db_path)
    with caplog.at_level(logging.INFO, logger="atlas_actors.storage"):
        db = open_storage()
    assert db.health().status == "read_only"
    assert db.config.cache is False
    assert "result cache is off" in caplog.text
    assert db.query("SELECT x FROM t") == [(1,)]
    with pytest.raises(ReadOnlyError, match="chmod u\\+w"):
        db.write("INSERT INTO t VALUES (2)")
    assert not (db_path.parent / f"{db_path.name}-wal").exists()


def test_a_read_only_rollback_file_in_a_read_only_directory_is_served(
    tmp_path: Path, make_read_only: MakeReadOnly, open_storage: Callable[..., atlas.Storage]
) -> None:
    # Shipped data in a read-only directory: no -wal or -shm file is needed to read it.
    directory = tmp_path / "ro"
    directory.mkdir()
    path = directory / "data.db"
    _rollback_database(path)
    make_read_only(path)
    make_read_only(directory)
    db = open_storage(path)
    assert db.health().status == "read_only"
    assert db.query("SELECT x FROM t") == [(1,)]
    with pytest.raises(ReadOnlyError, match=f"chmod u\\+w {path} {directory}"):
        db.write("INSERT INTO t VALUES (2)")
    assert sorted(p.name for p in directory.iterdir()) == ["data.db"]


def test_a_read_only_wal_file_in_a_read_only_directory_is_refused_with_what_to_do(
    tmp_path: Path, make_read_only: MakeReadOnly
) -> None:
    # WAL needs a -shm file next to the database even to read it: it cannot work here.
    directory = tmp_path / "ro"
    directory.mkdir()
    path = directory / "data.db"
    _wal_database(path)
    make_read_only(path)
    make_read_only(directory)
    begun = time.monotonic()
    with pytest.raises(StorageUnavailable) as caught:
        atlas.open(path, default_timeout=5)
    assert time.monotonic() - begun < 1.0
    message = str(caught.value)
    assert f"its directory '{directory}' is not writable" in message
    assert "-wal and -shm" in message
    assert "PRAGMA journal_mode=DELETE" in message  # how to ship it read-only


def test_a_read_only_wal_file_next_to_a_writable_database_is_named(
    db_path: Path, make_read_only: MakeReadOnly, open_storage: Callable[..., atlas.Storage]
) -> None:
    # Another process keeps the -wal file there; SQLite opens it read-only, and with it
    # the database, though the database file itself is writable.
    other = apsw.Connection(str(db_path))
    try:
        other.execute("PRAGMA journal_mode=WAL").fetchall()
        other.execute("CREATE TABLE t(x); INSERT INTO t VALUES (1)").fetchall()
        wal = db_path.parent / f"{db_path.name}-wal"
        make_read_only(wal)
        db = open_storage()
        health = db.health()
        assert health.status == "read_only"
        assert health.failure is not None
        assert f"could not open {wal} for writing" in health.failure
        assert f"chmod u+w {db_path} {wal} {db_path.parent}" in health.failure
        assert db.query("SELECT x FROM t") == [(1,)]
        with pytest.raises(ReadOnlyError, match=f"could not open {wal} for writing"):
            db.write("INSERT INTO t VALUES (2)")
        assert db.writer_counters.started == 0
        db.close()
    finally:
        other.close()


def test_a_uri_opened_read_only_gives_a_read_only_storage(
    db_path: Path, open_storage: Callable[..., atlas.Storage]
) -> None:
    # SQLite's own read-only open (mode=ro), which needs no permission change.
    _wal_database(db_path)
    db = open_storage(f"file:{db_path}?mode=ro")
    assert db.health().status == "read_only"
    assert db.query("SELECT x FROM t") == [(1,)]
    with pytest.raises(ReadOnlyError, match="is read-only") as refused:
        db.write("INSERT INTO t VALUES (2)")
    # The file is writable: the advice is about the URI, not about permissions.
    assert "its URI asks for it (mode=ro)" in str(refused.value)
    assert "chmod" not in str(refused.value) and "chmod" not in (db.health().failure or "")
    with atlas.open(db_path) as writable:
        assert writable.health().status == "ok"
        writable.write("INSERT INTO t VALUES (3)")
    assert db.query("SELECT x FROM t ORDER BY x") == [(1,), (3,)]


@pytest.mark.parametrize(
    ("query", "blamed"),
    [
        ("mode=ro", ["mode=ro"]),
        ("immutable=1", ["immutable=1"]),
        ("immutable=yes", ["immutable=yes"]),
        ("mode=ro&immutable=on", ["mode=ro", "immutable=on"]),
        ("immutable=no", []),  # (false for SQLite: a read-only file is then another cause)
        ("immutable=0", []),
        ("immutable=off", []),
        ("mode=rw", []),
    ],
)
def test_only_uri_parameters_sqlite_reads_as_read_only_are_blamed(
    query: str, blamed: list[str]
) -> None:
    assert _read_only_uri_parameters(f"file:/data/atlas.db?{query}") == blamed
