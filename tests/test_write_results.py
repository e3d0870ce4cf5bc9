"""What a WriteResult reports, by every route a write takes through the writer.

``rowcount``: the rows the statement(s) inserted, updated or deleted (``sqlite3_changes``),
never those its triggers or foreign-key actions changed. ``lastrowid``: the rowid of the
last row the write itself inserted, or None if it inserted none, never a rowid left
over from an earlier statement (another caller's, in a group-committed batch).

Each case runs 50 times: a statement takes other paths through the writer after its
first runs (untimed, and run in place by ``write_units``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import atlas_actors as atlas
from atlas_actors.errors import ConstraintError, ParameterError

RUNS = 50
R = atlas.WriteResult

SCHEMA = """
CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT UNIQUE);
CREATE TABLE audit(id INTEGER PRIMARY KEY, v TEXT);
INSERT INTO audit(id, v) VALUES (100000, 'seed');  -- its rowids far from t's
CREATE TRIGGER t_audit AFTER INSERT ON t BEGIN INSERT INTO audit(v) VALUES (new.v); END;
CREATE TABLE u(id INTEGER PRIMARY KEY, k TEXT UNIQUE, n INTEGER NOT NULL DEFAULT 0);
INSERT INTO u(id, k) VALUES (1, 'k');
CREATE TRIGGER u_audit AFTER UPDATE ON u BEGIN INSERT INTO audit(v) VALUES ('u'); END;
CREATE TABLE wr(k TEXT PRIMARY KEY, v) WITHOUT ROWID;
CREATE TABLE parent(id INTEGER PRIMARY KEY, tag TEXT UNIQUE);
CREATE TABLE child(
    id INTEGER PRIMARY KEY,
    parent INTEGER NOT NULL REFERENCES parent(id) ON DELETE CASCADE,
    tag TEXT UNIQUE
);
"""


def _open(open_storage: Callable[..., atlas.Storage]) -> atlas.Storage:
    db = open_storage(synchronous="NORMAL")
    db.execute(SCHEMA)
    return db


def _rowid(db: atlas.Storage, table: str, column: str, value: str) -> int:
    rowid: int = db.query(f"SELECT id FROM {table} WHERE {column} = ?", [value])[0][0]
    return rowid


# -- write_many ---------------------------------------------------------------------------


def _by_write_many(db: atlas.Storage, sql: str, sets: list[Any]) -> atlas.WriteResult:
    return db.write_many(sql, sets)


def _by_executemany(db: atlas.Storage, sql: str, sets: list[Any]) -> atlas.WriteResult:
    return db.writer.executemany(sql, sets).get(10)


@pytest.mark.parametrize("run", [_by_write_many, _by_executemany], ids=["write_many", "future"])
def test_write_many_counts_the_rows_of_its_statement_not_of_triggers_and_cascades(
    open_storage: Callable[..., atlas.Storage],
    run: Callable[[atlas.Storage, str, list[Any]], atlas.WriteResult],
) -> None:
    db = _open(open_storage)
    for i in range(RUNS):
        sets = [[f"a{i}"], [f"b{i}"], [f"c{i}"]]
        inserted = run(db, "INSERT INTO t(v) VALUES (?)", sets)  # (each: one audit row)
        assert inserted == R(3, _rowid(db, "t", "v", f"c{i}")), i
        returning = run(db, "INSERT INTO t(v) VALUES (?) RETURNING id", [[f"d{i}"], [f"e{i}"]])
        assert returning == R(2, _rowid(db, "t", "v", f"e{i}")), i
        updated = run(db, "UPDATE u SET n = ? WHERE k = 'k'", [[1], [2]])  # (each: an audit row)
        assert updated == R(2, None), i
        parents = run(db, "INSERT INTO parent(tag) VALUES (?)", [[f"p{i}"], [f"q{i}"]])
        assert parents.rowcount == 2, i
        for tag in (f"p{i}", f"q{i}"):
            db.write(
                "INSERT INTO child(parent, tag) SELECT id, tag || '.' || n FROM parent, "
                "(SELECT 1 AS n UNION ALL SELECT 2) WHERE tag = ?",
                [tag],
            )
        deleted = run(db, "DELETE FROM parent WHERE tag = ?", [[f"p{i}"], [f"q{i}"]])
        assert deleted == R(2, None), i  # (their four children went by cascade)
        assert db.query("SELECT count(*) FROM child") == [(0,)]
        no_rowid = run(db, "INSERT INTO wr(k) VALUES (?)", [[f"w{i}"], [f"x{i}"]])
        assert no_rowid == R(2, None), i
        # The last row inserted by the write: the first set's, the second was ignored.
        ignored = run(db, "INSERT OR IGNORE INTO t(v) VALUES (?)", [[f"f{i}"], [f"a{i}"]])
        assert ignored == R(1, _rowid(db, "t", "v", f"f{i}")), i
        nothing = run(db, "INSERT OR IGNORE INTO t(v) VALUES (?)", [[f"a{i}"], [f"b{i}"]])
        assert nothing == R(0, None), i


def test_a_failing_set_of_write_many_raises_typed_and_undoes_every_set(
    open_storage: Callable[..., atlas.Storage],
) -> None:
    db = _open(open_storage)
    db.write("INSERT INTO t(v) VALUES ('taken')")
    audited = db.query("SELECT count(*) FROM audit")
    for _ in range(5):
        with pytest.raises(ConstraintError, match="UNIQUE"):
            db.write_many("INSERT INTO t(v) VALUES (?)", [["new"], ["taken"], ["other"]])
        assert db.query("SELECT v FROM t") == [("taken",)]
        assert db.query("SELECT count(*) FROM audit") == audited
    with pytest.raises(ParameterError, match="bindings"):
        db.write_many("INSERT INTO t(v) VALUES (?)", [["new"], ["other", "extra"]])
    assert db.query("SELECT v FROM t") == [("taken",)]
    # The writer goes on, its counts right.
    assert db.write_many("INSERT INTO t(v) VALUES (?)", [["new"], ["other"]]).rowcount == 2


def test_results_with_atlas_open_and_its_default_settings(tmp_path: Path) -> None:
    # Through atlas.open itself, not the fixture: the writer's own settings.
    with atlas.open(tmp_path / "w.db") as db:
        db.execute(SCHEMA)
        assert db.write_many("INSERT INTO t(v) VALUES (?)", [["a"], ["b"], ["c"]]) == R(3, 3)
        assert db.write("INSERT INTO wr(k) VALUES ('k')") == R(1, None)


# -- lastrowid ---------------------------------------------------------------------------


Statement = tuple[str, Any]
Route = Callable[[atlas.Storage, list[Statement]], list[atlas.WriteResult]]


def _by_write(db: atlas.Storage, statements: list[Statement]) -> list[atlas.WriteResult]:
    return [db.write(sql, params) for sql, params in statements]


def _by_write_all(db: atlas.Storage, statements: list[Statement]) -> list[atlas.WriteResult]:
    return db.write_all(statements)


def _by_futures(db: atlas.Storage, statements: list[Statement]) -> list[atlas.WriteResult]:
    # All queued before the first is awaited: the writer runs them as one group
    # (write_units), each a caller of its own.
    futures = [db.writer.execute(sql, params) for sql, params in statements]
    return [future.get(10) for future in futures]


def _by_transaction(db: atlas.Storage, statements: list[Statement]) -> list[atlas.WriteResult]:
    with db.transaction() as tx:
        return [tx.execute(sql, params) for sql, params in statements]


ROUTES: dict[str, Route] = {
    "write": _by_write,
    "write_all": _by_write_all,
    "futures": _by_futures,
    "transaction": _by_transaction,
}


def _run_of_cases(i: int) -> list[tuple[str, str, Any]]:
    """(case, sql, params): one run of every case, in an order where each matters."""
    return [
        ("plain insert (its trigger inserts elsewhere)", "INSERT INTO t(v) VALUES (?)", [f"a{i}"]),
        ("WITHOUT ROWID insert after a rowid insert", "INSERT INTO wr(k) VALUES (?)", [f"w{i}"]),
        ("plain insert", "INSERT INTO t(v) VALUES (?)", [f"b{i}"]),
        (
            "UPSERT taking DO UPDATE after another table's insert",
            "INSERT INTO u(k) VALUES ('k') ON CONFLICT(k) DO UPDATE SET n = n + 1",
            None,
        ),
        ("INSERT OR IGNORE that ignored", "INSERT OR IGNORE INTO u(k) VALUES ('k')", None),
        ("multi-row insert", "INSERT INTO t(v) VALUES (?), (?)", [f"c{i}", f"d{i}"]),
        ("INSERT OR REPLACE", "INSERT OR REPLACE INTO u(id, k, n) VALUES (1, 'k', ?)", [i]),
        ("plain insert", "INSERT INTO t(v) VALUES (?)", [f"e{i}"]),
        (
            "WITH ... INSERT into a WITHOUT ROWID table",
            "WITH x(k) AS (SELECT ?) INSERT INTO wr(k) SELECT k FROM x",
            [f"x{i}"],
        ),
        (
            "INSERT ... RETURNING into a WITHOUT ROWID table",
            "INSERT INTO wr(k) VALUES (?) RETURNING k",
            [f"r{i}"],
        ),
        (
            "UPSERT taking DO UPDATE, RETURNING",
            "INSERT INTO u(k) VALUES ('k') ON CONFLICT(k) DO UPDATE SET n = n + 1 RETURNING id",
            None,
        ),
        (
            "WITH ... INSERT into a rowid table",
            "WITH x(v) AS (SELECT ?) INSERT INTO t(v) SELECT v FROM x",
            [f"f{i}"],
        ),
        (
            # The DELETE frees the highest rowid, so the INSERT takes it again: the
            # same rowid as the last insert's, inserted by this write all the same.
            "script re-inserting the last insert's rowid",
            "DELETE FROM t WHERE v = ?; INSERT INTO t(v) VALUES (?)",
            [f"f{i}", f"g{i}"],
        ),
        ("UPDATE whose trigger inserts", "UPDATE u SET n = n + 1 WHERE k = 'k'", None),
        ("plain insert", "INSERT INTO parent(tag) VALUES (?)", [f"p{i}"]),
        ("WITHOUT ROWID insert", "INSERT INTO wr(k) VALUES (?)", [f"q{i}"]),
        (
            # SQLite's own last insert rowid is still the parent's, as ever.
            "insert reading last_insert_rowid()",
            "INSERT INTO child(parent, tag) VALUES (last_insert_rowid(), ?)",
            [f"h{i}"],
        ),
    ]


def _expected(db: atlas.Storage, i: int) -> list[atlas.WriteResult]:
    def row(table: str, value: str) -> int:
        return _rowid(db, table, "tag" if table in ("parent", "child") else "v", value)

    return [
        R(1, row("t", f"a{i}")),
        R(1, None),
        R(1, row("t", f"b{i}")),
        R(1, None),
        R(0, None),
        R(2, row("t", f"d{i}")),
        R(1, 1),
        R(1, row("t", f"e{i}")),
        R(1, None),
        R(1, None, ((f"r{i}",),)),
        R(1, None, ((1,),)),
        R(1, row("t", f"g{i}")),  # (f{i}'s rowid: g{i} took it)
        R(1, row("t", f"g{i}")),
        R(1, None),
        R(1, row("parent", f"p{i}")),
        R(1, None),
        R(1, row("child", f"h{i}")),
    ]


@pytest.mark.parametrize("route", ROUTES)
def test_lastrowid_is_the_writes_own_insert_or_none_on_every_route_and_run(
    open_storage: Callable[..., atlas.Storage], route: str
) -> None:
    db = _open(open_storage)
    run = ROUTES[route]
    for i in range(RUNS):
        cases = _run_of_cases(i)
        results = run(db, [(sql, params) for _, sql, params in cases])
        expected = _expected(db, i)
        wrong = [
            f"{case}: got {got}, expected {want}"
            for (case, _, _), got, want in zip(cases, results, expected, strict=True)
            if got != want
        ]
        assert not wrong, f"run {i}:\n" + "\n".join(wrong)
        # The child's parent is the parent inserted before it, as SQLite says.
        assert db.query("SELECT parent FROM child WHERE tag = ?", [f"h{i}"]) == [
            (_rowid(db, "parent", "tag", f"p{i}"),)
        ]


def test_a_run_in_writer_function_sees_sqlites_last_insert_rowid(
    open_storage: Callable[..., atlas.Storage],
) -> None:
    db = _open(open_storage)
    for i in range(RUNS):
        inserted = db.write("INSERT INTO t(v) VALUES (?)", [f"a{i}"]).lastrowid
        assert db.write("INSERT INTO wr(k) VALUES (?)", [f"w{i}"]).lastrowid is None
        assert db.write("INSERT OR IGNORE INTO u(k) VALUES ('k')").lastrowid is None
        assert db.run_in_writer(lambda connection: connection.last_insert_rowid()) == inserted


def test_a_batch_of_callers_never_reports_another_callers_rowid(
    open_storage: Callable[..., atlas.Storage],
) -> None:
    # Threads writing at once: the writer runs their writes in groups, so an insert
    # into a WITHOUT ROWID table often follows another caller's insert.
    db = _open(open_storage)
    wrong: list[str] = []

    def work(thread: int) -> None:
        for i in range(RUNS):
            value = f"{thread}.{i}"
            inserted = db.write("INSERT INTO t(v) VALUES (?)", [value])
            if inserted != R(1, _rowid(db, "t", "v", value)):
                wrong.append(f"{value}: {inserted}")
            no_rowid = db.write("INSERT INTO wr(k) VALUES (?)", [value])
            if no_rowid != R(1, None):
                wrong.append(f"wr {value}: {no_rowid}")
            upsert = db.write("INSERT INTO u(k) VALUES ('k') ON CONFLICT(k) DO UPDATE SET n = 0")
            if upsert != R(1, None):
                wrong.append(f"upsert {value}: {upsert}")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not wrong, wrong[:10]


def test_a_failed_insert_leaves_sqlites_last_insert_rowid_as_it_was(
    open_storage: Callable[..., atlas.Storage],
) -> None:
    db = _open(open_storage)
    db.write("INSERT INTO t(v) VALUES ('taken')")
    db.write("INSERT INTO wr(k) VALUES ('taken')")
    for i in range(RUNS):
        with db.transaction() as tx:
            parent = tx.execute("INSERT INTO parent(tag) VALUES (?)", [f"p{i}"]).lastrowid
            with pytest.raises(ConstraintError):
                tx.execute("INSERT INTO t(v) VALUES (?)", ["taken"])
            with pytest.raises(ConstraintError):
                tx.execute("INSERT INTO wr(k) VALUES (?) RETURNING k", ["taken"])
            tx.execute("INSERT INTO child(parent, tag) VALUES (last_insert_rowid(), ?)", [f"h{i}"])
        assert db.query("SELECT parent FROM child WHERE tag = ?", [f"h{i}"]) == [(parent,)]


# -- a trigger that reads the last insert rowid -------------------------------------------


@pytest.mark.parametrize("route", ROUTES)
def test_a_trigger_reading_the_last_insert_rowid_sees_sqlites_value(
    open_storage: Callable[..., atlas.Storage], route: str
) -> None:
    # The rowid mark (a sentinel set before an INSERT, to tell an insert of no rowid row)
    # was what a BEFORE trigger read: -2**63 stored in the user's table. While such a
    # trigger is in the schema no write marks the rowid; created in the same unit as
    # the writes, or dropped later, the writes after it know.
    db = open_storage(cache=False)
    db.execute("CREATE TABLE p(id INTEGER PRIMARY KEY, tag TEXT)")
    db.execute("CREATE TABLE c(id INTEGER PRIMARY KEY, tag TEXT)")
    db.execute("CREATE TABLE seen(tag TEXT, rowid_then INTEGER)")
    db.execute("CREATE TABLE nr(k TEXT PRIMARY KEY) WITHOUT ROWID")
    trigger = (
        "CREATE TRIGGER remember BEFORE INSERT ON c BEGIN "
        "INSERT INTO seen VALUES (new.tag, last_insert_rowid()); END"
    )
    run = ROUTES[route]
    for i in range(RUNS):  # (past a statement's first runs, the writer's in-place path)
        statements: list[Statement] = [("INSERT INTO p(tag) VALUES (?)", [f"p{i}"])]
        if i == 0:
            statements.insert(0, (trigger, None))  # created in the same unit
        statements.append(("INSERT INTO c(tag) VALUES (?)", [f"c{i}"]))
        results = run(db, statements)
        parent = _rowid(db, "p", "tag", f"p{i}")
        assert results[-2].lastrowid == parent
        assert db.query("SELECT rowid_then FROM seen WHERE tag = ?", [f"c{i}"]) == [(parent,)]
    assert db.write_many("INSERT INTO c(tag) VALUES (?)", [["m1"], ["m2"]]).rowcount == 2
    assert [row[0] for row in db.query("SELECT rowid_then FROM seen WHERE tag LIKE 'm%'")] == [
        _rowid(db, "c", "tag", f"c{RUNS - 1}"),
        _rowid(db, "c", "tag", "m1"),
    ]
    db.execute("DROP TRIGGER remember")
    db.write("INSERT INTO p(tag) VALUES ('after')")
    for _ in range(RUNS):  # marked again: an insert of no rowid row says so
        assert run(db, [("INSERT INTO nr VALUES (?)", [f"k{_}"])])[0].lastrowid is None
