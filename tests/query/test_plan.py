"""analyze() turns EXPLAIN QUERY PLAN into typed steps with row estimates."""

from __future__ import annotations

from pathlib import Path

import apsw
import pytest

from atlas_actors.errors import QueryValidationError, SQLError
from atlas_actors.query import Optimizer, QueryPlan
from atlas_actors.query._sqlinfo import UNKNOWN, null_bindings, sql_info
from atlas_actors.query.plan import PlanNames, classify

from .workload_fixtures import QUERIES, populate


@pytest.fixture
def tasks_db(tmp_path: Path) -> apsw.Connection:
    conn = apsw.Connection(str(tmp_path / "plan.db"))
    populate(conn, tasks=3000)
    conn.execute("CREATE INDEX tasks_status ON tasks(status)")
    conn.execute("CREATE INDEX comments_task ON comments(task_id)")
    return conn


def analyze(conn: apsw.Connection, sql: str, params: tuple[object, ...] = ()) -> QueryPlan:
    return Optimizer(lambda fn: fn(conn)).analyze(sql, params)


@pytest.mark.parametrize(
    ("detail", "kind", "name", "index"),
    [
        ("SCAN t", "scan", "t", None),
        ("SCAN TABLE t AS a", "scan", "a", None),  # before 3.36
        ("SCAN t USING COVERING INDEX i", "scan", "t", "i"),
        ("SEARCH t USING INDEX i (a=? AND b>?)", "search", "t", "i"),
        ("SEARCH TABLE t USING INDEX i (a=?)", "search", "t", "i"),  # before 3.36
        ("SEARCH p USING INTEGER PRIMARY KEY (rowid=?) LEFT-JOIN", "search", "p", None),
        ("SEARCH b USING AUTOMATIC COVERING INDEX (due=?)", "search", "b", None),
        ("USE TEMP B-TREE FOR ORDER BY", "sort", None, None),
        ("CORRELATED SCALAR SUBQUERY 2", "subquery", "2", None),
        ("CO-ROUTINE x", "subquery", "x", None),
        ("MATERIALIZE cte", "subquery", "cte", None),
        ("BLOOM FILTER ON b (due=?)", "bloom", "b", None),
        ("RIGHT-JOIN p", "right_join", "p", None),
        ("CREATE BLOOM FILTER", "bloom", None, None),
        ("COMPOUND QUERY", "compound", None, None),
        ("MULTI-INDEX OR", "or", None, None),
        ("USING INDEX i FOR IN-OPERATOR", "in_probe", None, None),
        ("SCAN 3-ROW VALUES CLAUSE", "values", None, None),
        ("SETUP", "recursive", None, None),
        ("RECURSIVE STEP", "recursive", None, None),
        ("SOMETHING SQLITE ADDS NEXT YEAR", "other", None, None),
    ],
)
def test_detail_lines_are_classified_by_their_leading_words(
    detail: str, kind: str, name: str | None, index: str | None
) -> None:
    a = classify(detail)
    assert (a.kind, a.name, a.index) == (kind, name, index)


def test_values_clauses_and_recursive_ctes_get_sane_estimates() -> None:
    conn = apsw.Connection(":memory:")
    plan = analyze(conn, "VALUES (1), (2), (3)")
    assert [(s.type, s.table) for s in plan.steps] == [("scan", None)]
    assert plan.estimated_rows == 3  # not a table called "3-row" of unknown size
    sql = (
        "WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r WHERE x < 1000) "
        "SELECT * FROM r"
    )
    plan = analyze(conn, sql)
    assert all(s.details.get("recognized", True) for s in plan.steps)
    # one row to start, then RECURSIVE_ROUNDS rounds of one queued row each
    assert plan.estimated_rows == 101
    step = next(s for s in plan.steps if s.details["detail"] == "RECURSIVE STEP")
    inner = plan.steps[plan.steps.index(step) + 1]
    assert inner.table == "r" and inner.details["rows"] == 1 and inner.cost >= 100
    conn.close()


def test_search_constraints_are_read_from_the_detail() -> None:
    a = classify("SEARCH t USING INDEX i (a=? AND b>? AND b<?)")
    assert a.eq == ("a",) and a.ranges == (("b", 2),)
    skip = classify("SEARCH t USING INDEX i (ANY(a) AND b=?)")
    assert skip.eq == ("a", "b") and skip.skip == 1
    assert classify("SEARCH p USING INTEGER PRIMARY KEY (rowid=?) LEFT-JOIN").left_join
    assert classify("SEARCH b USING AUTOMATIC COVERING INDEX (due=?)").automatic


