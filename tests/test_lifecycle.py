"""Opening and closing: idempotent close, typed errors after it, failing opens."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

import atlas_actors as atlas
from atlas_actors.errors import AtlasError, StorageClosedError, StorageUnavailable
from atlas_actors.handles import SupervisorHandle


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
    with pytest.raises(AtlasError, match="unable to open"):
        atlas.open(tmp_path / "missing-dir" / "db.sqlite", default_timeout=5)


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
