"""The query layer wired into the storage: built queries, validation, the optimizer."""

from __future__ import annotations

import pytest

import atlas_actors as atlas
from atlas_actors.errors import QueryValidationError, SQLError


@pytest.fixture
def tasks(db: atlas.Storage) -> atlas.Storage:
    db.write_many(
        "INSERT INTO tasks(title, status, n) VALUES (?, ?, ?)",
        [(f"t{i}", "open" if i % 3 else "done", i) for i in range(300)],
    )
    return db


def test_built_queries_run_through_the_read_path(tasks: atlas.Storage) -> None:
    q = (
        atlas.Query()
        .select(["id", "title"])
        .from_("tasks")
        .where([("status", "eq", "done"), ("n", "lt", 10)])
        .order_by([("n", "desc")])
        .limit(2)
    )
    assert [r.title for r in tasks.query(q)] == ["t9", "t6"]


def test_built_queries_are_validated_against_the_live_schema(tasks: atlas.Storage) -> None:
    with pytest.raises(QueryValidationError, match="did you mean 'title'"):
        tasks.query(atlas.Query().select(["titel"]).from_("tasks"))
    tasks.execute("ALTER TABLE tasks ADD COLUMN due TEXT")  # the snapshot follows DDL
    assert tasks.query(atlas.Query().select(["due"]).from_("tasks").limit(1)) == [(None,)]


def test_params_beside_a_built_query_are_refused_not_dropped(tasks: atlas.Storage) -> None:
    q = atlas.Query().select(["n"]).from_("tasks").where([("n", "eq", 3)])
    for call in (tasks.query, tasks.query_one):
        with pytest.raises(QueryValidationError, match="carries its own parameters"):
            call(q, [7])  # (would have run with the query's own 3, the 7 dropped)
    assert tasks.query(q) == [(3,)]  # and the storage goes on serving


def test_double_quoted_unknown_names_are_errors_not_strings(tasks: atlas.Storage) -> None:
    with pytest.raises(SQLError, match="no such column"):
        tasks.query("SELECT count(*) FROM tasks WHERE \"titel\" = 'titel'")


def test_the_optimizer_analyzes_and_advises_on_the_recorded_workload(
    tasks: atlas.Storage,
) -> None:
    for i in range(20):
        tasks.query("SELECT id FROM tasks WHERE n = ?", [i])
    plan = tasks.optimizer.analyze("SELECT id FROM tasks WHERE n = ?", [1])
    assert plan.steps and plan.steps[0].type == "scan" and not plan.used_indexes
    advice = tasks.optimizer.advise(top=5)
    assert any(s.table == "tasks" and "n" in s.columns for s in advice)
    suggestion = next(s for s in advice if "n" in s.columns)
    tasks.optimizer.apply(suggestion)
    after = tasks.optimizer.analyze("SELECT id FROM tasks WHERE n = ?", [1])
    assert after.used_indexes and tasks.query("SELECT id FROM tasks WHERE n = ?", [5]) == [(6,)]
