"""The write API: write, execute, write_many, write_all, run_in_writer, the future API."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import apsw
import pytest

import atlas_actors as atlas
from atlas_actors.errors import ConstraintError, DiskFullError


def test_write_returns_rowcount_and_the_inserted_rowid(db: atlas.Storage) -> None:
    first = db.write("INSERT INTO tasks(title) VALUES (?)", ["a"])
    second = db.write("INSERT INTO tasks(title) VALUES (?)", ["b"])
    assert first == atlas.WriteResult(rowcount=1, lastrowid=1)
    assert second.lastrowid == 2
    updated = db.write("UPDATE tasks SET status = 'done'")
    assert updated.rowcount == 2 and updated.lastrowid is None


def test_lastrowid_is_reported_even_when_an_insert_reuses_the_previous_rowid(
    db: atlas.Storage,
) -> None:
    sql = "INSERT OR REPLACE INTO tasks(id, title) VALUES (5, ?)"
    assert db.write(sql, ["a"]).lastrowid == 5
    assert db.write(sql, ["b"]).lastrowid == 5  # replaced: still an insert of row 5
    ignored = db.write("INSERT OR IGNORE INTO tasks(id, title) VALUES (5, 'c')")
    assert ignored == atlas.WriteResult(rowcount=0, lastrowid=None)


def test_lastrowid_follows_inserts_only_whatever_triggers_and_scripts_do(
    db: atlas.Storage,
) -> None:
    db.execute(
        "CREATE TABLE log(x); CREATE TRIGGER logged AFTER UPDATE ON tasks "
        "BEGIN INSERT INTO log VALUES (new.title); END"
    )
    db.write_many("INSERT INTO tasks(title) VALUES (?)", [[str(i)] for i in range(300)])
    # A trigger's inserts leave the last insert rowid as it was: one UPDATE or DELETE
    # never reports one, however many rows it changed (and its trigger inserted).
    assert db.write("UPDATE tasks SET n = 1 WHERE id = 1") == atlas.WriteResult(1, None)
    assert db.write("UPDATE tasks SET n = 2") == atlas.WriteResult(300, None)
    assert db.write("DELETE FROM tasks WHERE id > 290;") == atlas.WriteResult(10, None)
    assert db.write("UPDATE tasks SET title = 'a;b' WHERE id = 2").lastrowid is None
    # A script is more than one statement: its insert is reported.
    script = db.write("UPDATE tasks SET n = 3 WHERE id = 3; INSERT INTO tasks(title) VALUES ('s')")
    assert script.lastrowid == 291
    assert db.write_all(
        [("UPDATE tasks SET n = 4 WHERE id = 4", None), ("DELETE FROM tasks WHERE id = 5", None)]
    ) == [atlas.WriteResult(1, None), atlas.WriteResult(1, None)]


def test_returning_clauses_return_named_rows(db: atlas.Storage) -> None:
    result = db.write("INSERT INTO tasks(title) VALUES (?) RETURNING id, title", ["a"])
    assert result.rows == ((1, "a"),)
    assert result.rows[0]["title"] == "a"


def test_named_parameters_are_bound(db: atlas.Storage) -> None:
    db.write("INSERT INTO tasks(title, n) VALUES (:title, :n)", {"title": "a", "n": 3})
    assert db.query("SELECT n FROM tasks WHERE title = :t", {"t": "a"}) == [(3,)]


def test_write_many_runs_one_statement_per_parameter_set_all_or_nothing(
    db: atlas.Storage,
) -> None:
    result = db.write_many("INSERT INTO tasks(title) VALUES (?)", [["a"], ["b"], ["c"]])
    assert result.rowcount == 3 and result.lastrowid == 3
    with pytest.raises(ConstraintError):
        db.write_many("INSERT INTO tasks(title) VALUES (?)", [["d"], ["a"]])
    assert db.query("SELECT count(*) FROM tasks")[0][0] == 3  # 'd' was undone too


def test_write_all_commits_every_statement_or_none(db: atlas.Storage) -> None:
    results = db.write_all(
        [
            ("INSERT INTO tasks(title) VALUES (?)", ["a"]),
            ("UPDATE tasks SET n = n + 1 WHERE title = ?", ["a"]),
        ]
    )
    assert [r.rowcount for r in results] == [1, 1]
    with pytest.raises(ConstraintError):
        db.write_all(
            [
                ("UPDATE tasks SET n = 100", None),
                ("INSERT INTO tasks(title) VALUES (?)", ["a"]),
            ]
        )
    assert db.query("SELECT title, n FROM tasks") == [("a", 1)]


def test_run_in_writer_runs_a_function_as_one_unit(db: atlas.Storage) -> None:
    def move(connection: apsw.Connection) -> int:
        connection.execute("INSERT INTO tasks(title) VALUES ('x')")
        return connection.last_insert_rowid()

    assert db.run_in_writer(move) == 1

    def half_done(connection: apsw.Connection) -> None:
        connection.execute("INSERT INTO tasks(title) VALUES ('y')")
        raise RuntimeError("changed my mind")

    with pytest.raises(RuntimeError, match="changed my mind"):
        db.run_in_writer(half_done)
    assert db.query("SELECT title FROM tasks") == [("x",)]


def test_a_run_in_writer_functions_errors_are_typed_logged_and_counted(
    db: atlas.Storage, caplog: pytest.LogCaptureFixture
) -> None:
    """SQLite's errors raised in the function reached the caller as raw apsw errors, and
    no error of the function was logged or counted."""

    def duplicate(connection: apsw.Connection) -> None:
        connection.execute("INSERT INTO tasks(id, title) VALUES (1, 'a'), (1, 'b')")

    def buggy(connection: apsw.Connection) -> None:
        raise ValueError("a bug in the function")

    before = db.metrics.get("errors")
    with caplog.at_level(logging.INFO, logger="atlas_actors"):
        with pytest.raises(ConstraintError) as caught:
            db.run_in_writer(duplicate)
        assert isinstance(caught.value.__cause__, apsw.ConstraintError)
        assert caught.value.result_code == apsw.SQLITE_CONSTRAINT
        with pytest.raises(ValueError, match="a bug in the function"):  # its own, as raised
            db.writer.run(buggy).get(5)
    assert db.metrics.get("errors") == before + 2
    assert db.metrics.get("errors.constraint") >= 1
    logged = [r.getMessage() for r in caplog.records if r.name.startswith("atlas_actors")]
    assert sum("UNIQUE constraint failed" in m for m in logged) == 1
    assert sum("a bug in the function" in m for m in logged) == 1
    assert db.query("SELECT count(*) FROM tasks") == [(0,)]


def test_a_run_in_writer_function_finding_the_disk_full_degrades_the_storage(
    open_storage: object,
) -> None:
    db: atlas.Storage = open_storage(  # type: ignore[operator]
        max_page_count=60, disk_full_probe_interval=30
    )
    db.execute("CREATE TABLE blobs(id INTEGER PRIMARY KEY, data BLOB)")

    def fill(connection: apsw.Connection) -> None:
        for i in range(1000):
            connection.execute("INSERT INTO blobs VALUES (?, zeroblob(2000))", [i])

    with pytest.raises(DiskFullError):
        db.run_in_writer(fill)
    assert db.disk_full and db.health().status == "degraded"
    with pytest.raises(DiskFullError, match="writes are refused"):
        db.write("INSERT INTO blobs VALUES (-1, zeroblob(2000))")


def test_the_future_api_resolves_once_the_write_is_acknowledged(db: atlas.Storage) -> None:
    futures = [
        db.writer.execute("INSERT INTO tasks(title) VALUES (?)", [f"t{i}"]) for i in range(50)
    ]
    assert [f.get(timeout=5).rowcount for f in futures] == [1] * 50
    assert db.writer.executemany("UPDATE tasks SET n = ?", [[1], [2]]).get(5).rowcount == 100
    all_results = db.writer.write_all([("DELETE FROM tasks WHERE n = ?", [2])]).get(5)
    assert all_results[0].rowcount == 50
    count = db.writer.run(lambda c: c.execute("SELECT count(*) FROM tasks").fetchall())
    assert count.get(5) == [(0,)]


def test_acknowledged_writes_survive_closing_and_reopening(
    db: atlas.Storage, open_storage: object, db_path: Path
) -> None:
    for i in range(20):
        db.write("INSERT INTO tasks(title) VALUES (?)", [f"t{i}"])
    db.close()
    with atlas.open(db_path) as again:
        assert again.query("SELECT count(*) FROM tasks")[0][0] == 20


def test_writer_stats_count_writes_and_batches(db: atlas.Storage) -> None:
    before = db.writer.stats()
    db.write("INSERT INTO tasks(title) VALUES ('a')")
    after = db.writer.stats()
    assert after.writes == before.writes + 1
    assert after.batches == before.batches + 1
    assert after.mean_batch >= 1


@pytest.mark.parametrize("cache", [True, False])
def test_the_writer_notices_another_connections_commit_at_its_next_batch(
    open_storage: Callable[..., atlas.Storage], db_path: Path, cache: bool
) -> None:
    # The writer version's second part moves only when someone else committed; the
    # writer learns it from the wal-index counter, asking SQLite only when it moved.
    db = open_storage(cache=cache)
    db.execute("CREATE TABLE t(a INTEGER)")
    db.write("INSERT INTO t VALUES (1)")
    quiet = db.writer_version
    for value in (2, 3):
        db.write("INSERT INTO t VALUES (?)", [value])
    assert db.writer_version[1] == quiet[1], "only our own commits: no outside change"
    assert db.writer_version[0] == quiet[0] + 2
    other = apsw.Connection(str(db_path))
    other.execute("INSERT INTO t VALUES (99)")
    other.close()
    db.write("INSERT INTO t VALUES (4)")
    assert db.writer_version[1] != quiet[1], "another connection committed"
    moved = db.writer_version
    db.write("INSERT INTO t VALUES (5)")
    assert db.writer_version[1] == moved[1]
    assert sorted(a for (a,) in db.query("SELECT a FROM t")) == [1, 2, 3, 4, 5, 99]


def test_a_schema_change_made_by_a_function_inside_a_plain_insert_is_noticed(
    open_storage: Callable[..., atlas.Storage],
) -> None:
    # The writer skips its schema check after batches of plain statements; a statement
    # calling a user function is not plain: the function may run DDL.
    db = open_storage()
    db.execute("CREATE TABLE t(a)")

    def register(connection: apsw.Connection) -> None:
        def make_table() -> int:
            connection.execute("CREATE TABLE IF NOT EXISTS made_by_function(x)")
            return 1

        connection.create_scalar_function("make_table", make_table)

    db.run_in_writer(register)
    assert "made_by_function" not in db.schema().tables
    db.write("INSERT INTO t(a) VALUES (make_table())")
    assert "made_by_function" in db.schema().tables
