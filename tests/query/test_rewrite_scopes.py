"""like_prefix_range resolves column names per SQL scope and leaves doubtful ones alone.

The rewrite adds a text range; on a column of another affinity that range changes the
result (``12 LIKE '12%'`` is true, ``12 >= '12' AND 12 < '13'`` holds for 12 only). So
the column's table must be the one SQLite resolves the name to: aliases are per SELECT,
UPDATE / DELETE / INSERT targets count, and a name whose owner is uncertain is not
rewritten.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import apsw
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from atlas_actors.errors import QueryValidationError
from atlas_actors.query import Optimizer
from atlas_actors.query._scopes import owner, scopes
from atlas_actors.query._tokens import significant, tokenize
from atlas_actors.query.rewrite import LikeSemantics, apply_rules
from atlas_actors.query.schema import Schema

DDL = """
CREATE TABLE a(id INTEGER PRIMARY KEY, c INTEGER, t TEXT);
CREATE INDEX a_c ON a(c);
CREATE INDEX a_t ON a(t);
CREATE TABLE b(id INTEGER PRIMARY KEY, c TEXT, u TEXT);
CREATE INDEX b_c ON b(c);
CREATE INDEX b_u ON b(u);
"""


@pytest.fixture(scope="module")
def conn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[apsw.Connection]:
    path: Path = tmp_path_factory.mktemp("scopes") / "scopes.db"
    c = apsw.Connection(str(path))
    c.execute(DDL)
    with c:
        c.executemany("INSERT INTO a(c, t) VALUES (?, ?)", [(i, str(i)) for i in range(1500)])
        c.executemany("INSERT INTO b(c, u) VALUES (?, ?)", [(str(i), str(i)) for i in range(1500)])
    yield c
    c.close()


def rows(conn: apsw.Connection, sql: str) -> list[str]:
    """The statement's rows, sorted; a write runs in a savepoint that is rolled back."""
    conn.execute("SAVEPOINT probe")
    try:
        return sorted(map(repr, conn.execute(sql).fetchall()))
    finally:
        conn.execute("ROLLBACK TO probe; RELEASE probe")


LIKE = LikeSemantics(case_sensitive=False, blobs_match=False)
UNTOUCHED = [
    # the alias x names b inside the subquery only: outside it is a, an INTEGER column
    "SELECT x.id FROM a AS x WHERE x.c LIKE '12%' "
    "AND EXISTS (SELECT 1 FROM b AS x WHERE x.c = '1')",
    "SELECT id FROM a WHERE c LIKE '12%' AND id IN (SELECT id FROM b)",
    "SELECT id FROM b WHERE EXISTS (SELECT 1 FROM a WHERE a.c LIKE '12%' AND a.id = b.id)",
    # a subquery or a CTE named like a table hides it
    "SELECT * FROM (SELECT c FROM a) AS b WHERE c LIKE '12%'",
    "SELECT * FROM (SELECT c FROM a) AS b WHERE b.c LIKE '12%'",
    "WITH b AS (SELECT c FROM a) SELECT * FROM b WHERE c LIKE '12%'",
    "WITH b AS MATERIALIZED (SELECT c FROM a) SELECT * FROM b WHERE c LIKE '12%'",
    # the target of a write is a source of its WHERE and RETURNING
    "UPDATE a SET c = c WHERE c LIKE '12%' AND EXISTS (SELECT 1 FROM b WHERE b.id = 1) "
    "RETURNING id",
    "UPDATE a AS q SET c = c WHERE q.c LIKE '12%' AND EXISTS (SELECT 1 FROM b AS q) RETURNING id",
    "DELETE FROM a WHERE c LIKE '12%' AND id IN (SELECT id FROM b) RETURNING id",
    # uncertain owners: a name used twice, an unnamed subquery, a parenthesized join
    "SELECT * FROM b, (SELECT c AS z FROM a) WHERE c LIKE '12%'",
    "SELECT b.id FROM (b JOIN a ON a.id = b.id) WHERE b.c LIKE '12%'",
    "SELECT * FROM b AS q, a AS q WHERE u LIKE '12%'",
    "SELECT * FROM aux.b WHERE c LIKE '12%'",  # another schema's b: columns unknown
]
REWRITTEN = [
    # x is b where the LIKE is
    "SELECT x.id FROM b AS x WHERE x.c LIKE '12%' AND EXISTS (SELECT 1 FROM a AS x WHERE x.c = 1)",
    "SELECT id FROM a WHERE id IN (SELECT id FROM b WHERE c LIKE '12%')",
    "SELECT id FROM a WHERE EXISTS (SELECT 1 FROM b WHERE c LIKE '12%' AND b.id = a.id)",
    "SELECT id FROM a WHERE t LIKE '12%' UNION ALL SELECT id FROM b WHERE c LIKE '12%'",
    "SELECT a.id FROM a JOIN b ON a.id = b.id WHERE u LIKE '12%'",
    "SELECT (SELECT count(*) FROM a WHERE b.c LIKE '12%') FROM b",
    "UPDATE b SET u = u WHERE c LIKE '12%' AND EXISTS (SELECT 1 FROM a WHERE a.id = 1) "
    "RETURNING id",
    "UPDATE a SET c = 1 FROM b WHERE b.id = a.id AND u LIKE '12%' RETURNING a.id",
    "DELETE FROM b AS q WHERE q.c LIKE '12%' AND id IN (SELECT id FROM a) RETURNING id",
    "INSERT INTO b(id, c) SELECT id + 5000, t FROM a WHERE t LIKE '12%' RETURNING id",
]


