"""advise() turns the recorded workload into ranked index proposals; apply is explicit."""

from __future__ import annotations

import time
from pathlib import Path

import apsw
import pytest

from atlas_actors.errors import ConfigError
from atlas_actors.query import Optimizer, WorkloadRecorder

from .workload_fixtures import populate, vm_steps


@pytest.fixture
def conn(tmp_path: Path) -> apsw.Connection:
    c = apsw.Connection(str(tmp_path / "advise.db"))
    populate(c, tasks=4000)
    return c


def run(conn: apsw.Connection, w: WorkloadRecorder, sql: str, params: tuple[object, ...]) -> None:
    start = time.perf_counter()
    rows = conn.execute(sql, params).fetchall()
    w.record(sql, time.perf_counter() - start, len(rows))


def test_advise_ranks_indexes_by_time_saved_over_the_workload(conn: apsw.Connection) -> None:
    w = WorkloadRecorder()
    opt = Optimizer(lambda fn: fn(conn), write=conn.execute, workload=w)
    hot = "SELECT * FROM comments WHERE task_id = ?"
    cold = "SELECT * FROM tasks WHERE assignee = ?"
    for i in range(50):
        run(conn, w, hot, (i,))
    run(conn, w, cold, ("user1",))
    advice = opt.advise(top=5)
    assert [s.columns for s in advice] == [("task_id",), ("assignee",)]
    assert advice[0].queries == (hot,) and advice[0].estimated_gain > advice[1].estimated_gain
    # nothing was created: apply is explicit
    assert conn.execute("SELECT count(*) FROM sqlite_schema WHERE type = 'index'").fetchall() == [
        (0,)
    ]


def test_only_the_top_statements_are_considered(conn: apsw.Connection) -> None:
    w = WorkloadRecorder()
    opt = Optimizer(lambda fn: fn(conn), workload=w)
    for i in range(20):
        run(conn, w, "SELECT * FROM comments WHERE task_id = ?", (i,))
    run(conn, w, "SELECT * FROM tasks WHERE assignee = ?", ("user1",))
    assert [s.table for s in opt.advise(top=1)] == ["comments"]


def test_an_index_that_is_a_prefix_of_another_is_folded_into_it(conn: apsw.Connection) -> None:
    w = WorkloadRecorder()
    opt = Optimizer(lambda fn: fn(conn), workload=w)
    narrow = "SELECT count(*) FROM comments WHERE task_id = ?"
    wide = "SELECT * FROM comments WHERE task_id = ? ORDER BY created"
    for i in range(5):
        run(conn, w, narrow, (i,))
        run(conn, w, wide, (i,))
    (s,) = opt.advise()
    assert s.columns == ("task_id", "created")
    assert set(s.queries) == {narrow, wide}


def test_applying_the_advice_cuts_the_workload(conn: apsw.Connection) -> None:
    w = WorkloadRecorder()
    opt = Optimizer(lambda fn: fn(conn), write=conn.execute, workload=w)
    queries = [
        ("SELECT * FROM comments WHERE task_id = ? ORDER BY created", (7,)),
        ("SELECT * FROM tasks WHERE status = ? AND assignee = ?", ("open", "user2")),
        ("SELECT * FROM tasks ORDER BY updated DESC LIMIT 10", ()),
    ]
    for sql, params in queries:
        run(conn, w, sql, params)
    before = sum(vm_steps(conn, sql, p) for sql, p in queries)
    for s in opt.advise():
        opt.apply(s)
    after = sum(vm_steps(conn, sql, p) for sql, p in queries)
    assert after < before / 20


def test_advise_needs_a_workload(conn: apsw.Connection) -> None:
    with pytest.raises(ConfigError, match="workload"):
        Optimizer(lambda fn: fn(conn)).advise()


def test_a_statement_that_cannot_be_planned_is_skipped(conn: apsw.Connection) -> None:
    w = WorkloadRecorder()
    w.record("SELECT * FROM dropped_table", 5.0)
    w.record("SELECT * FROM comments WHERE task_id = 3", 0.1)
    (s,) = Optimizer(lambda fn: fn(conn), workload=w).advise()
    assert s.table == "comments"
