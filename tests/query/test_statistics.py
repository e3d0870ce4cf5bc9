"""Where table sizes and column figures come from: sqlite_stat1, count(*) and samples."""

from __future__ import annotations

import random
from pathlib import Path

import apsw
import pytest

from atlas_actors.query import Optimizer
from atlas_actors.query.sampling import (
    gee_distinct,
    index_stat_from_sample,
    sample_columns,
    sample_rows,
)
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


def _sparse_table(tmp_path: Path, ids: list[int]) -> apsw.Connection:
    """Rows with the given rowids; ``a`` has 1,000 values, 5 rows each per 5,000 rows."""
    conn = apsw.Connection(str(tmp_path / "sparse.db"))
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, a INT, b TEXT); CREATE INDEX t_b ON t(b)")
    with conn:
        conn.executemany(
            "INSERT INTO t(id, a, b) VALUES (?, ?, ?)",
            [(i, n % 1000, f"b{n}") for n, i in enumerate(ids)],
        )
    return conn


def _random_ids(seed: int, lo: int, hi: int, n: int) -> list[int]:
    rng, ids = random.Random(seed), set[int]()
    while len(ids) < n:
        ids.add(rng.randint(lo, hi))
    return sorted(ids)


SPARSE = {
    "random 62-bit ids": _random_ids(1, 1, 2**62, 5000),
    "negative ids": [-10 * i for i in range(1, 5001)],
    "ids across the whole range": _random_ids(2, -(2**63), 2**63 - 1, 5000),
}


@pytest.mark.parametrize("analyze", [False, True])
@pytest.mark.parametrize("ids", SPARSE.values(), ids=SPARSE.keys())
def test_sparse_rowids_still_give_a_sample(tmp_path: Path, ids: list[int], analyze: bool) -> None:
    conn = _sparse_table(tmp_path, ids)
    if analyze:
        conn.execute("ANALYZE")
    table = Schema.from_connection(conn).table("t")
    picked = sample_rows(conn, table, ["a"], n=2000)
    assert len(picked) >= 1000
    # 5 rows per value over the table: the sample must not look like one value
    stat = index_stat_from_sample(picked, ["BINARY"], 5000)
    assert stat.split()[0] == "5000" and 2 <= int(stat.split()[1]) <= 20
    assert sample_columns(conn, table, ["a"], 5000)["a"] < 50
    opt = Optimizer(lambda fn: fn(conn))
    assert [s.columns for s in opt.suggest_indexes("SELECT * FROM t WHERE a = 5")] == [("a",)]


def test_a_small_sparse_table_is_sampled_whole(tmp_path: Path) -> None:
    ids = _random_ids(3, 1, 2**62, 300)
    conn = _sparse_table(tmp_path, ids)
    table = Schema.from_connection(conn).table("t")
    assert sorted(sample_rows(conn, table, ["id"], n=300)) == sorted((i,) for i in ids)


def test_dense_rowids_are_sampled_by_random_rowid(tmp_path: Path) -> None:
    # rowids 1..30000 with one row in three deleted: a third of the draws miss, the rows
    # found are a uniform sample of the rest.
    conn = _sparse_table(tmp_path, list(range(1, 30001)))
    with conn:
        conn.execute("DELETE FROM t WHERE id % 3 = 0")
    table = Schema.from_connection(conn).table("t")
    picked = sample_rows(conn, table, ["id"], n=2000)
    assert 1200 <= len(picked) == len(set(picked)) <= 1500
    assert all(i % 3 for (i,) in picked)


def test_an_empty_sample_is_no_statistic() -> None:
    with pytest.raises(ValueError, match="empty"):
        gee_distinct([], sample=0, total=5000)
    # no figure from no rows: SQLite's own guess (10 rows per key), not "one value"
    assert index_stat_from_sample([], ["BINARY", "BINARY"], 5000) == "5000 10 9"


def test_without_rowid_tables_are_still_sampled(tmp_path: Path) -> None:
    conn = apsw.Connection(str(tmp_path / "wr.db"))
    conn.execute("CREATE TABLE kv(k INTEGER PRIMARY KEY, a INT) WITHOUT ROWID")
    with conn:
        conn.executemany("INSERT INTO kv VALUES (?, ?)", [(i, i % 4) for i in range(1000)])
    table = Schema.from_connection(conn).table("kv")
    assert len(sample_rows(conn, table, ["a"], n=100)) == 100
    assert sample_columns(conn, table, ["a"], 1000)["a"] == pytest.approx(250)


def test_a_column_named_rowid_does_not_hide_the_rowid_from_sampling(tmp_path: Path) -> None:
    conn = apsw.Connection(str(tmp_path / "shadow.db"))
    conn.execute('CREATE TABLE t("rowid" TEXT, a INT)')
    with conn:
        conn.executemany("INSERT INTO t VALUES (?, ?)", [(f"r{i}", i % 7) for i in range(3000)])
    table = Schema.from_connection(conn).table("t")
    assert len(sample_rows(conn, table, ["a"], n=500)) >= 250


def test_the_default_guess_is_sqlites_for_long_keys(tmp_path: Path) -> None:
    # sqlite3DefaultRowEst: 10, 9, 8, 7, 6 rows per key, then 5 for every further column
    conn = apsw.Connection(str(tmp_path / "guess.db"))
    conn.execute(
        "CREATE TABLE t(a, b, c, d, e, f, g); CREATE INDEX t_all ON t(a, b, c, d, e, f, g)"
    )
    stats = Stats.build(Schema.from_connection(conn), [], {"t": 1e6})
    assert [stats.rows_per_key("t", "t_all", k) for k in range(1, 8)] == [10, 9, 8, 7, 6, 5, 5]
    assert stats.table("t").indexes["t_all"] == (10, 9, 8, 7, 6, 5, 5)
