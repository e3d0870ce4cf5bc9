"""estimate_cost() orders plans the way their measured work (VM steps) does."""

from __future__ import annotations

from pathlib import Path

import apsw
import pytest

from atlas_actors.query import Optimizer
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
