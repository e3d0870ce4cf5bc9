"""Rewrite rules: each rewritten statement returns the same rows as the original.

Differential property tests: random data in a real SQLite file, random statements of the
shape a rule targets; the rule must fire (so the test is not vacuous) and both
statements must return the same rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apsw
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from atlas_actors.query import Optimizer, RewriteResult
from atlas_actors.query.rewrite import LikeSemantics, apply_rules
from atlas_actors.query.schema import Schema

DDL = """
CREATE TABLE t(id INTEGER PRIMARY KEY, a INTEGER, b TEXT, c, d TEXT COLLATE NOCASE);
CREATE INDEX t_b ON t(b);
CREATE INDEX t_d ON t(d);
CREATE TABLE s(id INTEGER PRIMARY KEY, v TEXT) STRICT;
CREATE INDEX s_v ON s(v);
CREATE TABLE u(id INTEGER PRIMARY KEY, x INTEGER, y TEXT NOT NULL, z);
"""
PROPS = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

texts = st.text(alphabet="aAbBzZéÉ1_%- ", max_size=4)
values = st.one_of(st.integers(-2, 3), texts, st.sampled_from([1.0, 2.5, "1", "01", "2.5"]))
cells = st.one_of(st.none(), values, st.binary(max_size=2))


@pytest.fixture(scope="module")
def conn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[apsw.Connection]:
    path: Path = tmp_path_factory.mktemp("rewrite") / "rewrite.db"
    c = apsw.Connection(str(path))
    c.execute(DDL)
    yield c
    c.close()


def load(conn: apsw.Connection, rows: list[tuple[Any, ...]], strict: list[str]) -> None:
    with conn:
        conn.execute("DELETE FROM t; DELETE FROM s; DELETE FROM u")
        conn.executemany("INSERT INTO t(a, b, c, d) VALUES (?, ?, ?, ?)", rows)
        conn.executemany("INSERT INTO s(v) VALUES (?)", [(v,) for v in strict])
        conn.executemany(
            "INSERT INTO u(x, y, z) VALUES (?, ?, ?)",
            [(r[0] if isinstance(r[0], int) else None, str(r[1]), r[2]) for r in rows],
        )


def semantics(conn: apsw.Connection) -> LikeSemantics:
    ((insensitive, blobs),) = conn.execute("SELECT 'a' LIKE 'A', x'61' LIKE 'a'")
    return LikeSemantics(not insensitive, bool(blobs))


def same_rows(conn: apsw.Connection, a: str, b: str) -> None:
    first = sorted(map(repr, conn.execute(a).fetchall()))
    second = sorted(map(repr, conn.execute(b).fetchall()))
    assert first == second, (a, b)


def literal(v: Any) -> str:
    if isinstance(v, str):
        return "'" + v.replace("'", "''") + "'"
    return repr(v)


@PROPS
@given(
    rows=st.lists(st.tuples(cells, cells, cells, cells), max_size=12),
    column=st.sampled_from(["a", "b", "c", "d", "t.a", "t.d"]),
    vals=st.lists(values, min_size=2, max_size=4),
    reverse=st.booleans(),
    extra=st.sampled_from(["", " AND id > 2", " OR id = 1"]),
)
def test_or_to_in_returns_the_same_rows(
    conn: apsw.Connection,
    rows: list[tuple[Any, ...]],
    column: str,
    vals: list[Any],
    reverse: bool,
    extra: str,
) -> None:
    load(conn, rows, [])
    terms = [f"{literal(v)} = {column}" if reverse else f"{column} = {literal(v)}" for v in vals]
    sql = f"SELECT id FROM t WHERE ({' OR '.join(terms)}){extra}"
    out, applied, _w = apply_rules(sql, Schema.from_connection(conn), semantics(conn))
    assert applied == ["or_to_in"] and " IN (" in out
    same_rows(conn, sql, out)


def test_or_to_in_leaves_chains_glued_to_and_alone(conn: apsw.Connection) -> None:
    schema, like = Schema.from_connection(conn), semantics(conn)
    for sql in (
        "SELECT id FROM t WHERE id > 1 AND a = 1 OR a = 2",
        "SELECT id FROM t WHERE a = 1 OR a = 2 AND id > 1",
        "SELECT id FROM t WHERE NOT a = 1 OR a = 2",
        "SELECT id FROM t WHERE a = 1 OR b = 2",
        "SELECT id FROM t WHERE a = 1 OR a = b",
    ):
        assert apply_rules(sql, schema, like)[1] == [], sql


# Where ``{column} LIKE 'p%'`` may sit. LIKE, BETWEEN, IS, IN, = and <> share one
# left-associative precedence level in SQLite (https://www.sqlite.org/lang_expr.html#operators),
# so after "x BETWEEN 0 AND" or "x IS NOT" the LIKE's left operand is the whole
# comparison, and an operator of that level (or tighter) after the pattern takes the LIKE
# as its own left operand. (text, whole operand?) for what comes before and after.
LIKE_BEFORE = [
    ("", True),
    ("NOT ", True),
    ("NOT NOT ", True),
    ("id > 0 AND ", True),
    ("id < 0 OR ", True),
    ("a BETWEEN 0 AND 1 AND ", True),  # the second AND is a boolean one
    ("a BETWEEN 0 AND 1 AND NOT ", True),
    ("a BETWEEN 0 AND ", False),
    ("a NOT BETWEEN 1 AND ", False),
    ("a BETWEEN (SELECT 0) AND ", False),
    ("a BETWEEN CASE WHEN a BETWEEN 0 AND 1 THEN 0 END AND ", False),
    ("a IS NOT ", False),
    ("a IS NOT NOT ", False),  # whole operand of the inner NOT, but no need to be clever
    ("a IS ", False),
    ("a = ", False),
]
LIKE_AFTER = [
    ("", True),
    (" AND id > 0", True),
    (" OR id < 0", True),
    (" = 0", False),
    (" == 1", False),
    (" <> 1", False),
    (" IS NULL", False),
    (" IS NOT 1", False),
    (" ISNULL", False),
    (" NOT NULL", False),
    (" BETWEEN 0 AND 0", False),
    (" NOT BETWEEN 1 AND 1", False),
    (" IN (0)", False),
    (" < 1", False),
    (" LIKE '0'", False),
    (" || 'x'", False),
    (" COLLATE NOCASE", False),
    (" ESCAPE '!'", False),
]


def halves(options: list[tuple[str, bool]]) -> st.SearchStrategy[tuple[str, bool]]:
    """Whole-operand and glued contexts, each about half of the time."""
    return st.one_of(
        st.sampled_from([o for o in options if o[1]]),
        st.sampled_from([o for o in options if not o[1]]),
    )


@pytest.mark.parametrize("case_sensitive", [False, True])
@pytest.mark.parametrize("column", ["b", "d"])
def test_like_prefix_range_returns_the_same_rows(
    conn: apsw.Connection, case_sensitive: bool, column: str
) -> None:
    conn.execute(f"PRAGMA case_sensitive_like = {int(case_sensitive)}")
    try:

        @PROPS
        @given(
            rows=st.lists(st.tuples(cells, cells, cells, cells), max_size=15),
            prefix=st.text(alphabet="aAbBzZéÉ1 -", min_size=1, max_size=4),
            rest=st.sampled_from(["%", "%z", "_%", "_", ""]),
            before=halves(LIKE_BEFORE),
            after=halves(LIKE_AFTER),
        )
        def check(
            rows: list[tuple[Any, ...]],
            prefix: str,
            rest: str,
            before: tuple[str, bool],
            after: tuple[str, bool],
        ) -> None:
            # give some rows the prefix (in either case) so that matches are common
            rows = [
                (r[0], prefix + str(r[1]), r[2], prefix.swapcase() + str(r[3])) if i % 3 else r
                for i, r in enumerate(rows)
            ]
            # and some small numbers in a, so that a misread operand shows in the rows
            rows += [(n, text, n, text) for n in (0, 1) for text in (prefix + "x", "=")]
            load(conn, rows, [])
            like = f"{column} LIKE {literal(prefix + rest)}"
            sql = f"SELECT id FROM t WHERE {before[0]}{like}{after[0]}"
            out, applied, _w = apply_rules(sql, Schema.from_connection(conn), semantics(conn))
            if before[1] and after[1]:
                if column == "d" and case_sensitive:
                    assume(applied)  # NOCASE column, case-sensitive LIKE: still a valid range
                assert applied == ["like_prefix_range"], sql
            else:
                assert applied == [], sql  # the LIKE is not an operand of its own
            same_rows(conn, sql, out)

        check()
    finally:
        conn.execute("PRAGMA case_sensitive_like = 0")


@pytest.mark.parametrize(
    ("where", "glued"),
    [
        # the reviewer's repro: the first LIKE is an operand, the second is not
        ("b LIKE 'ab%' AND a BETWEEN 0 AND b LIKE 'ab%'", "a BETWEEN 0 AND b LIKE 'ab%'"),
        ("b LIKE 'ab%' AND a IS NOT b LIKE 'ab%'", "a IS NOT b LIKE 'ab%'"),
        ("a BETWEEN 0 AND t.b LIKE 'ab%' OR id > 0", "a BETWEEN 0 AND t.b LIKE 'ab%'"),
        ("(a NOT BETWEEN 1 AND NOT b LIKE 'ab%')", "a NOT BETWEEN 1 AND NOT b LIKE 'ab%'"),
        ("a BETWEEN b BETWEEN 0 AND 1 AND b LIKE 'ab%'", "AND b LIKE 'ab%'"),
        ("CASE WHEN a BETWEEN 0 AND b LIKE 'ab%' THEN 1 END", "a BETWEEN 0 AND b LIKE 'ab%'"),
        ("b LIKE 'ab%' IS NOT NULL", "b LIKE 'ab%' IS NOT NULL"),
    ],
)
def test_like_prefix_range_leaves_a_like_that_is_no_operand_alone(
    conn: apsw.Connection, where: str, glued: str
) -> None:
    load(conn, [(0, "abc", None, "abc"), (1, "abd", None, "ABD"), (2, "x", None, "x")], [])
    sql = f"SELECT id FROM t WHERE {where}"
    out, applied, _w = apply_rules(sql, Schema.from_connection(conn), semantics(conn))
    assert glued in out, out
    assert applied == (["like_prefix_range"] if where.startswith("b LIKE 'ab%' AND") else [])
    same_rows(conn, sql, out)


@PROPS
@given(
    strict=st.lists(st.text(alphabet="aAbé_%", max_size=4), max_size=15),
    pattern=st.text(alphabet="aAbé", min_size=1, max_size=3),
)
def test_like_prefix_range_on_a_strict_table_returns_the_same_rows(
    conn: apsw.Connection, strict: list[str], pattern: str
) -> None:
    load(conn, [], strict)
    sql = f"SELECT id FROM s WHERE v LIKE {literal(pattern + '%')}"
    out, applied, _w = apply_rules(sql, Schema.from_connection(conn), semantics(conn))
    assert applied == ["like_prefix_range"]
    same_rows(conn, sql, out)


def test_like_prefix_range_refuses_what_it_cannot_prove(conn: apsw.Connection) -> None:
    schema = Schema.from_connection(conn)
    like = semantics(conn)
    assert not like.blobs_match  # apsw's SQLite: blobs never match LIKE
    for sql in (
        "SELECT id FROM t WHERE c LIKE 'ab%'",  # no TEXT affinity: 12 LIKE '1%' is true
        "SELECT id FROM u WHERE y LIKE 'ab%'",  # no index on y: nothing to gain
        "SELECT id FROM t WHERE b LIKE 'a!%%' ESCAPE '!'",
        "SELECT id FROM t WHERE b NOT LIKE 'ab%'",
        "SELECT id FROM t WHERE b LIKE ?",
    ):
        assert apply_rules(sql, schema, like)[1] == [], sql
    # if blobs could match LIKE, a non-STRICT column could hold one: no rewrite
    blobs = LikeSemantics(case_sensitive=False, blobs_match=True)
    assert apply_rules("SELECT id FROM t WHERE d LIKE 'ab%'", schema, blobs)[1] == []
    assert apply_rules("SELECT id FROM s WHERE v LIKE 'ab%'", schema, blobs)[1] == [
        "like_prefix_range"
    ]


def test_a_leading_wildcard_is_flagged(conn: apsw.Connection) -> None:
    _sql, _applied, warnings = apply_rules(
        "SELECT id FROM t WHERE b LIKE '%ab'", Schema.from_connection(conn), semantics(conn)
    )
    assert any(w.startswith("leading_wildcard") for w in warnings)


@PROPS
@given(
    rows=st.lists(st.tuples(cells, cells, cells, cells), max_size=12),
    order=st.sampled_from(["z", "y DESC", "x, y"]),
    keyword=st.sampled_from(["IN", "NOT IN", "EXISTS", "NOT EXISTS"]),
)
def test_drop_subquery_order_by_returns_the_same_rows(
    conn: apsw.Connection, rows: list[tuple[Any, ...]], order: str, keyword: str
) -> None:
    load(conn, rows, [])
    if keyword.endswith("IN"):
        sql = (
            f"SELECT id FROM t WHERE a {keyword} (SELECT x FROM u WHERE y <> 'q' ORDER BY {order})"
        )
    else:
        sql = f"SELECT id FROM t WHERE {keyword} (SELECT 1 FROM u WHERE u.x = t.a ORDER BY {order})"
    out, applied, _w = apply_rules(sql, Schema.from_connection(conn), semantics(conn))
    assert applied == ["drop_subquery_order_by"] and "ORDER BY" not in out
    same_rows(conn, sql, out)


def test_an_order_by_that_a_limit_needs_is_kept(conn: apsw.Connection) -> None:
    sql = "SELECT id FROM t WHERE a IN (SELECT x FROM u ORDER BY z LIMIT 3)"
    assert apply_rules(sql, Schema.from_connection(conn), semantics(conn))[1] == []


def test_not_in_over_a_nullable_column_is_flagged_and_never_rewritten(
    conn: apsw.Connection,
) -> None:
    schema, like = Schema.from_connection(conn), semantics(conn)
    sql = "SELECT id FROM t WHERE a NOT IN (SELECT x FROM u)"
    out, applied, warnings = apply_rules(sql, schema, like)
    assert out == sql and applied == []
    assert any(w.startswith("not_in_nullable: 'x'") for w in warnings)
    for safe in (
        "SELECT id FROM t WHERE b NOT IN (SELECT y FROM u)",  # NOT NULL
        "SELECT id FROM t WHERE a NOT IN (SELECT id FROM u)",  # INTEGER PRIMARY KEY
    ):
        assert apply_rules(safe, schema, like)[2] == [], safe


def test_not_in_nullable_trusts_only_one_not_null_column_of_an_inner_source(
    tmp_path: Path,
) -> None:
    # Each subquery below returns a NULL (so NOT IN returns no rows) although it starts
    # with a NOT NULL column: an expression over it, an outer join's nullable side, a
    # compound's other arm.
    c = apsw.Connection(str(tmp_path / "nulls.db"))
    c.execute(
        "CREATE TABLE p(id INTEGER PRIMARY KEY, name TEXT NOT NULL);"
        "CREATE TABLE k(id INTEGER PRIMARY KEY, pid INT NOT NULL, extra INT);"
        "INSERT INTO p VALUES (1, 'a'), (2, 'b'), (3, 'c'); INSERT INTO k VALUES (10, 1, NULL);"
    )
    schema, like = Schema.from_connection(c), semantics(c)
    flagged = [
        "SELECT id FROM p WHERE id NOT IN (SELECT k.pid FROM p AS q LEFT JOIN k ON k.pid = q.id)",
        "SELECT id FROM p WHERE id NOT IN (SELECT pid FROM p AS q LEFT OUTER JOIN k AS x ON 0)",
        "SELECT id FROM p WHERE id NOT IN (SELECT q.id FROM k RIGHT JOIN p AS q ON 0)",
        "SELECT id FROM p WHERE id NOT IN (SELECT pid + extra FROM k)",
        "SELECT id FROM p WHERE id NOT IN (SELECT pid FROM k UNION SELECT extra FROM k)",
    ]
    for sql in flagged:
        assert c.execute(sql).fetchall() == [], sql
        warnings = apply_rules(sql, schema, like)[2]
        assert [w.split(":")[0] for w in warnings] == ["not_in_nullable"], sql
    trusted = [
        "SELECT id FROM p WHERE id NOT IN (SELECT pid FROM k)",
        "SELECT id FROM p WHERE id NOT IN (SELECT DISTINCT k.pid AS v FROM k)",
        "SELECT id FROM p WHERE id NOT IN (SELECT q.id FROM p AS q LEFT JOIN k ON k.pid = q.id)",
        "SELECT id FROM p WHERE id NOT IN (SELECT name FROM p AS q LEFT JOIN k ON 1)",
    ]
    for sql in trusted:
        assert apply_rules(sql, schema, like)[2] == [], sql
    c.close()


def test_a_long_chain_of_prefix_nots_is_no_recursion_error(conn: apsw.Connection) -> None:
    schema, like = Schema.from_connection(conn), semantics(conn)
    for n in (301, 2000):
        sql = "SELECT id FROM t WHERE " + "NOT " * n + "b LIKE 'ab%'"
        out, applied, _warnings = apply_rules(sql, schema, like, ["like_prefix_range"])
        assert applied == ["like_prefix_range"]
        if n < 800:  # SQLite's own expression depth limit is 1000
            same_rows(conn, sql, out)
    # "x IS NOT" ends no operand: still left alone
    sql = "SELECT id FROM t WHERE a IS NOT NOT b LIKE 'ab%'"
    assert apply_rules(sql, schema, like, ["like_prefix_range"])[1] == []


def test_the_optimizer_reports_costs_and_reads_like_semantics(conn: apsw.Connection) -> None:
    load(conn, [(i, f"b{i}", i, f"D{i % 50}") for i in range(2000)], [])
    opt = Optimizer(lambda fn: fn(conn))
    # b is BINARY and LIKE folds case: SQLite cannot use t_b, the two case ranges can
    result = opt.rewrite("SELECT * FROM t WHERE b LIKE 'b1%'")
    assert isinstance(result, RewriteResult)
    assert result.applied_rules == ("like_prefix_range",)
    assert result.cost_after < result.cost_before and result.warnings == ()
    # d is NOCASE: SQLite's own LIKE optimization already uses t_d, so no gain, and a
    # warning says so
    same = opt.rewrite("SELECT * FROM t WHERE d LIKE 'D1%'")
    assert same.cost_after == same.cost_before
    assert same.sql == "SELECT * FROM t WHERE d LIKE 'D1%'" and same.applied_rules == ()
    assert same.warnings and "not estimated cheaper" in same.warnings[0]
    assert "like_prefix_range would rewrite it" in same.warnings[0]
    untouched = opt.rewrite("SELECT * FROM t WHERE id = 3")
    assert untouched.sql == "SELECT * FROM t WHERE id = 3" and untouched.applied_rules == ()
    only = opt.rewrite("SELECT * FROM t WHERE a = 1 OR a = 2", rules=["like_prefix_range"])
    assert only.applied_rules == ()


def test_nocase_bounds_are_folded_before_the_last_letter_is_incremented(
    conn: apsw.Connection,
) -> None:
    # 'Z' + 1 is '[', which NOCASE sorts below 'z': without folding first, 'zebra' and
    # 'Zoo' would fall outside the range ['Z', '[').
    load(
        conn, [(None, None, None, "zebra"), (None, None, None, "Zoo"), (None, None, None, "a")], []
    )
    sql = "SELECT id FROM t WHERE d LIKE 'Z%'"
    out, applied, _w = apply_rules(sql, Schema.from_connection(conn), semantics(conn))
    assert applied == ["like_prefix_range"] and "'z'" in out and "'{'" in out
    assert len(conn.execute(out).fetchall()) == 2
    same_rows(conn, sql, out)


@pytest.mark.parametrize("encoding", ["UTF-16le", "UTF-16be"])
def test_like_prefix_range_leaves_utf16_databases_alone(tmp_path: Path, encoding: str) -> None:
    # BINARY compares UTF-16 text as bytes: 'ÿ' (FF 00 in UTF-16le) sorts above 'Ā'
    # (00 01), so the code point range ['ÿ', 'Ā') would hold no row at all.
    conn = apsw.Connection(str(tmp_path / "utf16.db"))
    conn.execute(f"PRAGMA encoding = '{encoding}'")
    conn.execute("CREATE TABLE words(id INTEGER PRIMARY KEY, w TEXT); CREATE INDEX ww ON words(w)")
    with conn:
        conn.executemany("INSERT INTO words(w) VALUES (?)", [(f"w{i}",) for i in range(3000)])
        conn.executemany(
            "INSERT INTO words(w) VALUES (?)", [("ÿes",), ("ÿx",), ("仿佛",), ("\U0001f600",)]
        )
    opt = Optimizer(lambda fn: fn(conn))
    for sql in ("SELECT w FROM words WHERE w LIKE 'ÿ%'", "SELECT w FROM words WHERE w LIKE '仿%'"):
        result = opt.rewrite(sql)
        assert result.applied_rules == () and result.sql == sql
        assert any("encoding" in w for w in result.warnings)
        same_rows(conn, sql, result.sql)
    conn.close()
