"""What a WriteResult reports, by every route a write takes through the writer.

``rowcount``: the rows the statement(s) inserted, updated or deleted (``sqlite3_changes``),
never those its triggers or foreign-key actions changed.

Each case runs 50 times: a statement takes other paths through the writer after its
first runs.
"""

from __future__ import annotations

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
        assert no_rowid.rowcount == 2, i
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