def test_an_index_search_is_an_index_step_with_its_index(tasks_db: apsw.Connection) -> None:
    plan = analyze(tasks_db, "SELECT * FROM tasks WHERE status = ?", ("blocked",))
    (step,) = plan.steps
    assert (step.type, step.table, step.details["index"]) == ("index", "tasks", "tasks_status")
    assert plan.used_indexes == ("tasks_status",)


def test_a_full_scan_with_a_sort_gives_scan_and_sort_steps(tasks_db: apsw.Connection) -> None:
    plan = analyze(tasks_db, "SELECT * FROM tasks WHERE due > ? ORDER BY due", (10,))
    assert [s.type for s in plan.steps] == ["scan", "sort"]
    assert plan.used_indexes == ()


def test_join_loops_resolve_aliases_to_tables(tasks_db: apsw.Connection) -> None:
    plan = analyze(
        tasks_db,
        "SELECT t.title, c.body FROM tasks AS t JOIN comments c ON c.task_id = t.id "
        "WHERE t.status = ?",
        ("open",),
    )
    loops = [s for s in plan.steps if s.type in ("scan", "index", "join")]
    assert [s.type for s in loops][1:] == ["join"]
    assert {s.table for s in loops} == {"tasks", "comments"}


def test_subqueries_and_compounds_become_subquery_steps(tasks_db: apsw.Connection) -> None:
    plan = analyze(
        tasks_db,
        "SELECT * FROM tasks WHERE project_id IN (SELECT id FROM projects WHERE owner = ?) "
        "UNION SELECT * FROM tasks WHERE id = 1",
        ("user1",),
    )
    types = {s.type for s in plan.steps}
    assert "subquery" in types
    assert all(s.details["recognized"] for s in plan.steps)


def test_every_line_of_the_bundled_sqlite_output_is_recognized(
    tasks_db: apsw.Connection,
) -> None:
    for sql, params in QUERIES:
        plan = analyze(tasks_db, sql, params)
        assert plan.steps, sql
        unknown = [s.details["detail"] for s in plan.steps if not s.details["recognized"]]
        assert unknown == [], sql


def test_row_estimates_follow_stat1_after_analyze(tasks_db: apsw.Connection) -> None:
    sql, params = "SELECT * FROM tasks WHERE status = ?", ("blocked",)
    actual = len(tasks_db.execute(sql, params).fetchall())
    tasks_db.execute("ANALYZE")
    plan = analyze(tasks_db, sql, params)
    assert plan.analyzed
    # stat1 holds the average rows per status (3000 / 5), not this status' count
    assert plan.estimated_rows == pytest.approx(3000 / 5, rel=0.05)
    assert actual < plan.estimated_rows


def test_without_stat1_row_estimates_come_from_measured_sizes(tasks_db: apsw.Connection) -> None:
    plan = analyze(tasks_db, "SELECT * FROM tasks")
    assert not plan.analyzed
    assert plan.estimated_rows == 3000
    # the status index is probed: five distinct values
    plan = analyze(tasks_db, "SELECT * FROM tasks WHERE status = ?", ("open",))
    assert plan.estimated_rows == pytest.approx(600, rel=0.01)


def test_limit_and_aggregates_cap_the_estimated_rows(tasks_db: apsw.Connection) -> None:
    assert analyze(tasks_db, "SELECT * FROM tasks LIMIT 7").estimated_rows == 7
    assert analyze(tasks_db, "SELECT count(*) FROM tasks WHERE due > 5").estimated_rows == 1
    assert analyze(tasks_db, "SELECT * FROM tasks LIMIT ?", (3,)).estimated_rows == 3


def test_a_limit_without_a_sort_makes_a_scan_cheap(tasks_db: apsw.Connection) -> None:
    full = analyze(tasks_db, "SELECT * FROM tasks WHERE due > 5")
    limited = analyze(tasks_db, "SELECT * FROM tasks WHERE due > 5 LIMIT 10")
    sorted_ = analyze(tasks_db, "SELECT * FROM tasks WHERE due > 5 ORDER BY due LIMIT 10")
    assert limited.cost < full.cost / 50
    assert sorted_.cost > full.cost  # the sort must see every row first


