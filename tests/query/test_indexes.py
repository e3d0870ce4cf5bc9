"""suggest_indexes() proposes indexes the planner will use, and only those."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import apsw
import pytest

from atlas_actors.errors import ConfigError
from atlas_actors.query import IndexSuggestion, Optimizer
from atlas_actors.query.capture import capture
from atlas_actors.query.indexes import Candidate, candidates
from atlas_actors.query.schema import Schema

from .workload_fixtures import populate, vm_steps


@pytest.fixture
def conn(tmp_path: Path) -> apsw.Connection:
    c = apsw.Connection(str(tmp_path / "advisor.db"))
    populate(c, tasks=4000)
    return c


def optimizer(conn: apsw.Connection) -> Optimizer:
    return Optimizer(lambda fn: fn(conn), write=conn.execute)


def test_equality_range_and_order_by_columns_become_candidates(conn: apsw.Connection) -> None:
    schema = Schema.from_connection(conn)
    sql = "SELECT * FROM tasks WHERE status = ? AND due > ? ORDER BY updated"
    got = {c.keys for c in candidates(capture(schema, sql), schema, lambda t, c: None)}
    assert (("status", "BINARY", False),) in got
    assert (("status", "BINARY", False), ("due", "BINARY", False)) in got
    assert (("status", "BINARY", False), ("updated", "BINARY", False)) in got


def test_the_most_selective_equality_column_comes_first(conn: apsw.Connection) -> None:
    schema = Schema.from_connection(conn)
    sql = "SELECT * FROM tasks WHERE status = ? AND assignee = ?"
    per_value = {"status": 800.0, "assignee": 100.0}
    got = candidates(capture(schema, sql), schema, lambda t, c: per_value.get(c))
    assert got[0].columns == ("assignee", "status")


def test_existing_indexes_and_the_rowid_are_not_proposed_again(conn: apsw.Connection) -> None:
    conn.execute("CREATE INDEX tasks_status ON tasks(status)")
    schema = Schema.from_connection(conn)
    assert (
        candidates(
            capture(schema, "SELECT * FROM tasks WHERE status = ?"), schema, lambda t, c: None
        )
        == []
    )
    assert (
        candidates(capture(schema, "SELECT * FROM tasks WHERE id = ?"), schema, lambda t, c: None)
        == []
    )


def test_a_comparison_collation_goes_into_the_index(conn: apsw.Connection) -> None:
    schema = Schema.from_connection(conn)
    cand = Candidate("tasks", (("title", "NOCASE", False), ("due", "BINARY", True)))
    assert cand.create_sql("tasks_title_due_idx", schema) == (
        'CREATE INDEX "tasks_title_due_idx" ON "tasks"("title" COLLATE NOCASE, "due" DESC)'
    )
    assert cand.name(["tasks_title_due_idx"]).startswith("tasks_title_due_")


def test_a_suggestion_is_used_by_the_planner_and_cuts_measured_work(conn: apsw.Connection) -> None:
    sql, params = "SELECT * FROM tasks WHERE assignee = ? AND status = ?", ("user3", "open")
    before = vm_steps(conn, sql, params)
    (s,) = optimizer(conn).suggest_indexes(sql, params)
    assert isinstance(s, IndexSuggestion)
    assert s.table == "tasks" and set(s.columns) == {"assignee", "status"}
    assert s.name in s.plan_after.used_indexes and s.name not in s.plan_before.used_indexes
    assert s.estimated_gain == pytest.approx(s.plan_before.cost - s.plan_after.cost)
    assert s.queries == (sql,)
    conn.execute(s.create_sql)
    assert vm_steps(conn, sql, params) < before / 10


def test_suggesting_creates_nothing_in_the_live_database(conn: apsw.Connection) -> None:
    optimizer(conn).suggest_indexes("SELECT * FROM comments WHERE task_id = ?")
    assert conn.execute("SELECT count(*) FROM sqlite_schema WHERE type = 'index'").fetchall() == [
        (0,)
    ]


def test_nothing_is_proposed_when_no_index_would_help(conn: apsw.Connection) -> None:
    opt = optimizer(conn)
    assert opt.suggest_indexes("SELECT * FROM tasks WHERE id = ?") == []
    assert opt.suggest_indexes("SELECT count(*) FROM tasks") == []
    # a filter on most of the table: a scan is as good as any index
    assert opt.suggest_indexes("SELECT * FROM tasks WHERE status <> 'zzz'") == []


def test_indexes_that_only_help_together_are_proposed_together(conn: apsw.Connection) -> None:
    sql = (
        "SELECT t.* FROM tasks t JOIN task_tags tt ON tt.task_id = t.id "
        "JOIN tags g ON g.id = tt.tag_id WHERE g.name = ?"
    )
    got = optimizer(conn).suggest_indexes(sql, ("tag4",))
    assert {(s.table, s.columns) for s in got} == {("task_tags", ("tag_id",)), ("tags", ("name",))}
    before = vm_steps(conn, sql, ("tag4",))
    for s in got:
        conn.execute(s.create_sql)
    assert vm_steps(conn, sql, ("tag4",)) < before / 5


def test_apply_creates_the_index_through_the_writer(conn: apsw.Connection) -> None:
    written: list[str] = []

    def write(sql: str) -> None:
        written.append(sql)
        conn.execute(sql)

    opt = Optimizer(lambda fn: fn(conn), write=write)
    (s,) = opt.suggest_indexes("SELECT * FROM comments WHERE task_id = ?", (5,))
    opt.apply(s)
    assert written == [s.create_sql]  # never analyzed: no partial statistics added
    assert s.name in opt.analyze("SELECT * FROM comments WHERE task_id = ?", (5,)).used_indexes


def test_apply_analyzes_the_new_index_when_the_database_has_statistics(
    conn: apsw.Connection,
) -> None:
    conn.execute("ANALYZE")
    opt = optimizer(conn)
    (s,) = opt.suggest_indexes("SELECT * FROM comments WHERE task_id = ?", (5,))
    opt.apply(s)
    assert conn.execute("SELECT stat FROM sqlite_stat1 WHERE idx = ?", (s.name,)).fetchall()


def test_apply_needs_a_writer(conn: apsw.Connection) -> None:
    opt = Optimizer(lambda fn: fn(conn))
    (s,) = opt.suggest_indexes("SELECT * FROM comments WHERE task_id = ?")
    with pytest.raises(ConfigError, match="write="):
        opt.apply(s)


def test_with_statistics_the_hypothetical_planner_sees_them(conn: apsw.Connection) -> None:
    # status has 5 values: with ANALYZE the planner knows an index on it alone is weak
    conn.execute("ANALYZE")
    got = optimizer(conn).suggest_indexes(
        "SELECT * FROM tasks WHERE status = ? AND assignee = ?", ("open", "user1")
    )
    assert got and got[0].plan_before.analyzed
    assert got[0].columns[0] == "assignee"  # the selective column leads


def test_virtual_tables_and_broken_views_do_not_stop_the_advisor(tmp_path: Path) -> None:
    conn = apsw.Connection(str(tmp_path / "fts.db"))
    conn.execute(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, b INTEGER);"
        "CREATE VIRTUAL TABLE docs USING fts5(body);"
        "CREATE VIEW v AS SELECT * FROM docs;"
        "INSERT INTO t(b) SELECT value % 50 FROM json_each(?)",
        (str(list(range(2000))),),
    )
    conn.execute("CREATE TABLE gone(x); CREATE VIEW broken AS SELECT x FROM gone; DROP TABLE gone")
    opt = optimizer(conn)
    assert [s.columns for s in opt.suggest_indexes("SELECT * FROM t WHERE b = 3")] == [("b",)]
    assert opt.suggest_indexes("SELECT * FROM docs WHERE docs MATCH 'x'") == []
    assert opt.schema().table("broken").columns == ()


def test_one_optimizer_serves_several_threads(tmp_path: Path) -> None:
    path = tmp_path / "threads.db"
    setup = apsw.Connection(str(path))
    populate(setup, tasks=2000)
    setup.close()
    local = threading.local()

    def read(fn: Any) -> Any:
        if not hasattr(local, "conn"):
            local.conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
        return fn(local.conn)

    opt = Optimizer(read)
    sqls = [
        "SELECT * FROM comments WHERE task_id = ?",
        "SELECT * FROM tasks WHERE assignee = ? AND status = ?",
        "SELECT * FROM tasks ORDER BY updated DESC LIMIT 5",
    ]
    results: dict[int, list[tuple[str, ...]]] = {}

    def work(n: int) -> None:
        results[n] = [tuple(s.name for s in opt.suggest_indexes(sql)) for sql in sqls]

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(results) == 4 and all(r == results[0] for r in results.values())
    assert all(results[0])