@pytest.mark.parametrize("sql", UNTOUCHED)
def test_a_like_whose_column_may_not_be_text_is_not_rewritten(
    conn: apsw.Connection, sql: str
) -> None:
    out, applied, _w = apply_rules(sql, Schema.from_connection(conn), LIKE)
    assert applied == [] and out == sql


@pytest.mark.parametrize("sql", REWRITTEN)
def test_a_like_on_a_text_column_of_a_known_scope_is_rewritten_and_keeps_its_rows(
    conn: apsw.Connection, sql: str
) -> None:
    out, applied, _w = apply_rules(sql, Schema.from_connection(conn), LIKE)
    assert applied == ["like_prefix_range"], sql
    assert rows(conn, out) == rows(conn, sql) != []


def test_the_optimizer_keeps_every_row_of_aliased_and_update_statements(
    conn: apsw.Connection,
) -> None:
    opt = Optimizer(lambda fn: fn(conn))
    for sql in UNTOUCHED[0], UNTOUCHED[7]:
        result = opt.rewrite(sql)
        assert result.applied_rules == () and len(rows(conn, result.sql)) == 111


def test_owners_follow_sqlite_name_resolution(conn: apsw.Connection) -> None:
    schema = Schema.from_connection(conn)

    def owner_at(sql: str, word: str, qualifier: str | None = None) -> str | None:
        tokens = significant(tokenize(sql))
        at = max(i for i, t in enumerate(tokens) if t.text == word)
        found = owner(scopes(tokens)[at], schema, qualifier, word)
        return found.name if found else None

    # an alias hides the table's own name; correlated subqueries see the outer query
    hidden = "SELECT 1 FROM a AS x WHERE EXISTS (SELECT 1 FROM b WHERE a.t)"
    assert owner_at(hidden, "t", "a") is None
    assert owner_at("SELECT 1 FROM a WHERE EXISTS (SELECT 1 FROM b WHERE a.t)", "t", "a") == "a"
    # an unqualified name is looked up in its own scope only
    assert owner_at("SELECT 1 FROM a WHERE EXISTS (SELECT 1 FROM b WHERE t)", "t") is None
    # INSERT: the target owns the upsert's columns, excluded only qualified ones
    sql = "INSERT INTO b(c) VALUES ('1') ON CONFLICT DO UPDATE SET u = 'x' WHERE u"
    assert owner_at(sql, "u") == "b"
    # IS DISTINCT FROM is no FROM clause
    assert owner_at("SELECT 1 FROM b WHERE c IS DISTINCT FROM a AND u", "u") == "b"


SOURCES = ["a", "b", "a AS x", "b AS x", "a x", "b AS a", "(SELECT c, id FROM a) AS x"]
COLUMNS = ["c", "x.c", "a.c", "b.c", "t", "u", "x.t", "x.u"]


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    outer=st.sampled_from(SOURCES),
    inner=st.sampled_from(SOURCES),
    first=st.sampled_from(COLUMNS),
    second=st.sampled_from(COLUMNS),
    shape=st.sampled_from(["select", "update", "delete"]),
)
def test_rewritten_statements_return_the_same_rows(
    conn: apsw.Connection, outer: str, inner: str, first: str, second: str, shape: str
) -> None:
    where = f"{first} LIKE '12%' AND EXISTS (SELECT 1 FROM {inner} WHERE {second} LIKE '1%')"
    if shape == "select":
        sql = f"SELECT count(*) FROM {outer} WHERE {where}"
    else:
        assume(not outer.startswith("("))
        verb = "UPDATE {} SET id = id" if shape == "update" else "DELETE FROM {}"
        sql = f"{verb.format(outer)} WHERE {where} RETURNING 1"
    try:
        expected = rows(conn, sql)
    except apsw.SQLError:
        assume(False)  # not a valid statement (no such column, ambiguous, ...)
    out, applied, _w = apply_rules(sql, Schema.from_connection(conn), LIKE)
    event(f"rewritten: {bool(applied)}")
    assert rows(conn, out) == expected, (sql, out)