def test_a_second_statement_is_refused_and_never_runs(tasks_db: apsw.Connection) -> None:
    with pytest.raises(QueryValidationError, match="one statement"):
        analyze(tasks_db, "SELECT 1; DROP TABLE tasks")
    assert tasks_db.execute("SELECT count(*) FROM tasks").fetchall() == [(3000,)]


@pytest.mark.parametrize("prefix", ["$", ":", "@"])
def test_a_second_statement_behind_a_tcl_style_parameter_is_refused(
    tasks_db: apsw.Connection, prefix: str
) -> None:
    """SQLite reads ``$a('x)`` as one parameter; the tokenizer read a string from ``'``
    on, so the DROP after the ``;`` ran while the text passed for one statement."""
    with pytest.raises(QueryValidationError, match="one statement"):
        analyze(tasks_db, f"SELECT * FROM tasks WHERE due = {prefix}a('x) ; DROP TABLE tasks; --'")
    assert tasks_db.execute("SELECT count(*) FROM tasks").fetchall() == [(3000,)]


def test_sqlite_errors_are_wrapped_in_the_error_taxonomy(tasks_db: apsw.Connection) -> None:
    with pytest.raises(SQLError, match="no such table"):
        analyze(tasks_db, "SELECT * FROM taks")


def test_parameters_are_counted_the_way_sqlite_numbers_them() -> None:
    assert null_bindings("SELECT ?, ?5, :a, @b, :a, ?") == [None] * 8
    assert null_bindings("SELECT '?' || ? -- ?\n") == [None]


@pytest.mark.parametrize(
    ("sql", "params", "limit"),
    [
        ("SELECT * FROM t LIMIT 5", None, 5),
        ("SELECT * FROM t LIMIT 5 OFFSET 10", None, 15),
        ("SELECT * FROM t LIMIT 10, 5", None, 15),
        ("SELECT * FROM t WHERE a = ? LIMIT ?", ("x", 4), 4),
        ("SELECT * FROM t LIMIT ?", None, UNKNOWN),
        ("SELECT * FROM t LIMIT -1", None, None),
        ("SELECT * FROM (SELECT * FROM t LIMIT 3)", None, None),
    ],
)
def test_the_top_level_limit_is_found(
    sql: str, params: tuple[object, ...] | None, limit: int | None
) -> None:
    assert sql_info(sql, params).limit == limit


def test_aliases_map_to_tables_and_ctes_are_derived() -> None:
    info = sql_info(
        'WITH recent AS (SELECT * FROM tasks) SELECT * FROM recent r, "projects" AS p '
        "JOIN main.comments c ON c.task_id = r.id"
    )
    assert info.aliases == {
        "tasks": "tasks",
        "recent": None,
        "r": None,
        "projects": "projects",
        "p": "projects",
        "comments": "comments",
        "c": "comments",
    }


def test_a_constant_row_is_a_scan_step(tasks_db: apsw.Connection) -> None:
    (step,) = analyze(tasks_db, "SELECT 1").steps
    assert step.type == "scan" and step.table is None


def test_write_statements_can_be_analyzed_without_running_them(tasks_db: apsw.Connection) -> None:
    tasks_db.execute("PRAGMA query_only = 1")  # as the runtime's read connections are
    plan = analyze(tasks_db, "UPDATE tasks SET status = 'x' WHERE assignee = ?", ("user1",))
    assert [s.type for s in plan.steps] == ["scan"]
    assert tasks_db.execute("SELECT count(*) FROM tasks WHERE status = 'x'").fetchall() == [(0,)]


def test_the_optimizer_works_again_after_close(tasks_db: apsw.Connection) -> None:
    opt = Optimizer(lambda fn: fn(tasks_db))
    opt.analyze("SELECT * FROM tasks WHERE status = 'open'")
    opt.close()
    assert opt.analyze("SELECT * FROM tasks WHERE status = 'open'").used_indexes == (
        "tasks_status",
    )


SPACED = PlanNames.of(
    loops=["my table", "m x", "my", "other"],
    indexes=["spaced c", "plain"],
    columns=["a b", "a", "c"],
)


