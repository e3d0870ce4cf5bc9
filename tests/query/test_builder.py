"""The builder turns verbs into SQL with quoted names and bound values."""

from __future__ import annotations

import math
from typing import Any

import apsw
import pytest

from atlas_actors.errors import QueryValidationError
from atlas_actors.query import (
    Aggregate,
    AllOf,
    Column,
    Condition,
    JoinCondition,
    Query,
    Schema,
    any_of,
)


def rows(conn: apsw.Connection, q: Query) -> list[tuple[object, ...]]:
    sql, params = q.build()
    return conn.execute(sql, params).fetchall()


def test_a_simple_query_quotes_names_and_binds_values() -> None:
    q = (
        Query()
        .select(["id", "title"])
        .from_("tasks")
        .where([("status", "eq", "open")])
        .order_by([("due", "asc")])
        .limit(10)
    )
    assert q.build() == (
        'SELECT "id", "title" FROM "tasks" WHERE "status" = ? ORDER BY "due" ASC LIMIT ?',
        ("open", 10),
    )


def test_every_comparison_operator_maps_to_its_sql_operator() -> None:
    ops = {"eq": "=", "neq": "<>", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
    for op, sql_op in ops.items():
        sql, params = Query().from_("t").where([("a", op, 1)]).build()
        assert sql == f'SELECT * FROM "t" WHERE "a" {sql_op} ?'
        assert params == (1,)


def test_values_are_never_inlined_even_when_they_look_like_sql() -> None:
    evil = "x'; DROP TABLE tasks; --"
    sql, params = Query().from_("tasks").where([("title", "eq", evil)]).build()
    assert evil not in sql
    assert params == (evil,)


def test_conditions_run_against_sqlite_with_the_expected_rows(db: apsw.Connection) -> None:
    q = (
        Query()
        .select(["title"])
        .from_("tasks")
        .where([("status", "eq", "open"), ("priority", "lte", 2)])
        .order_by(["title"])
    )
    assert rows(db, q) == [("review",), ("Write docs",)]


def test_in_with_an_empty_list_is_always_false_and_not_in_always_true(
    db: apsw.Connection,
) -> None:
    assert rows(db, Query().from_("tasks").where([("id", "in", [])])) == []
    assert len(rows(db, Query().from_("tasks").where([("assignee", "not_in", [])]))) == 5


def test_in_with_a_list_binds_one_parameter_per_value(db: apsw.Connection) -> None:
    q = Query().select(["id"]).from_("tasks").where([("status", "in", ["done", "blocked"])])
    assert q.build()[0].endswith('"status" IN (?, ?)')
    assert sorted(rows(db, q)) == [(2,), (5,)]


def test_in_with_a_subquery_nests_it_and_keeps_parameter_order(db: apsw.Connection) -> None:
    sub = Query().select(["id"]).from_("projects").where([("owner", "eq", "ann")])
    q = (
        Query()
        .select(["title"])
        .from_("tasks")
        .where([("priority", "gte", 1), ("project_id", "in", sub), ("status", "eq", "open")])
        .order_by(["title"])
    )
    sql, params = q.build()
    assert '"project_id" IN (SELECT "id" FROM "projects" WHERE "owner" = ?)' in sql
    assert params == (1, "ann", "open")
    assert rows(db, q) == [("Write docs",)]


def test_a_subquery_must_select_exactly_one_column() -> None:
    with pytest.raises(QueryValidationError, match="exactly one column"):
        Query().from_("t").where([("a", "in", Query().from_("u"))])


def test_like_with_an_explicit_escape_matches_a_literal_percent(db: apsw.Connection) -> None:
    with db:
        db.execute("INSERT INTO tasks(title, status) VALUES ('100% done', 'x')")
    # a 4-tuple is not a condition: the escape is a keyword of Condition
    with pytest.raises(QueryValidationError, match="a condition is"):
        Query().from_("tasks").where([("title", "like", "100!%%", "!")])
    q = (
        Query()
        .select(["title"])
        .from_("tasks")
        .where([Condition("title", "like", "100!%%", escape="!")])
    )
    assert q.build()[0].endswith('"title" LIKE ? ESCAPE ?')
    assert rows(db, q) == [("100% done",)]


def test_null_checks_take_no_value_and_eq_none_is_refused(db: apsw.Connection) -> None:
    q = Query().select(["title"]).from_("tasks").where([("assignee", "is_null")])
    assert rows(db, q) == [("Plan sprint",)]
    assert len(rows(db, Query().from_("tasks").where([("due", "is_not_null")]))) == 4
    with pytest.raises(QueryValidationError, match="is_null"):
        Condition("assignee", "eq", None)
    with pytest.raises(QueryValidationError, match="takes no value"):
        Condition("assignee", "is_null", 1)


def test_none_inside_a_not_in_list_is_refused() -> None:
    with pytest.raises(QueryValidationError, match="NOT IN"):
        Condition("a", "not_in", [1, None])


def test_nan_is_refused_where_none_is(db: apsw.Connection) -> None:
    # SQLite binds a float NaN as NULL: "= NaN" would be "= NULL", never true
    assert db.execute("SELECT ? IS NULL", (math.nan,)).fetchall() == [(1,)]
    for op in ("eq", "neq", "lt", "gte"):
        with pytest.raises(QueryValidationError, match="NaN"):
            Condition("priority", op, math.nan)
    with pytest.raises(QueryValidationError, match="NaN"):
        Condition("priority", "not_in", [1.0, float("nan")])
    # in (..., NaN) filters as in (...) does, like None; ordinary floats still pass
    q = Query().select(["id"]).from_("tasks").where([("priority", "in", [1.0, math.nan])])
    assert sorted(rows(db, q)) == [(2,), (4,)]
    assert len(rows(db, Query().from_("tasks").where([("priority", "neq", 1.5)]))) == 4


def test_nesting_too_deep_is_a_validation_error_not_a_recursion_error(
    db: apsw.Connection,
) -> None:
    def groups(n: int) -> Query:
        cond: Any = ("priority", "eq", 1)
        for _ in range(n):
            cond = any_of(cond, ("priority", "eq", 2))
        return Query().from_("tasks").where([cond])

    def subqueries(n: int) -> Query:
        q = Query().select(["id"]).from_("tasks")
        for _ in range(n):
            q = Query().select(["id"]).from_("tasks").where([("id", "in", q)])
        return q

    schema = Schema.from_connection(db)
    assert len(db.execute(*groups(200).build(schema)).fetchall()) == 3  # the limit: fine
    for deep in (groups(201), groups(400), subqueries(101), subqueries(200)):
        for snapshot in (None, schema):
            with pytest.raises(QueryValidationError, match="too deep"):
                deep.build(snapshot)
    assert repr(groups(400)).startswith("<Query incomplete")


def test_any_of_groups_alternatives_in_parentheses(db: apsw.Connection) -> None:
    q = (
        Query()
        .select(["id"])
        .from_("tasks")
        .where([("status", "eq", "open"), any_of(("assignee", "is_null"), ("priority", "eq", 1))])
        .order_by(["id"])
    )
    assert '"status" = ? AND ("assignee" IS NULL OR "priority" = ?)' in q.build()[0]
    assert rows(db, q) == [(3,), (4,)]
    nested = any_of(AllOf((("status", "eq", "done"), ("priority", "eq", 1))), ("id", "eq", 5))
    assert rows(db, Query().select(["id"]).from_("tasks").where([nested]).order_by(["id"])) == [
        (2,),
        (5,),
    ]


def test_an_empty_any_of_is_false(db: apsw.Connection) -> None:
    assert rows(db, Query().from_("tasks").where([any_of()])) == []


def test_joins_of_each_type_qualify_unqualified_on_columns(db: apsw.Connection) -> None:
    base = Query().select(["tasks.title", "projects.name"]).from_("tasks")
    inner = base.join("projects", on=("project_id", "id"))
    assert 'JOIN "projects" ON "tasks"."project_id" = "projects"."id"' in inner.build()[0]
    assert len(rows(db, inner)) == 4
    left = base.join("projects", JoinCondition("left", "project_id", "id"))
    assert len(rows(db, left)) == 5
    right = base.join("projects", on=("project_id", "id"), type="right")
    # comet has no tasks: a RIGHT JOIN keeps it with a NULL title
    assert (None, "comet") in rows(db, right)


def test_a_self_join_uses_aliases() -> None:
    q = (
        Query()
        .select(["a.id", "b.id"])
        .from_("tasks", alias="a")
        .join("tasks", on=("a.project_id", "project_id"), alias="b")
    )
    assert (
        'FROM "tasks" AS "a" JOIN "tasks" AS "b" ON "a"."project_id" = "b"."project_id"'
        in (q.build()[0])
    )


def test_group_by_having_and_aggregates_with_aliases(db: apsw.Connection) -> None:
    q = (
        Query()
        .select(["status", Aggregate("count", alias="n"), Aggregate("max", "priority")])
        .from_("tasks")
        .group_by(["status"])
        .having([(Aggregate("count"), "gt", 1)])
        .order_by([("n", "desc")])
    )
    sql, params = q.build()
    assert 'count(*) AS "n"' in sql and "HAVING count(*) > ?" in sql
    assert params == (1,)
    assert rows(db, q) == [("open", 3, 3)]


def test_count_distinct_and_distinct_rows(db: apsw.Connection) -> None:
    q = Query().select([Aggregate("count", "assignee", distinct=True)]).from_("tasks")
    assert rows(db, q) == [(3,)]
    assert len(rows(db, Query().select(["status"]).from_("tasks").distinct())) == 3


def test_offset_without_limit_uses_limit_minus_one(db: apsw.Connection) -> None:
    q = Query().select(["id"]).from_("tasks").order_by(["id"]).offset(3)
    assert q.build() == ('SELECT "id" FROM "tasks" ORDER BY "id" ASC LIMIT ? OFFSET ?', (-1, 3))
    assert rows(db, q) == [(4,), (5,)]


@pytest.mark.parametrize("bad", [-1, 1.5, "3", True, None])
def test_limit_and_offset_accept_only_non_negative_ints(bad: object) -> None:
    with pytest.raises(QueryValidationError, match="non-negative int"):
        Query().limit(bad)  # type: ignore[arg-type]
    with pytest.raises(QueryValidationError, match="non-negative int"):
        Query().offset(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "name",
    ['ti"tle', "title; DROP TABLE t", "1abc", "", "a.b.c", "a b", "naïve", "x-y", " id"],
)
def test_names_outside_the_grammar_are_rejected_not_escaped(name: str) -> None:
    with pytest.raises(QueryValidationError, match="invalid"):
        Query().select([name])
    with pytest.raises(QueryValidationError, match="invalid"):
        Query().from_(name)
    with pytest.raises(QueryValidationError, match="invalid"):
        Condition(name, "eq", 1)


def test_keywords_are_valid_names_because_they_are_quoted(db: apsw.Connection) -> None:
    q = Query().select(["order"]).from_("tasks").where([("order", "gt", 4)])
    assert rows(db, q) == [(5,)]


def test_an_unknown_operator_suggests_the_closest_one() -> None:
    with pytest.raises(QueryValidationError, match="did you mean 'neq'"):
        Condition("a", "ne", 1)  # type: ignore[arg-type]


def test_scalar_operators_refuse_lists_and_like_refuses_non_strings() -> None:
    with pytest.raises(QueryValidationError, match="use in / not_in"):
        Condition("a", "eq", [1, 2])
    with pytest.raises(QueryValidationError, match="string pattern"):
        Condition("a", "like", 5)
    with pytest.raises(QueryValidationError, match="list of values"):
        Condition("a", "in", "abc")
    with pytest.raises(QueryValidationError, match="one character"):
        Condition("a", "like", "x", escape="!!")


def test_aggregates_check_their_arguments() -> None:
    with pytest.raises(QueryValidationError, match="did you mean 'count'"):
        Aggregate("cnt")  # type: ignore[arg-type]
    with pytest.raises(QueryValidationError, match=r"sum\(\*\)"):
        Aggregate("sum")
    assert Aggregate("sum", "hours", alias="h").alias == "h"


def test_a_query_without_a_table_cannot_be_built() -> None:
    with pytest.raises(QueryValidationError, match="from_"):
        Query().select(["a"]).build()


def test_queries_are_immutable_so_a_base_can_be_shared() -> None:
    base = Query().from_("tasks").where([("status", "eq", "open")])
    a = base.where([("priority", "eq", 1)])
    b = base.limit(5)
    assert base.build() == ('SELECT * FROM "tasks" WHERE "status" = ?', ("open",))
    assert a.build()[1] == ("open", 1)
    assert b.build()[1] == ("open", 5)


def test_select_accepts_columns_with_aliases_and_table_stars() -> None:
    q = Query().select([Column("title", alias="t"), "tasks.*"]).from_("tasks")
    assert q.build()[0] == 'SELECT "title" AS "t", "tasks".* FROM "tasks"'


@pytest.mark.parametrize("name", ["*", "tasks.*"])
def test_a_star_cannot_be_renamed(name: str) -> None:
    with pytest.raises(QueryValidationError, match="cannot be renamed"):
        Column(name, alias="x")
    with pytest.raises(QueryValidationError, match="expected a string"):
        Column(3)  # type: ignore[arg-type]


@pytest.mark.parametrize("item", [("due", "asc", "x"), ("due",), ()])
def test_an_order_by_item_is_a_column_or_a_pair(item: tuple[str, ...]) -> None:
    with pytest.raises(QueryValidationError, match=r"\(column, 'asc'\|'desc'\) pair"):
        Query().from_("tasks").order_by([item])  # type: ignore[list-item]


def test_none_inside_an_in_list_filters_like_the_list_without_it(db: apsw.Connection) -> None:
    # x IN (1, NULL) is NULL, not true, for every x but 1: as a filter, it is x IN (1)
    with_none = Query().select(["id"]).from_("tasks").where([("priority", "in", [1, None])])
    without = Query().select(["id"]).from_("tasks").where([("priority", "in", [1])])
    assert rows(db, with_none) == rows(db, without) and len(rows(db, without)) == 2


def test_sqlite_master_is_sqlite_schema(db: apsw.Connection) -> None:
    q = Query().select(["name"]).from_("sqlite_master").where([("type", "eq", "table")])
    sql, params = q.build(schema=Schema.from_connection(db))
    assert sorted(r[0] for r in db.execute(sql, params)) == ["projects", "tasks"]


def test_limit_and_offset_fit_in_64_bits(db: apsw.Connection) -> None:
    for verb in ("limit", "offset"):
        with pytest.raises(QueryValidationError, match=r"at most 2\*\*63-1"):
            getattr(Query().from_("tasks"), verb)(2**63)
    q = Query().select(["id"]).from_("tasks").limit(2**63 - 1).offset(2**63 - 1)
    assert rows(db, q) == []
