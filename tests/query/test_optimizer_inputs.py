"""The optimizer refuses what it should not prepare, and bad input gets typed errors."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import apsw
import pytest

import atlas_actors as atlas
from atlas_actors.errors import AtlasError, ParameterError, QueryValidationError
from atlas_actors.future import StatementTypeError
from atlas_actors.query import Optimizer, Query, QueryPlan, WorkloadRecorder

from .conftest import TASKS_DDL


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[apsw.Connection]:
    c = apsw.Connection(str(tmp_path / "inputs.db"))
    c.execute(TASKS_DDL)
    with c:
        c.executemany(
            "INSERT INTO tasks(title, status, priority) VALUES (?, ?, ?)",
            [(f"t{i}", "open" if i % 3 else "done", i % 5) for i in range(200)],
        )
    yield c
    c.close()


def optimizer(conn: apsw.Connection) -> Optimizer:
    return Optimizer(lambda fn: fn(conn), workload=WorkloadRecorder())


NOT_ANALYZABLE = [
    "PRAGMA case_sensitive_like = ON",
    "PRAGMA case_sensitive_like(1)",
    "PRAGMA foreign_keys = 0",
    "PRAGMA user_version",
    "CREATE TABLE x(a)",
    "DROP TABLE tasks",
    "ATTACH ':memory:' AS aux",
    "VACUUM",
    "ANALYZE",
    "BEGIN",
    "EXPLAIN SELECT 1",
]


@pytest.mark.parametrize("sql", NOT_ANALYZABLE)
@pytest.mark.parametrize("method", ["analyze", "suggest_indexes", "rewrite"])
def test_only_queries_and_dml_are_prepared(conn: apsw.Connection, method: str, sql: str) -> None:
    with pytest.raises(QueryValidationError, match="SELECT, INSERT, UPDATE and DELETE"):
        getattr(optimizer(conn), method)(sql)
    # SQLite applies a flag pragma while preparing it: the connection must be untouched
    assert conn.execute("SELECT 'a' LIKE 'A'").fetchall() == [(1,)]
    assert conn.execute("PRAGMA foreign_keys").fetchall() == [(0,)]


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM tasks WHERE status = 'open'",
        "WITH o AS (SELECT id FROM tasks WHERE status = 'open') SELECT count(*) FROM o",
        "VALUES (1), (2)",
        "INSERT INTO tasks(title, status) VALUES ('x', 'open')",
        "REPLACE INTO tasks(id, title, status) VALUES (1, 'x', 'open')",
        "UPDATE tasks SET status = 'done' WHERE priority = 1",
        "DELETE FROM tasks WHERE priority = 2",
        "  /* a comment */ select 1;",
    ],
)
def test_queries_and_dml_are_analyzed_without_running(conn: apsw.Connection, sql: str) -> None:
    before = conn.execute("SELECT count(*), sum(priority) FROM tasks").fetchall()
    assert isinstance(optimizer(conn).analyze(sql), QueryPlan)  # (INSERT ... VALUES: no step)
    assert conn.execute("SELECT count(*), sum(priority) FROM tasks").fetchall() == before


def test_analyze_through_the_runtime_leaves_pooled_readers_alone(tmp_path: Path) -> None:
    path = str(tmp_path / "pooled.db")
    with atlas.open(path, readers=2, max_readers=2, cache=False) as db:
        db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, title TEXT)")
        db.write("INSERT INTO t(title) VALUES ('Apple')")
        q = "SELECT count(*) FROM t WHERE title LIKE 'apple'"
        with pytest.raises(QueryValidationError):
            db.optimizer.analyze("PRAGMA case_sensitive_like = ON")
        assert [db.query(q)[0][0] for _ in range(4)] == [1, 1, 1, 1]


BAD_PARAMETERS: list[tuple[str, Callable[[Optimizer], Any]]] = [
    ("unbindable", lambda o: o.analyze("SELECT * FROM tasks WHERE priority = ?", [object()])),
    ("too big", lambda o: o.analyze("SELECT * FROM tasks WHERE priority = ?", [2**70])),
    ("missing name", lambda o: o.analyze("SELECT * FROM tasks WHERE priority = :x", {"y": 1})),
    ("suggest", lambda o: o.suggest_indexes("SELECT * FROM tasks WHERE priority = ?", [2**70])),
    (
        "rewrite",
        lambda o: o.rewrite(
            "SELECT * FROM tasks WHERE (priority = 1 OR priority = 2) AND id > ?", [2**70]
        ),
    ),
]


@pytest.mark.parametrize(("label", "call"), BAD_PARAMETERS)
def test_bad_parameters_are_parameter_errors(
    conn: apsw.Connection, label: str, call: Callable[[Optimizer], Any]
) -> None:
    with pytest.raises(ParameterError):
        call(optimizer(conn))


def test_built_queries_are_analyzed_like_their_text(conn: apsw.Connection) -> None:
    opt = optimizer(conn)
    q = Query().from_("tasks").where([("priority", "eq", 3)])
    sql, params = q.build()
    assert opt.analyze(q).steps == opt.analyze(sql, params).steps
    assert opt.suggest_indexes(q)[0].columns == ("priority",)
    assert opt.rewrite(q).sql == sql

    class Built:
        def build(self) -> tuple[str, list[Any]]:
            return "SELECT * FROM tasks WHERE priority = ?", [3]

    assert opt.analyze(Built()).steps == opt.analyze(sql, params).steps
    with pytest.raises(QueryValidationError, match="no column 'priorty'"):
        opt.analyze(Query().from_("tasks").where([("priorty", "eq", 3)]))
    with pytest.raises(QueryValidationError, match="carries its own parameters"):
        opt.analyze(q, [3])


@pytest.mark.parametrize("sql", [None, 3, b"SELECT 1", ["SELECT 1"]])
@pytest.mark.parametrize("method", ["analyze", "suggest_indexes", "rewrite"])
def test_a_statement_that_is_not_text_is_a_statement_type_error(
    conn: apsw.Connection, method: str, sql: object
) -> None:
    with pytest.raises(StatementTypeError, match="sql must be a str or a Query"):
        getattr(optimizer(conn), method)(sql)


@pytest.mark.parametrize("top", ["5", 2.0, -1, True, None])
def test_advise_checks_top(conn: apsw.Connection, top: object) -> None:
    with pytest.raises(QueryValidationError, match="top must be a non-negative int"):
        optimizer(conn).advise(top=top)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        (["or_to_inn"], "unknown rewrite rule 'or_to_inn'"),
        (["nope"], "unknown rewrite rule 'nope'"),
        ("or_to_in", "takes a list of rule names"),
        (["not_in_nullable"], "unknown rewrite rule"),  # a warning, always checked
        (3, "takes a list of rule names"),
        ([["or_to_in"]], r"unknown rewrite rule \['or_to_in'\]"),  # unhashable
        ([{}], "unknown rewrite rule"),
    ],
)
def test_rewrite_refuses_unknown_rules(conn: apsw.Connection, rules: object, message: str) -> None:
    with pytest.raises(QueryValidationError, match=message) as info:
        optimizer(conn).rewrite("SELECT * FROM tasks WHERE id = 1 OR id = 2", rules=rules)  # type: ignore[arg-type]
    assert "or_to_in" in str(info.value)


def test_rewrite_runs_the_rules_it_is_given(conn: apsw.Connection) -> None:
    opt = optimizer(conn)
    sql = "SELECT * FROM tasks WHERE priority = 1 OR priority = 2"
    assert opt.rewrite(sql, rules=["like_prefix_range"]).applied_rules == ()
    result = opt.rewrite(sql, rules=("or_to_in",))
    assert result.applied_rules == ("or_to_in",) or "or_to_in would" in result.warnings[0]


def test_estimate_cost_and_apply_check_their_argument(conn: apsw.Connection) -> None:
    opt = Optimizer(lambda fn: fn(conn), write=lambda sql: None)
    with pytest.raises(QueryValidationError, match="QueryPlan"):
        opt.estimate_cost("SELECT 1")  # type: ignore[arg-type]
    with pytest.raises(QueryValidationError, match="IndexSuggestion"):
        opt.apply("CREATE INDEX i ON tasks(priority)")  # type: ignore[arg-type]
    assert issubclass(QueryValidationError, AtlasError)