@pytest.mark.parametrize(
    ("detail", "name", "index", "eq", "ranges"),
    [
        ("SEARCH my table USING INDEX spaced c (c=?)", "my table", "spaced c", ("c",), ()),
        ("SCAN my table USING COVERING INDEX spaced c", "my table", "spaced c", (), ()),
        ("SCAN m x", "m x", None, (), ()),
        ("SCAN TABLE my table AS m x", "m x", None, (), ()),  # before 3.36
        ("SEARCH my USING INDEX plain (a b=? AND c>?)", "my", "plain", ("a b",), (("c", 1),)),
        ("SEARCH other USING INDEX plain (ANY(a b) AND a>? AND a<?)", "other", "plain",
         ("a b",), (("a", 2),)),
        ("SEARCH unknown USING INDEX x (d=?)", "unknown", "x", ("d",), ()),
    ],
)  # fmt: skip
def test_names_with_blanks_are_read_whole(
    detail: str,
    name: str,
    index: str | None,
    eq: tuple[str, ...],
    ranges: tuple[tuple[str, int], ...],
) -> None:
    a = classify(detail, SPACED)
    assert (a.name, a.index, a.eq, a.ranges) == (name, index, eq, ranges)


def test_other_lines_name_loops_with_blanks_too() -> None:
    assert classify("BLOOM FILTER ON my table (c=?)", SPACED).name == "my table"
    assert classify("RIGHT-JOIN my table", SPACED).name == "my table"
    assert classify("MATERIALIZE m x", SPACED).name == "m x"
    # longest first: "my" does not swallow the start of "my table"
    assert classify("SCAN my table", SPACED).name == "my table"
    assert classify("SCAN my", SPACED).name == "my"


def test_plans_of_tables_and_columns_with_blanks_are_estimated(tmp_path: Path) -> None:
    conn = apsw.Connection(str(tmp_path / "spaces.db"))
    for name, index in (('"my table"', "spaced_c"), ("my_table", "plain_c")):
        conn.execute(f"CREATE TABLE {name}(a INTEGER, c TEXT); CREATE INDEX {index} ON {name}(c)")
        with conn:
            conn.executemany(
                f"INSERT INTO {name} VALUES (?, ?)", [(i % 500, f"c{i}") for i in range(5000)]
            )
    conn.execute('CREATE TABLE cols(id INTEGER PRIMARY KEY, "a b" INTEGER)')
    conn.execute('CREATE INDEX cols_ab ON cols("a b")')
    with conn:
        conn.executemany('INSERT INTO cols("a b") VALUES (?)', [(i % 300,) for i in range(6000)])
    opt = Optimizer(lambda fn: fn(conn))
    spaced = opt.analyze("SELECT * FROM \"my table\" WHERE c = 'c5'")
    plain = opt.analyze("SELECT * FROM my_table WHERE c = 'c5'")
    assert spaced.steps[0].table == "my table" and spaced.used_indexes == ("spaced_c",)
    assert spaced.cost == plain.cost
    scan = opt.analyze('SELECT * FROM "my table" WHERE a = 7')
    assert scan.steps[0].table == "my table"
    same = opt.analyze("SELECT * FROM my_table WHERE a = 7").cost  # (a is sampled: ±)
    assert scan.cost == pytest.approx(same, rel=0.01)
    aliased = opt.analyze('SELECT * FROM my_table AS "m x" WHERE a = 7')
    assert aliased.steps[0].table == "my_table"
    assert aliased.cost == pytest.approx(scan.cost, rel=0.01)
    assert [s.columns for s in opt.suggest_indexes('SELECT * FROM "my table" WHERE a = 7')] == [
        ("a",)
    ]
    by_column = opt.analyze('SELECT * FROM cols WHERE "a b" = 5')
    assert by_column.estimated_rows == pytest.approx(20, rel=0.5)  # 6,000 rows / 300 values
    conn.close()


def test_in_lists_and_group_by_terms_are_read() -> None:
    info = sql_info(
        "SELECT * FROM t WHERE a IN (1, 2, (3)) AND t.b IN (?, ?) AND c IN (SELECT x FROM u) "
        'AND d NOT IN (1, 2) AND e IN () AND f IN u AND a IN (4) GROUP BY t.a, lower(b), "c" '
        "HAVING count(*) > 1"
    )
    assert info.in_lists == {"a": 3, "b": 2, "c": None, "e": 0, "f": None}
    assert info.group_by == ("a", "", "c")
    assert sql_info("SELECT a FROM t").group_by is None
    assert sql_info("SELECT a FROM t GROUP BY a UNION SELECT 1").group_by is None
    assert sql_info("SELECT (SELECT a FROM t GROUP BY a)").group_by is None