def test_tables_whose_names_differ_only_in_non_ascii_case_stay_apart(tmp_path: Path) -> None:
    # SQLite folds only A-Z when it compares names: "Ét" and "ét" are two tables, and
    # the snapshot must not let one (TEXT) stand for the other (INTEGER).
    conn = apsw.Connection(str(tmp_path / "fold.db"))
    conn.execute(
        'CREATE TABLE "Ét"(c INTEGER); CREATE INDEX "Ét_c" ON "Ét"(c);'
        'CREATE TABLE "ét"(c TEXT); CREATE INDEX "ét_c" ON "ét"(c);'
        'CREATE TABLE "Ü"(x INT)'
    )
    with conn:
        conn.executemany('INSERT INTO "Ét" VALUES (?)', [(i,) for i in range(1500)])
        conn.execute('INSERT INTO "ét" SELECT c FROM "Ét"')
    schema = Schema.from_connection(conn)
    assert [c.affinity for c in schema.table("Ét").columns] == ["INTEGER"]
    assert [c.affinity for c in schema.table("ét").columns] == ["TEXT"]
    assert schema.table("ÉT").name == "Ét"  # ASCII letters still fold
    with pytest.raises(QueryValidationError):
        schema.table("ü")  # non-ASCII letters do not
    sql = """SELECT c FROM "Ét" WHERE c LIKE '12%'"""
    result = Optimizer(lambda fn: fn(conn)).rewrite(sql)
    assert result.applied_rules == ()
    assert rows(conn, result.sql) == rows(conn, sql)
    text = """SELECT c FROM "ét" WHERE c LIKE '12%'"""
    assert Optimizer(lambda fn: fn(conn)).rewrite(text).applied_rules == ("like_prefix_range",)
    conn.close()


def test_a_temp_table_shadowing_a_main_table_is_not_taken_for_it(tmp_path: Path) -> None:
    # SQLite resolves an unqualified name in temp first: here t.c is temp's INTEGER
    # column, not main's TEXT one, so the text range would drop rows.
    conn = apsw.Connection(str(tmp_path / "temp.db"))
    conn.execute(
        "CREATE TABLE t(c TEXT, n INT); CREATE INDEX t_c ON t(c);"
        "CREATE TABLE u(c TEXT); CREATE INDEX u_c ON u(c);"
        "INSERT INTO u VALUES ('12'), ('123'), ('2');"
        "CREATE TEMP TABLE t(c INTEGER, n INT); CREATE INDEX temp.tt_c ON t(c);"
    )
    with conn:
        conn.executemany("INSERT INTO temp.t VALUES (?, ?)", [(i, i) for i in range(1500)])
    opt = Optimizer(lambda fn: fn(conn))
    for sql in [
        "SELECT c FROM t WHERE c LIKE '12%'",
        "SELECT c FROM main.t WHERE c LIKE '12%'",
        "SELECT c FROM temp.t WHERE c LIKE '12%'",
    ]:
        result = opt.rewrite(sql)
        assert result.applied_rules == (), sql
        assert rows(conn, result.sql) == rows(conn, sql)
    schema = opt.schema()
    assert "t" in schema.temp and "u" not in schema.temp
    assert [c.affinity for c in schema.table("t").columns] == ["INTEGER", "INTEGER"]
    # a table temp does not hold is still main's, and still rewritten
    assert opt.rewrite("SELECT c FROM u WHERE c LIKE '12%'").applied_rules == ("like_prefix_range",)
    # a temp table created after the snapshot is seen (temp has its own schema version)
    conn.execute("CREATE TEMP TABLE u(c INTEGER)")
    assert "u" in opt.schema().temp
    assert opt.rewrite("SELECT c FROM u WHERE c LIKE '12%'").applied_rules == ()
    conn.close()
