"""Property tests: the builder agrees with SQLAlchemy Core, and input never becomes SQL.

Random queries are described once as plain data (a spec), then built both with
:class:`Query` and with SQLAlchemy Core; both run on the same random data in a real
SQLite file and must return the same rows. Ordering by every selected column makes the
row order (and LIMIT/OFFSET) deterministic for both.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import apsw
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.dialects import sqlite as sqlite_dialect

from atlas_actors.errors import QueryValidationError
from atlas_actors.query import Aggregate, AllOf, Condition, Query, any_of
from atlas_actors.query._names import IDENTIFIER
from atlas_actors.query._tokens import dequote, significant, tokenize

KINDS = {
    "a": {"id": "int", "x": "int", "y": "text", "z": "real"},
    "b": {"a_id": "int", "w": "text"},
}
DDL = """
CREATE TABLE a(id INTEGER PRIMARY KEY, x INTEGER, y TEXT, z REAL);
CREATE TABLE b(id INTEGER PRIMARY KEY, a_id INTEGER, w TEXT);
"""

md = sa.MetaData()
SA_TABLES = {
    "a": sa.Table("a", md, sa.Column("id"), sa.Column("x"), sa.Column("y"), sa.Column("z")),
    "b": sa.Table("b", md, sa.Column("id"), sa.Column("a_id"), sa.Column("w")),
}

ints = st.integers(-1, 2)
texts = st.text(alphabet="aA%_!é", max_size=2)
reals = st.sampled_from([-1.5, 0.0, 2.5, 3.0])
VALUES = {"int": ints, "text": texts, "real": reals}
any_value = st.one_of(ints, texts, reals)


@dataclass
class Cond:
    column: str  # qualified, e.g. "a.x"
    op: str
    value: Any = None
    escape: str | None = None
    sub_value: Any = None  # for IN (SELECT b.a_id FROM b WHERE b.w = ?)


@dataclass
class Spec:
    join: str | None  # None, "inner", "left", "right"
    where: list[Cond | list[Cond]]  # a list inside means OR
    select: list[str]
    aggregate: tuple[str, str] | None  # (func, column) when grouping
    group_by: str | None
    having: int | None
    directions: list[str] = field(default_factory=list)
    distinct: bool = False
    limit: int | None = None
    offset: int | None = None


OPS = ["eq", "neq", "gt", "gte", "lt", "lte", "in", "not_in", "like", "not_like",
       "is_null", "is_not_null", "in_sub"]  # fmt: skip


@st.composite
def conditions(draw: st.DrawFn, tables: list[str], op: str | None = None) -> Cond:
    table = draw(st.sampled_from(tables))
    column = draw(st.sampled_from(sorted(KINDS[table])))
    kind = KINDS[table][column]
    op = op or draw(st.sampled_from(OPS))
    ref = f"{table}.{column}"
    # mostly values of the column's own type, sometimes any type (affinity rules apply)
    value_st = st.one_of(VALUES[kind], VALUES[kind], VALUES[kind], any_value)
    if op in ("is_null", "is_not_null"):
        return Cond(ref, op)
    if op in ("in", "not_in"):
        return Cond(ref, op, draw(st.lists(value_st, max_size=3)))
    if op == "in_sub":
        return Cond(ref, "in", sub_value=draw(texts))
    if op in ("like", "not_like"):
        escape = draw(st.sampled_from([None, "!"]))
        pattern = draw(texts)
        if escape and pattern.endswith("!"):
            pattern += "%"  # an escape must be followed by a character
        return Cond(ref, op, pattern, escape)
    return Cond(ref, op, draw(value_st))


@st.composite
def specs(draw: st.DrawFn, op: str | None = None) -> Spec:
    join = draw(st.sampled_from([None, "inner", "left", "right"]))
    tables = ["a"] if join is None else ["a", "b"]
    cond = conditions(tables)
    where: list[Cond | list[Cond]] = []
    if op is not None:
        where.append(draw(conditions(tables, op)))
    where += draw(st.lists(st.one_of(cond, cond, st.lists(cond, max_size=3)), max_size=2))
    all_columns = [f"{t}.{c}" for t in tables for c in sorted(KINDS[t])]
    if draw(st.integers(0, 2)) == 0:
        group_by = draw(st.sampled_from(all_columns))
        func = draw(st.sampled_from(["count", "sum", "min", "max", "total"]))
        column = draw(st.sampled_from(all_columns))
        having = draw(st.one_of(st.none(), st.integers(0, 2)))
        select = [group_by]
        aggregate: tuple[str, str] | None = (func, column)
    else:
        select = draw(st.lists(st.sampled_from(all_columns), min_size=1, max_size=3, unique=True))
        group_by, having, aggregate = None, None, None
    n_keys = len(select) + (2 if aggregate else 0)
    return Spec(
        join=join,
        where=where,
        select=select,
        aggregate=aggregate,
        group_by=group_by,
        having=having,
        directions=draw(
            st.lists(st.sampled_from(["asc", "desc"]), min_size=n_keys, max_size=n_keys)
        ),
        distinct=draw(st.booleans()),
        limit=draw(st.one_of(st.none(), st.integers(0, 5))),
        offset=draw(st.one_of(st.none(), st.integers(0, 2))),
    )


def to_condition(c: Cond) -> Condition:
    if c.sub_value is not None or (c.op == "in" and c.value is None):
        sub = Query().select(["b.a_id"]).from_("b").where([("b.w", "eq", c.sub_value)])
        return Condition(c.column, "in", sub)
    return Condition(c.column, c.op, c.value, escape=c.escape)  # type: ignore[arg-type]


def build_ours(spec: Spec) -> tuple[str, tuple[Any, ...]]:
    items: list[Any] = list(spec.select)
    keys: list[Any] = list(spec.select)
    if spec.aggregate:
        items += [Aggregate("count", alias="n"), Aggregate(spec.aggregate[0], spec.aggregate[1])]  # type: ignore[arg-type]
        keys += ["n", Aggregate(spec.aggregate[0], spec.aggregate[1])]  # type: ignore[arg-type]
    q = Query().select(items).from_("a")
    if spec.join:
        q = q.join("b", on=("a.id", "b.a_id"), type=spec.join)  # type: ignore[arg-type]
    where: list[Any] = [
        any_of(*(to_condition(c) for c in w)) if isinstance(w, list) else to_condition(w)
        for w in spec.where
    ]
    q = q.where(where)
    if spec.group_by:
        q = q.group_by([spec.group_by])
        if spec.having is not None:
            q = q.having([(Aggregate("count"), "gt", spec.having)])
    q = q.order_by(list(zip(keys, spec.directions, strict=True)))
    if spec.distinct:
        q = q.distinct()
    if spec.limit is not None:
        q = q.limit(spec.limit)
    if spec.offset is not None:
        q = q.offset(spec.offset)
    return q.build()


def sa_column(ref: str) -> Any:
    table, column = ref.split(".")
    return SA_TABLES[table].c[column]


def sa_condition(c: Cond) -> Any:
    col = sa_column(c.column)
    if c.sub_value is not None:
        b = SA_TABLES["b"]
        return col.in_(sa.select(b.c.a_id).where(b.c.w == c.sub_value))
    ops = {
        "eq": lambda: col == c.value,
        "neq": lambda: col != c.value,
        "gt": lambda: col > c.value,
        "gte": lambda: col >= c.value,
        "lt": lambda: col < c.value,
        "lte": lambda: col <= c.value,
        "in": lambda: col.in_(c.value),
        "not_in": lambda: col.not_in(c.value),
        "like": lambda: col.like(c.value, escape=c.escape),
        "not_like": lambda: col.not_like(c.value, escape=c.escape),
        "is_null": lambda: col.is_(None),
        "is_not_null": lambda: col.is_not(None),
    }
    return ops[c.op]()


def build_sqlalchemy(spec: Spec) -> tuple[str, list[Any]]:
    a, b = SA_TABLES["a"], SA_TABLES["b"]
    cols = [sa_column(r) for r in spec.select]
    keys = list(cols)
    if spec.aggregate:
        agg = getattr(sa.func, spec.aggregate[0])(sa_column(spec.aggregate[1]))
        cols += [sa.func.count().label("n"), agg]
        keys += [sa.literal_column("n"), agg]
    stmt = sa.select(*cols)
    if spec.join == "right":
        stmt = stmt.select_from(b.join(a, a.c.id == b.c.a_id, isouter=True))
    elif spec.join:
        stmt = stmt.select_from(a.join(b, a.c.id == b.c.a_id, isouter=spec.join == "left"))
    else:
        stmt = stmt.select_from(a)
    for w in spec.where:
        stmt = stmt.where(
            sa.or_(sa.false(), *(sa_condition(c) for c in w))
            if isinstance(w, list)
            else sa_condition(w)
        )
    if spec.group_by:
        stmt = stmt.group_by(sa_column(spec.group_by))
        if spec.having is not None:
            stmt = stmt.having(sa.func.count() > spec.having)
    stmt = stmt.order_by(
        *(k.desc() if d == "desc" else k.asc() for k, d in zip(keys, spec.directions, strict=True))
    )
    if spec.distinct:
        stmt = stmt.distinct()
    if spec.limit is not None:
        stmt = stmt.limit(spec.limit)
    if spec.offset is not None:
        if spec.limit is None:
            stmt = stmt.limit(-1)
        stmt = stmt.offset(spec.offset)
    compiled = stmt.compile(
        dialect=sqlite_dialect.dialect(), compile_kwargs={"render_postcompile": True}
    )
    return str(compiled), [compiled.params[k] for k in compiled.positiontup or []]


rows_a = st.lists(
    st.tuples(st.one_of(st.none(), ints), st.one_of(st.none(), texts), st.one_of(st.none(), reals)),
    min_size=4,
    max_size=12,
)
rows_b = st.lists(
    st.tuples(st.one_of(st.none(), st.integers(1, 4)), st.one_of(st.none(), texts)),
    min_size=2,
    max_size=10,
)


@pytest.fixture(scope="module")
def conn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[apsw.Connection]:
    path: Path = tmp_path_factory.mktemp("props") / "props.db"
    c = apsw.Connection(str(path))
    c.execute(DDL)
    yield c
    c.close()


def load(conn: apsw.Connection, a: list[tuple[Any, ...]], b: list[tuple[Any, ...]]) -> None:
    with conn:
        conn.execute("DELETE FROM a; DELETE FROM b")
        conn.executemany("INSERT INTO a(x, y, z) VALUES (?, ?, ?)", a)
        conn.executemany("INSERT INTO b(a_id, w) VALUES (?, ?)", b)


def check_same_rows(
    conn: apsw.Connection, spec: Spec, a: list[tuple[Any, ...]], b: list[tuple[Any, ...]]
) -> None:
    load(conn, a, b)
    ours_sql, ours_params = build_ours(spec)
    theirs_sql, theirs_params = build_sqlalchemy(spec)
    ours = conn.execute(ours_sql, ours_params).fetchall()
    theirs = conn.execute(theirs_sql, theirs_params).fetchall()
    assert ours == theirs, (ours_sql, ours_params, theirs_sql, theirs_params)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(spec=specs(), a=rows_a, b=rows_b)
def test_random_queries_return_the_same_rows_as_sqlalchemy(
    conn: apsw.Connection, spec: Spec, a: list[tuple[Any, ...]], b: list[tuple[Any, ...]]
) -> None:
    check_same_rows(conn, spec, a, b)


@pytest.mark.parametrize("op", OPS)
def test_each_operator_returns_the_same_rows_as_sqlalchemy(conn: apsw.Connection, op: str) -> None:
    @settings(max_examples=40, deadline=None, database=None)
    @given(spec=specs(op), a=rows_a, b=rows_b)
    def check(spec: Spec, a: list[tuple[Any, ...]], b: list[tuple[Any, ...]]) -> None:
        check_same_rows(conn, spec, a, b)

    check()


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(values=st.lists(st.text(max_size=12), min_size=1, max_size=6), probe=st.text(max_size=12))
def test_random_strings_as_values_never_change_the_statement(
    conn: apsw.Connection, values: list[str], probe: str
) -> None:
    with conn:
        conn.execute("DELETE FROM b")
        conn.executemany("INSERT INTO b(w) VALUES (?)", [(v,) for v in values])
    for op, expected in (
        ("eq", [v for v in values if v == probe]),
        ("neq", [v for v in values if v != probe]),
    ):
        sql, params = Query().select(["w"]).from_("b").where([("w", op, probe)]).build()
        template, _ = Query().select(["w"]).from_("b").where([("w", op, "x")]).build()
        assert sql == template and params == (probe,)
        assert sorted(r[0] for r in conn.execute(sql, params)) == sorted(expected)
    sql, params = Query().from_("b").where([("w", "in", values)]).build()
    assert sql.count("?") == len(values) and params == tuple(values)


identifiers = st.one_of(
    st.text(max_size=10),
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True),
    st.text(alphabet="ab\"`[];.- '\x00", max_size=6),
)


@settings(max_examples=300, deadline=None)
@given(name=identifiers)
def test_random_identifiers_are_either_rejected_or_quoted_as_one_token(name: str) -> None:
    grammatical = IDENTIFIER.fullmatch(name) is not None and len(name) <= 128
    try:
        sql, params = Query().select([name]).from_(name).where([(name, "eq", 1)]).build()
    except QueryValidationError:
        assert not grammatical
        return
    assert grammatical
    tokens = significant(tokenize(sql))
    assert [t.kind for t in tokens] == [
        "word",
        "quoted",
        "word",
        "quoted",
        "word",
        "quoted",
        "op",
        "param",
    ]
    assert [dequote(t) for t in tokens if t.kind == "quoted"] == [name, name, name]
    assert params == (1,)


def test_all_of_inside_any_of_matches_sqlalchemy(conn: apsw.Connection) -> None:
    load(conn, [(1, "a", 0.0), (2, "b", 2.5), (None, None, None)], [])
    ours = (
        Query()
        .select(["x"])
        .from_("a")
        .where([any_of(AllOf((("x", "gt", 1), ("y", "eq", "b"))), ("x", "is_null"))])
        .order_by(["x"])
    )
    a = SA_TABLES["a"]
    theirs = (
        sa.select(a.c.x)
        .where(sa.or_(sa.and_(a.c.x > 1, a.c.y == "b"), a.c.x.is_(None)))
        .order_by(a.c.x)
    )
    compiled = theirs.compile(dialect=sqlite_dialect.dialect())
    sql, params = ours.build()
    assert (
        conn.execute(sql, params).fetchall()
        == conn.execute(
            str(compiled), [compiled.params[k] for k in compiled.positiontup or []]
        ).fetchall()
        == [(None,), (2,)]
    )
