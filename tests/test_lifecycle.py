"""Opening and closing: idempotent close, typed errors after it, failing opens."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import apsw
import pytest

import atlas_actors as atlas
from atlas_actors.errors import AtlasError, StorageClosedError, StorageUnavailable, ValidationError
from atlas_actors.handles import SupervisorHandle
from tests.helpers import wait_until


def test_close_is_idempotent_and_later_calls_raise_storage_closed(db_path: Path) -> None:
    db = atlas.open(db_path)
    db.execute("CREATE TABLE t(x)")
    db.close()
    db.close()
    with pytest.raises(StorageClosedError, match="open it again"):
        db.write("INSERT INTO t VALUES (1)")
    with pytest.raises(StorageClosedError):
        db.query("SELECT 1")
    with pytest.raises(StorageClosedError):
        db.writer.execute("INSERT INTO t VALUES (1)")
    assert db.health().status == "closed"


def test_queued_writes_are_committed_before_close_returns(db_path: Path) -> None:
    db = atlas.open(db_path)
    db.execute("CREATE TABLE t(x)")
    futures = [db.writer.execute("INSERT INTO t VALUES (?)", [i]) for i in range(200)]
    db.close()
    assert all(f.get(1).rowcount == 1 for f in futures)
    with atlas.open(db_path) as again:
        assert again.query("SELECT count(*) FROM t") == [(200,)]


def test_opening_an_impossible_path_fails_fast_with_a_typed_error(tmp_path: Path) -> None:
    with pytest.raises(AtlasError, match="does not exist"):
        atlas.open(tmp_path / "missing-dir" / "db.sqlite", default_timeout=5)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        # SQLite said only "unable to open database file" for these two.
        ("adir", r"'.*adir'\): that is a directory; pass the path of a database file, e\.g\. "),
        (
            "no/such/dir/x.db",
            r"the directory '.*no/such/dir' does not exist \(.*-wal and -shm.*\); create it",
        ),
        # "journal_mode could not be set to WAL (got 'memory')" for these.
        (":memory:", r"needs a database file .* not a temporary or in-memory database"),
        ("file::memory:?cache=shared", r"not a temporary or in-memory database"),
        ("", r"needs a database file"),
    ],
)
def test_a_path_no_storage_can_use_is_refused_before_sqlite_with_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, message: str
) -> None:
    (tmp_path / "adir").mkdir()
    monkeypatch.chdir(tmp_path)  # (a relative name is looked up there)
    with pytest.raises(ValidationError, match=message):
        atlas.open(str(tmp_path / name) if name.startswith(("adir", "no/")) else name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir"]  # nothing created


@pytest.mark.parametrize("exists", [False, True])
def test_a_read_only_directory_is_named_with_the_wal_files_it_must_hold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exists: bool
) -> None:
    directory = tmp_path / "ro"
    directory.mkdir()
    path = directory / "a.db"
    if exists:
        with atlas.open(path) as db:  # closed: its -wal and -shm files are removed
            db.execute("CREATE TABLE t(x)")
    if os.geteuid() == 0:
        # Root may write anywhere but on a read-only mount; make os.access answer as
        # it does there.
        access = os.access
        monkeypatch.setattr(
            os,
            "access",
            lambda name, mode: (
                not mode & os.W_OK and access(name, mode)
                if os.fspath(name).startswith(str(directory))
                else access(name, mode)
            ),
        )
    else:
        directory.chmod(0o555)
    try:
        needed = "the -wal and -shm files" if exists else "the database file, and the -wal"
        with pytest.raises(StorageUnavailable, match=f"directory '{directory}' is not writable"):
            atlas.open(path)
        with pytest.raises(StorageUnavailable, match=f"must create {needed}.*make the directory"):
            atlas.open(path)
    finally:
        directory.chmod(0o755)


def test_the_file_is_in_wal_mode_with_the_configured_durability(db: atlas.Storage) -> None:
    assert db.run_in_writer(lambda c: c.pragma("journal_mode")) == "wal"
    assert db.run_in_writer(lambda c: c.pragma("synchronous")) == 2  # FULL
    with db.pool.connection() as reader:
        assert reader.query("PRAGMA query_only")[0][0] == 1


def test_health_reports_ok_with_the_pool_and_writer(db: atlas.Storage) -> None:
    health = db.health()
    assert health.status == "ok" and health.failure is None
    assert health.writer is not None and health.writer.state == "running"
    assert health.pool.total >= 2


def test_threads_are_named_after_their_role_and_database(db: atlas.Storage) -> None:
    names = {t.name for t in threading.enumerate()}
    assert "writer:atlas.db#1" in names and "reader-0:atlas.db#1" in names
    assert "supervisor:atlas.db" in names


def test_the_supervisor_handle_of_a_closed_storage_raises_storage_closed(db_path: Path) -> None:
    db = atlas.open(db_path)
    unbound = SupervisorHandle(db._supervisor_ref, 1.0)  # (no storage to ask)
    assert {child.role for child in db.supervisor.status().children} >= {"writer"}
    db.close()
    with pytest.raises(StorageClosedError, match="open it again"):
        db.supervisor.status()
    with pytest.raises(StorageClosedError):
        db.supervisor.kill("writer")
    with pytest.raises(StorageUnavailable, match=r"status\(\): the storage's supervisor has"):
        unbound.status()


def test_opening_a_file_that_is_no_database_makes_nothing_next_to_it(tmp_path: Path) -> None:
    """Refused before the storage starts: no cache directory is left behind."""
    notes = tmp_path / "notes.txt"
    notes.write_text("just text, not a database\n" * 100)
    with pytest.raises(AtlasError, match="not a database"):
        atlas.open(notes)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    # A directory that was there before stays.
    kept = tmp_path / "kept"
    kept.mkdir()
    with pytest.raises(AtlasError):
        atlas.open(notes, cache_dir=kept)
    assert kept.is_dir()


def test_the_wal_can_be_watched_while_the_storage_closes(tmp_path: Path) -> None:
    """wal.monitor() reads the wal-index mapping, which close() unmaps: never a raw error."""
    for n in range(10):
        db = atlas.open(tmp_path / f"w{n}.db", cache=False)
        db.execute("CREATE TABLE t(x)")
        failures: list[BaseException] = []
        stop = threading.Event()

        def watch(
            db: atlas.Storage = db,
            stop: threading.Event = stop,
            failures: list[BaseException] = failures,
        ) -> None:
            while not stop.is_set():
                try:
                    db.wal.monitor()
                except BaseException as error:
                    failures.append(error)

        watcher = threading.Thread(target=watch)
        watcher.start()
        db.close()
        stop.set()
        watcher.join(5)
        assert failures == []


def test_a_close_while_another_thread_closes_returns_once_the_storage_is_closed(
    db_path: Path,
) -> None:
    """The second close() returned at once while the first still ran the queued writes:
    the writer went on committing (and acknowledging) into a file its caller took for
    closed (a review: 5,000 rows in the file, 200,000 acknowledged later)."""
    db = atlas.open(db_path, cache=False)
    db.execute("CREATE TABLE t(x)")
    futures = [
        db.writer.executemany("INSERT INTO t VALUES (?)", [[n] for n in range(2000)])
        for _ in range(40)
    ]
    first = threading.Thread(target=db.close)
    first.start()
    time.sleep(0.01)
    db.close()  # the second
    assert all(future.done() for future in futures)  # (the first close ran them all)
    reader = apsw.Connection(str(db_path))
    try:
        assert reader.execute("SELECT count(*) FROM t").fetchall() == [(40 * 2000,)]
    finally:
        reader.close()
    assert sum(future.get(0).rowcount for future in futures) == 40 * 2000
    first.join(10)


@pytest.mark.parametrize("spelling", ["rel.db", "file:rel.db?cache=private"])
def test_a_relative_path_keeps_its_file_when_the_working_directory_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spelling: str
) -> None:
    """Every restarted actor opens its connection again: with the path kept as given, a
    writer restarted after a chdir created an empty file in the new directory and wrote
    there ("no such table"), splitting the database in two."""
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    monkeypatch.chdir(first)
    with atlas.open(spelling, readers=2) as db:
        db.execute("CREATE TABLE t(x)")
        db.write("INSERT INTO t VALUES (1)")
        monkeypatch.chdir(second)
        restarts = db.supervisor.status().restarts
        for role in ("writer", "reader-0", "reader-1"):
            db.supervisor.kill(role)
        assert wait_until(lambda: db.supervisor.status().restarts >= restarts + 3)
        db.write("INSERT INTO t VALUES (2)")
        assert db.query("SELECT x FROM t ORDER BY x") == [(1,), (2,)]
        assert str(first) in db.path
    assert not (second / "rel.db").exists()


def test_a_name_starting_with_upper_case_file_colon_is_a_file_name_not_a_uri(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite reads a URI only from a lower-case "file:"; "FILE:x.db" is a file of that
    name. Taken for a URI, it was made "FILE:/abs/dir/x.db", which could not be opened."""
    monkeypatch.chdir(tmp_path)
    with atlas.open("FILE:upper.db") as db:
        db.execute("CREATE TABLE t(x)")
        assert db.path == str(tmp_path / "FILE:upper.db")
    assert (tmp_path / "FILE:upper.db").exists()
