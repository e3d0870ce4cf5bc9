"""Where table sizes and column figures come from: sqlite_stat1, count(*) and samples."""

from __future__ import annotations

from pathlib import Path

import apsw
import pytest

from atlas_actors.query import Optimizer
from atlas_actors.query.schema import Schema
from atlas_actors.query.stats import Stats, collect


def _table_with_partial_index(tmp_path: Path, *, other_index: bool) -> apsw.Connection:
    """5,000 rows; ``t_flagged`` is a partial index that holds none of them."""
    conn = apsw.Connection(str(tmp_path / "partial.db"))
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, a INT, b TEXT)")
    if other_index:
        conn.execute("CREATE INDEX t_b ON t(b)")
    conn.execute("CREATE INDEX t_flagged ON t(b) WHERE a > 1000")
    with conn:
        conn.executemany(
            "INSERT INTO t(a, b) VALUES (?, ?)", [(i % 97, f"b{i}") for i in range(5000)]
        )
    return conn


def test_a_partial_index_stat1_count_is_not_the_table_row_count(tmp_path: Path) -> None:
    # SQLite takes a table's size from its NULL row or a non-partial index's row only
    # (analyze.c, analysisLoader): the partial index's "0 0" says nothing about t.
    conn = _table_with_partial_index(tmp_path, other_index=True)
    conn.execute("ANALYZE")
    stat1 = conn.execute("SELECT idx, stat FROM sqlite_stat1 ORDER BY rowid").fetchall()
    assert stat1 == [("t_flagged", "0 0"), ("t_b", "5000 1")]  # the partial one first
    stats = Stats.from_connection(conn, Schema.from_connection(conn))
    assert stats.table("t").rows == 5000
    assert stats.rows_per_key("t", "t_flagged", 1) == 1  # the partial index keeps its own
    opt = Optimizer(lambda fn: fn(conn))
    sql = "SELECT * FROM t WHERE a = 5"
    assert opt.analyze(sql).estimated_rows > 10
    assert [s.columns for s in opt.suggest_indexes(sql)] == [("a",)]


def test_a_table_stat1_knows_only_by_a_partial_index_is_counted(tmp_path: Path) -> None:
    # "ANALYZE t_flagged" writes that index's row only: the table's size is not in stat1.
    conn = _table_with_partial_index(tmp_path, other_index=False)
    conn.execute("ANALYZE t_flagged")
    assert conn.execute("SELECT tbl, idx, stat FROM sqlite_stat1").fetchall() == [
        ("t", "t_flagged", "0 0")
    ]
    schema = Schema.from_connection(conn)
    found = collect(conn, schema, columns={"t": ["a"]})
    assert found.sizes == {"t": 5000.0}
    assert ("t", None, "5000") in found.measured
    assert found.column_rows["t"]["a"] == pytest.approx(5000 / 97, rel=0.5)
    stats = Stats.from_connection(conn, schema)
    assert stats.table("t").rows == 5000
    # Stats.build reads stat1 the same way when no size is measured
    assert Stats.build(schema, found.stat1, {}).table("t").rows != 0


@pytest.mark.parametrize("unique", ["", "UNIQUE"])
def test_a_partial_index_says_nothing_of_its_column_over_the_table(
    tmp_path: Path, unique: str
) -> None:
    # t_ap holds no row: its "0 0" (or its uniqueness) is about the rows a > 1000 only.
    conn = apsw.Connection(str(tmp_path / "partial_column.db"))
    conn.execute(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, a INT, b TEXT); CREATE INDEX t_b ON t(b);"
        f"CREATE {unique} INDEX t_ap ON t(a) WHERE a > 1000"
    )
    with conn:
        conn.executemany(
            "INSERT INTO t(a, b) VALUES (?, ?)", [(i % 97, f"b{i}") for i in range(5000)]
        )
    conn.execute("ANALYZE")
    stats = Stats.from_connection(conn, Schema.from_connection(conn))
    assert stats.eq_rows("t", "a") is None
    assert stats.eq_rows("t", "b") == 1  # a full index still tells
    plan = Optimizer(lambda fn: fn(conn)).analyze("SELECT * FROM t WHERE a = 5")
    assert plan.estimated_rows == pytest.approx(5000 / 97, rel=0.5)  # sampled: 52 real
