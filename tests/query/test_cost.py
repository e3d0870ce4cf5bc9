"""estimate_cost() orders plans the way their measured work (VM steps) does."""

from __future__ import annotations

import math
import re
from pathlib import Path

import apsw
import pytest

from atlas_actors.query import Optimizer
from atlas_actors.query.cost import AGG_ROW, ROW
from atlas_actors.query.sampling import gee_distinct, probe_index_stat, sample_columns
from atlas_actors.query.schema import Schema
from atlas_actors.query.stats import Stats

from .workload_fixtures import QUERIES, populate, spearman, vm_steps

INDEXES = [
    "CREATE INDEX tasks_status ON tasks(status)",
    "CREATE INDEX tasks_project ON tasks(project_id)",
    "CREATE INDEX comments_task ON comments(task_id)",
    "CREATE INDEX task_tags_tag ON task_tags(tag_id, task_id)",
    "CREATE INDEX tasks_assignee_due ON tasks(assignee, due)",
    "CREATE INDEX tasks_updated ON tasks(updated)",
]


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[tuple[float, int]]]:
    """(estimated cost, VM steps) per query, in three states of the same database."""
    path: Path = tmp_path_factory.mktemp("cost") / "cost.db"
    conn = apsw.Connection(str(path))
    populate(conn, tasks=6000)
    optimizer = Optimizer(lambda fn: fn(conn))
    out: dict[str, list[tuple[float, int]]] = {}
    for state in ("no indexes", "indexes, no statistics", "indexes and ANALYZE"):
        if state == "indexes, no statistics":
            for ddl in INDEXES:
                conn.execute(ddl)
        if state == "indexes and ANALYZE":
            conn.execute("ANALYZE")
        out[state] = [
            (optimizer.estimate_cost(optimizer.analyze(sql, params)), vm_steps(conn, sql, params))
            for sql, params in QUERIES
        ]
    conn.close()
    return out


def test_spearman_helper_matches_known_values() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(0.8207826816681233)


@pytest.mark.parametrize("state", ["no indexes", "indexes, no statistics", "indexes and ANALYZE"])
def test_cost_ranks_queries_like_their_vm_steps(
    measured: dict[str, list[tuple[float, int]]], state: str
) -> None:
    pairs = measured[state]
    rho = spearman([e for e, _ in pairs], [float(a) for _, a in pairs])
    print(f"\n{state}: Spearman {rho:.3f} over {len(pairs)} queries")
    assert rho >= 0.9, f"{state}: Spearman {rho:.3f} over {len(pairs)} queries"


def test_cost_ranks_all_states_together(measured: dict[str, list[tuple[float, int]]]) -> None:
    pairs = [p for state in measured.values() for p in state]
    rho = spearman([e for e, _ in pairs], [float(a) for _, a in pairs])
    print(f"\nall states: Spearman {rho:.3f} over {len(pairs)} plans")
    assert rho >= 0.9, f"Spearman {rho:.3f} over {len(pairs)} plans"


def test_an_index_makes_the_estimated_and_the_measured_cost_drop(tmp_path: Path) -> None:
    conn = apsw.Connection(str(tmp_path / "drop.db"))
    populate(conn, tasks=3000)
    optimizer = Optimizer(lambda fn: fn(conn))
    sql, params = "SELECT * FROM comments WHERE task_id = ?", (42,)
    before = (optimizer.estimate_cost(optimizer.analyze(sql, params)), vm_steps(conn, sql, params))
    conn.execute("CREATE INDEX comments_task ON comments(task_id)")
    after = (optimizer.estimate_cost(optimizer.analyze(sql, params)), vm_steps(conn, sql, params))
    assert after[0] < before[0] / 10
    assert after[1] < before[1] / 10


def test_probing_an_index_counts_its_distinct_leading_values(tmp_path: Path) -> None:
    conn = apsw.Connection(str(tmp_path / "probe.db"))
    conn.execute("CREATE TABLE t(a INTEGER, b TEXT); CREATE INDEX t_ab ON t(a, b)")
    with conn:
        conn.executemany("INSERT INTO t VALUES (?, ?)", [(i % 25, str(i)) for i in range(5000)])
    table = Schema.from_connection(conn).table("t")
    # 25 distinct values of a: 200 rows each; b is assumed to divide by 10 more
    assert probe_index_stat(conn, table, table.indexes[0], 5000) == "5000 200 20"
    # past the cap, integer keys are extrapolated over their range
    with conn:
        conn.execute("DELETE FROM t")
        conn.executemany("INSERT INTO t VALUES (?, ?)", [(i, "x") for i in range(5000)])
    stat = probe_index_stat(conn, table, table.indexes[0], 5000, cap=100)
    assert stat.split()[:2] == ["5000", "1"]


def test_gee_is_exact_on_a_full_sample_and_scales_singletons() -> None:
    assert gee_distinct([3, 3, 4], sample=10, total=10) == 3
    # 100 values seen once in a 1% sample stand for sqrt(100) = 10 values each
    assert gee_distinct([1] * 100, sample=100, total=10_000) == pytest.approx(1000)


def test_sampled_columns_estimate_rows_per_value(tmp_path: Path) -> None:
    conn = apsw.Connection(str(tmp_path / "sample.db"))
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, low TEXT, high INTEGER)")
    with conn:
        conn.executemany(
            "INSERT INTO t(low, high) VALUES (?, ?)", [(f"s{i % 4}", i) for i in range(20000)]
        )
    table = Schema.from_connection(conn).table("t")
    got = sample_columns(conn, table, ["low", "high"], 20000)
    assert got["low"] == pytest.approx(5000, rel=0.01)
    assert got["high"] < 20  # nearly unique (GEE from a 256-row sample)


def test_stats_prefer_stat1_and_flag_it(tmp_path: Path) -> None:
    conn = apsw.Connection(str(tmp_path / "stat1.db"))
    populate(conn, tasks=1000)
    conn.execute("CREATE INDEX tasks_status ON tasks(status)")
    schema = Schema.from_connection(conn)
    before = Stats.from_connection(conn, schema)
    assert not before.analyzed and before.table("tasks").rows == 1000
    conn.execute("ANALYZE")
    after = Stats.from_connection(conn, Schema.from_connection(conn))
    assert after.analyzed
    assert after.rows_per_key("tasks", "tasks_status", 1) == pytest.approx(200)


@pytest.mark.parametrize(
    ("table_stat", "index_stat"),
    [
        ("1" + "0" * 400, "1" + "0" * 400 + " 1"),  # float() makes it inf, then NaN costs
        ("\u00b2", "\u00b2 1"),  # "²".isdigit() is True, float("²") a ValueError
    ],
)
def test_odd_stat1_text_gives_finite_estimates(
    tmp_path: Path, table_stat: str, index_stat: str
) -> None:
    conn = apsw.Connection(str(tmp_path / "odd.db"))
    conn.execute(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, a INT, b TEXT); CREATE INDEX t_a ON t(a);"
        "CREATE TABLE u(id INTEGER PRIMARY KEY, a INT);"
        "WITH RECURSIVE s(v) AS (SELECT 1 UNION ALL SELECT v + 1 FROM s WHERE v < 500) "
        "INSERT INTO t(a, b) SELECT v % 10, 'x' FROM s;"
        "INSERT INTO u(a) SELECT a FROM t; ANALYZE;"
        "DELETE FROM sqlite_stat1;"
    )
    conn.execute(
        "INSERT INTO sqlite_stat1 VALUES ('t', NULL, ?), ('t', 't_a', ?)",
        (table_stat, index_stat),
    )
    opt = Optimizer(lambda fn: fn(conn))
    for sql in [
        "SELECT * FROM t WHERE a = 3",
        "SELECT * FROM t JOIN u ON u.a = t.a WHERE t.b = 'x'",
        "SELECT * FROM t WHERE b = 'x'",
    ]:
        plan = opt.analyze(sql)
        assert math.isfinite(plan.estimated_rows) and math.isfinite(opt.estimate_cost(plan))
        for suggestion in opt.suggest_indexes(sql):
            assert math.isfinite(suggestion.estimated_gain)


@pytest.fixture(scope="module")
def in_db(tmp_path_factory: pytest.TempPathFactory) -> apsw.Connection:
    conn = apsw.Connection(str(tmp_path_factory.mktemp("in") / "in.db"))
    conn.execute("CREATE TABLE tasks(id INTEGER PRIMARY KEY, status TEXT, title TEXT)")
    conn.execute("CREATE INDEX tasks_status ON tasks(status)")
    conn.execute("CREATE TABLE tags(task_id INTEGER, tag TEXT)")
    with conn:
        conn.executemany(
            "INSERT INTO tasks(status, title) VALUES (?, ?)",
            [(f"s{i % 20}", f"t{i}") for i in range(8000)],
        )
        conn.executemany(
            "INSERT INTO tags VALUES (?, ?)", [(i + 1, f"g{i % 2}") for i in range(0, 8000, 3)]
        )
    return conn


@pytest.mark.parametrize(
    ("sql", "rows"),
    [
        ("SELECT * FROM tasks WHERE id = 5", 1),
        ("SELECT * FROM tasks WHERE id IN (" + ",".join(map(str, range(1, 2001))) + ")", 2000),
        ("SELECT * FROM tasks WHERE id IN (?, ?, ?)", 3),
        ("SELECT * FROM tasks WHERE status = 's1'", 400),
        ("SELECT * FROM tasks WHERE status IN ('s1', 's2', 's3', 's4', 's5')", 2000),
        # the subquery's own estimate: 2,667 tags, half of them g1
        ("SELECT * FROM tasks WHERE id IN (SELECT task_id FROM tags WHERE tag = 'g1')", 1334),
        # the IN drives the rowid part of the index key: one entry per value
        ("SELECT * FROM tasks WHERE status = 's1' AND id IN (1, 2, 3, 4)", 4),
    ],
)
def test_an_in_list_that_drives_a_search_counts_one_lookup_per_value(
    in_db: apsw.Connection, sql: str, rows: float
) -> None:
    opt = Optimizer(lambda fn: fn(in_db))
    plan = opt.analyze(sql)
    assert plan.estimated_rows == pytest.approx(rows, rel=0.2), plan.describe()
    if " IN (" in sql and rows > 1:  # dearer than a single lookup
        single = sql.split(" IN (", maxsplit=1)[0] + " = 1"
        assert plan.cost > opt.analyze(single).cost


@pytest.mark.parametrize(
    ("chain", "in_list"),
    [
        ("status = 's1' OR status = 's2' OR status = 's3'", "status IN ('s1', 's2', 's3')"),
        (
            "(tasks.status = 's1' OR 's2' = tasks.\"status\" OR tasks.status == 's3') "
            "AND title <> 'x'",
            "tasks.status IN ('s1', 's2', 's3') AND title <> 'x'",
        ),
        (
            "title <> 'x' AND (status = ? OR status = ? OR status = ?)",
            "title <> 'x' AND status IN (?, ?, ?)",
        ),
    ],
)
def test_an_or_chain_on_one_column_costs_what_its_in_list_costs(
    in_db: apsw.Connection, chain: str, in_list: str
) -> None:
    # SQLite runs "c = 1 OR c = 2 OR c = 3" as "c IN (1, 2, 3)": one search per value
    opt = Optimizer(lambda fn: fn(in_db))
    params = ("s1", "s2", "s3") if "?" in chain else None
    plan = opt.analyze(f"SELECT * FROM tasks WHERE {chain}", params)
    as_in = opt.analyze(f"SELECT * FROM tasks WHERE {in_list}", params)
    assert plan.steps[0].details["index"] == "tasks_status"
    assert plan.estimated_rows == as_in.estimated_rows == pytest.approx(1200, rel=0.2)
    assert opt.estimate_cost(plan) == opt.estimate_cost(as_in)


def test_or_to_in_is_not_refused_as_dearer_than_the_chain(in_db: apsw.Connection) -> None:
    # the rewrite is no cheaper (SQLite runs both alike), and not dearer either
    opt = Optimizer(lambda fn: fn(in_db))
    result = opt.rewrite("SELECT * FROM tasks WHERE status = 's1' OR status = 's2'")
    costs = re.search(r"\((\d+) vs (\d+) VM steps\)", result.warnings[0])
    assert costs is not None and costs[1] == costs[2], result.warnings


def test_a_group_by_in_index_order_yields_one_row_per_key(in_db: apsw.Connection) -> None:
    opt = Optimizer(lambda fn: fn(in_db))
    by_index = opt.analyze("SELECT status, count(*) FROM tasks GROUP BY status")
    assert by_index.steps[0].details["index"] == "tasks_status"
    assert by_index.estimated_rows == pytest.approx(20, rel=0.2)
    by_rowid = opt.analyze("SELECT id, count(*) FROM tasks GROUP BY id")
    assert by_rowid.estimated_rows == 8000
    sorted_groups = opt.analyze("SELECT title, count(*) FROM tasks GROUP BY title")
    assert [s.type for s in sorted_groups.steps] == ["scan", "sort"]
    assert sorted_groups.estimated_rows == 800  # no statistics: 10 rows a group
    # the aggregate's work per row is counted either way
    assert by_index.steps[0].cost >= 8000 * (ROW + AGG_ROW)


def test_an_in_list_that_only_filters_multiplies_nothing(in_db: apsw.Connection) -> None:
    opt = Optimizer(lambda fn: fn(in_db))
    filtered = opt.analyze("SELECT * FROM tasks WHERE status = 's1' AND title IN ('t1', 't2')")
    assert filtered.steps[0].details["rows"] <= 400
